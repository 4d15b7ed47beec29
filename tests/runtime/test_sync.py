"""1 worker, 1 shard, synchronous limiter (no slack either side, no prefetch), after a real pretrain
stage on the learner: exact counters, causal weight versions, and local.py's step counting."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from tests.runtime.conftest import read_records, run_json, tiny_config
from wsrl_dist.runtime.datapath.learner import first_update_step
from wsrl_dist.runtime.orchestration import checkpoint

K, TOTAL, UTD = 150, 300, 4


def write_d4rl_file(path, n=400, seed=0):
    """A small D4RL-layout HDF5 with InvertedPendulum dims (obs 4, act 1)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 4)).astype(np.float32)
        f["next_observations"] = rng.normal(size=(n, 4)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=(n, 1)).astype(np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = (np.arange(n) % 100 == 99).astype(np.float32)
        f["timeouts"] = np.zeros(n, np.float32)


def sync_overrides(data):
    return [f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.method=wsrl",
            "pretrain.algo=cql", "pretrain.steps=30", "pretrain.batch_size=32", "dataset.source=d4rl",
            f"dataset.path={data}", "finetune.eval_every=100000", "run.checkpoint_every=100000",
            "runtime.num_workers=1", "runtime.num_shards=1", "runtime.chunk_size=1",
            "runtime.utd_slack=0", "runtime.rollout_slack=1", "runtime.prefetch=false"]


@pytest.fixture(scope="module")
def sync_run(ray_local, tmp_path_factory):
    from wsrl_dist.runtime.orchestration import driver

    tmp = tmp_path_factory.mktemp("sync")
    write_d4rl_file(tmp / "data.hdf5")
    cfg = tiny_config(tmp / "sync", *sync_overrides(tmp / "data.hdf5"))
    return cfg, driver.launch(cfg, "pytest sync")


def test_pretrain_stage_runs_on_the_learner_and_saves_the_pretrained_agent(sync_run):
    cfg, run_dir = sync_run
    info = run_json(run_dir)
    assert info["stages"]["pretrain"]["pretrain_steps"] == 30
    assert (run_dir / "checkpoints" / "pretrained.pt").is_file()
    assert [e["phase"] for e in read_records(run_dir, "eval")][0] == "pretrained"


def test_synchronous_run_makes_exactly_utd_updates_per_env_step_after_the_first_update_step(sync_run):
    cfg, run_dir = sync_run
    first = first_update_step(cfg)
    assert first == max(K, UTD * 32) + 1
    info = run_json(run_dir)
    assert info["stages"]["warmup"] == {**info["stages"]["warmup"], "env_steps": K, "critic_updates": 0}
    assert (info["env_steps"], info["critic_updates"]) == (TOTAL, UTD * (TOTAL - first))
    assert info["weights_version"] == TOTAL - first  # one publish per bundle
    for r in read_records(run_dir, "throughput"):
        if r["phase"] == "online":
            gap = r["critic_updates"] - UTD * max(0, r["learner_env_steps"] - first)
            assert -2 * UTD <= gap <= 0, r  # never ahead; behind by at most the step in flight


def test_rows_are_stamped_with_versions_that_existed_when_they_were_acted(sync_run):
    cfg, run_dir = sync_run
    first = first_update_step(cfg)
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    versions = shards[0]["ring"]["arrays"]["policy_versions"]  # one worker: row i is env step i + 1
    steps = np.arange(1, TOTAL + 1)
    bound = np.maximum(0, steps - 1 - first)  # bundles that can exist when step e is acted
    assert (versions <= bound).all()
    assert (np.diff(versions) >= 0).all()
    assert versions[-1] > 0 and (bound - versions)[first:].mean() < 8


def test_counters_match_the_single_process_reference(sync_run, tmp_path):
    from wsrl_dist import local

    cfg, run_dir = sync_run
    ref_cfg = tiny_config(tmp_path / "local", *sync_overrides(cfg.dataset.path))
    ref = run_json(local.run(ref_cfg, "pytest local"))
    info = run_json(run_dir)
    assert (info["env_steps"], info["critic_updates"]) == (ref["env_steps"], ref["critic_updates"])


def test_retention_baseline_samples_offline_rows_on_the_learner_never_in_the_shards(ray_local, tmp_path):
    from wsrl_dist.runtime.orchestration import driver

    write_d4rl_file(tmp_path / "data.hdf5")
    total, k = 200, 50
    cfg = tiny_config(tmp_path / "rlpd", "finetune.method=rlpd", f"finetune.warmup_steps={k}",
                      f"finetune.online_steps={total}", "finetune.eval_every=100000", "dataset.source=d4rl",
                      f"dataset.path={tmp_path / 'data.hdf5'}", "run.checkpoint_every=100000",
                      "runtime.num_workers=1")
    run_dir = driver.launch(cfg, "pytest rlpd")
    info = run_json(run_dir)
    assert info["stages"]["online"]["offline_rows_per_bundle"] == UTD * 32 // 2  # RLPD's 50/50
    assert first_update_step(cfg) == max(k, UTD * 32 // 2) + 1  # online rows alone gate the start
    assert info["critic_updates"] == UTD * (total - first_update_step(cfg))
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    assert shards[0]["ring"]["total_inserted"] == total  # the 400 offline rows never entered replay


def kept_loss_config(tmp_path, name, method, algo, total=200, k=50, extra=()):
    write_d4rl_file(tmp_path / "data.hdf5")
    return tiny_config(tmp_path / name, f"finetune.method={method}", f"pretrain.algo={algo}",
                       "pretrain.steps=30", "pretrain.batch_size=32", f"finetune.warmup_steps={k}",
                       f"finetune.online_steps={total}", "finetune.eval_every=100000", "dataset.source=d4rl",
                       f"dataset.path={tmp_path / 'data.hdf5'}", "run.checkpoint_every=100000",
                       "runtime.num_workers=1", *extra)


def test_offline_continued_keeps_the_cql_loss_online_one_step_per_env_step_as_local_does(ray_local, tmp_path):
    from wsrl_dist import local
    from wsrl_dist.runtime.orchestration import driver

    cfg = kept_loss_config(tmp_path, "ray", "offline_continued", "cql")
    run_dir = driver.launch(cfg, "pytest offline_continued")
    info = run_json(run_dir)
    first = first_update_step(cfg)
    assert first == max(50, 32) + 1  # one pre-training batch (32 rows) per env step, not a bundle
    assert info["utd_target"] == 1 and info["stages"]["pretrain"]["pretrain_steps"] == 30
    assert (info["env_steps"], info["critic_updates"]) == (200, 200 - first)
    assert info["stages"]["online"]["offline_rows_per_bundle"] == 0  # no retention
    ref = run_json(local.run(kept_loss_config(tmp_path, "local", "offline_continued", "cql"), "pytest local"))
    assert (ref["env_steps"], ref["critic_updates"]) == (info["env_steps"], info["critic_updates"])


def test_offline_retained_iql_samples_offline_rows_on_the_learner_never_in_the_shards(ray_local, tmp_path):
    from wsrl_dist.runtime.orchestration import driver

    cfg = kept_loss_config(tmp_path, "ray", "offline_retained", "iql")
    run_dir = driver.launch(cfg, "pytest offline_retained")
    info = run_json(run_dir)
    assert info["stages"]["online"]["offline_rows_per_bundle"] == 16  # 50/50 of a 32-row batch
    first = first_update_step(cfg)
    assert first == max(50, 16) + 1 and info["critic_updates"] == 200 - first
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    assert shards[0]["ring"]["total_inserted"] == 200  # the 400 offline rows never entered replay


def test_calql_kept_online_streams_whole_episodes_with_their_mc_returns(ray_local, tmp_path):
    from wsrl_dist import local
    from wsrl_dist.data.returns import mc_returns_to_go
    from wsrl_dist.runtime.orchestration import driver

    cfg = kept_loss_config(tmp_path, "ray", "offline_continued", "calql")
    run_dir = driver.launch(cfg, "pytest calql online")
    info = run_json(run_dir)
    first = first_update_step(cfg)
    assert (info["env_steps"], info["critic_updates"]) == (200, 200 - first)  # nothing lost or owed
    ref = run_json(local.run(kept_loss_config(tmp_path, "local", "offline_continued", "calql"), "pytest local"))
    assert ref["critic_updates"] == info["critic_updates"]
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    rows = shards[0]["ring"]["arrays"]
    assert shards[0]["ring"]["total_inserted"] == 200 and "mc_returns" in rows
    # one worker, one env: the shard holds its episodes in order; each row's MC return-to-go is the
    # one its episode's (scaled) rewards give, episodes ending at a terminal or a timeout. The
    # episode running at the end of warmup and at the end of the run went out cut: a timeout row.
    expect = mc_returns_to_go(rows["rewards"], rows["terminals"], rows["timeouts"], cfg.sac.discount)
    np.testing.assert_allclose(rows["mc_returns"], expect, rtol=1e-5)
    assert rows["terminals"].sum() >= 1 and rows["timeouts"][-1] + rows["terminals"][-1] == 1
    assert rows["terminals"][49] + rows["timeouts"][49] == 1  # row 50 = the last warmup step


def test_replay_groups_run_whole_sample_requests_in_one_call_with_exact_counters(ray_local, tmp_path):
    """runtime.replay_groups: a sample request's 4 bundles as one call whenever the limiter allows
    all 4 (here the CPU learner is the bottleneck, so most of the time); the counters, the UTD band
    and the weight versions come out as with one bundle per call."""
    from wsrl_dist.runtime.orchestration import driver

    total, k = 400, 50
    cfg = tiny_config(tmp_path / "groups", "runtime.replay_groups=true", "runtime.sample_bundles=4",
                      "run.fast_path=fused", f"finetune.warmup_steps={k}", f"finetune.online_steps={total}",
                      "finetune.eval_every=100000", "run.checkpoint_every=100000", "runtime.num_workers=2",
                      "runtime.publish_every=3")
    run_dir = driver.launch(cfg, "pytest replay groups")
    info = run_json(run_dir)
    first = first_update_step(cfg)
    bundles = total - first
    assert (info["env_steps"], info["critic_updates"]) == (total, UTD * bundles)
    online = info["stages"]["online"]
    assert online["bundles"] == bundles and online["bundle_groups"] >= 1
    assert online["bundle_groups"] * 4 <= bundles
    # a version for every multiple of publish_every crossed: at most one per call, so groups that
    # cross one publish once; versions never go past bundles // 3 (and the store got the last)
    assert 1 <= info["weights_version"] <= bundles // 3 + 1
    for r in read_records(run_dir, "throughput"):
        if r["phase"] == "online":
            assert r["critic_updates"] - UTD * max(0, r["learner_env_steps"] - first) <= cfg.runtime.utd_slack


def test_replay_groups_are_refused_where_a_bundle_is_not_one_requests_rows():
    from wsrl_dist.config import ConfigError, load

    for extra, why in ((["finetune.method=rlpd"], "finetune.method=rlpd"), (["run.seeds=[0,1]"], "run.seeds")):
        with pytest.raises(ConfigError, match=f"runtime.replay_groups=true does not work with {why}"):
            load(overrides=["runtime.replay_groups=true", *extra])


def test_kept_losses_run_in_the_multi_seed_learner_one_step_per_seed_per_env_step(ray_local, tmp_path):
    """offline_continued with Cal-QL kept online, 2 seeds in one learner on the fused path (as on a
    GPU): both seeds pre-train together, then each takes exactly one Cal-QL step per env step after
    its first update step (whole episodes with MC returns in each seed's shards), as the single-seed
    job counts them; the seeds end with different critics."""
    from wsrl_dist.runtime.orchestration import driver

    cfg = kept_loss_config(tmp_path, "seeds", "offline_continued", "calql", extra=("run.seeds=[0,1]", "run.fast_path=fused"))
    run_dir = driver.launch(cfg, "pytest kept loss seeds")
    first = first_update_step(cfg)
    critics = []
    for seed in (0, 1):
        info = run_json(run_dir / f"seed-{seed}")
        assert info["utd_target"] == 1 and info["stages"]["pretrain"]["pretrain_step"].endswith("2 seeds together")
        assert (info["env_steps"], info["critic_updates"]) == (200, 200 - first)
        learner, shards, _ = checkpoint.load(checkpoint.latest(run_dir / f"seed-{seed}"))
        assert shards[0]["ring"]["total_inserted"] == 200 and "mc_returns" in shards[0]["ring"]["arrays"]
        critics.append(learner["agent"]["critic"])
    assert any(not torch.equal(v, critics[1][k]) for k, v in critics[0].items())


def test_learner_time_split_accounts_for_its_online_wall_time(sync_run):
    """The split of the learner's loop (limiter wait, sampling, host-to-device, update, publish) is
    recorded; in a synchronous run the learner mostly waits on the limiter for the next env step."""
    _, run_dir = sync_run
    info = run_json(run_dir)
    split = info["learner_time_split_s"]
    assert set(split) == {"limiter_wait", "sample_wait", "assemble_to_device", "update_launch", "publish"}
    assert all(v >= 0 for v in split.values())
    assert split["update_launch"] > 0 and split["sample_wait"] > 0
    assert sum(split.values()) <= info["stages"]["online"]["wall_s"] + 1.0


def test_run_json_says_how_busy_the_learner_device_was(sync_run):
    """Sampled bundle device time (on CPU the bundle's own wall time) and the busy share it implies;
    a lock-step run waits on every env step, so its device is far from saturated."""
    _, run_dir = sync_run
    info = run_json(run_dir)
    assert info["bundle_device_ms"] > 0
    assert 0 < info["learner_device_busy"] < 0.9
    assert info["weight_put_seconds"] > 0


def test_run_json_says_what_the_learner_process_spent(sync_run):
    """The learner process's own load: CPU seconds of all its threads, GC pauses, and the grant calls
    it answered (a lock-step run refuses most of them: one env step at a time)."""
    _, run_dir = sync_run
    info = run_json(run_dir)
    proc = info["learner_process"]
    assert 0 < proc["cpu_seconds"] <= proc["threads"] * info["wall_time_s"] + 1.0
    assert proc["grant_calls"] > 0 and 0 <= proc["grant_refusals"] <= proc["grant_calls"]
    assert proc["gc_seconds"] >= 0 and len(proc["gc_collections"]) == 3
    assert sum(proc["gc_collections"]) > 0  # a Ray actor building an agent allocates enough to collect
