"""A 2-seed job on a local Ray: one learner, one worker group per seed. Each group warms up alone,
both seeds train inside the UTD band, each has its own weight versions and run sub-directory, the
seeds end with different actors, scaling applies per group. (Resume: tests/runtime/test_resume.py.)"""

from __future__ import annotations

import contextlib
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.conftest import BackgroundJob, read_records, run_json, tiny_config
from wsrl_dist.runtime.datapath.learner import first_update_step
from wsrl_dist.runtime.orchestration import checkpoint

SEEDS, K, TOTAL, UTD, UTD_SLACK, ROLLOUT_SLACK = (0, 1), 150, 1000, 4, 16, 32


@pytest.fixture(scope="module")
def multi(ray_local, tmp_path_factory):
    cfg = tiny_config(
        tmp_path_factory.mktemp("multi") / "two-seeds", f"run.seeds={list(SEEDS)}",
        f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=100000",
        "runtime.num_workers=1", f"runtime.utd_slack={UTD_SLACK}", f"runtime.rollout_slack={ROLLOUT_SLACK}",
        "run.checkpoint_every=100000", "run.progress=true",
    )
    out = io.StringIO()  # the driver's stdout: the progress lines (runtime/instrumentation/progress.py), not a terminal
    stdout = contextlib.redirect_stdout(out)
    stdout.__enter__()
    try:
        return _run_multi(cfg, out)
    finally:
        stdout.__exit__(None, None, None)


def _run_multi(cfg, out):
    bg = BackgroundJob(cfg)
    events: dict = {}
    bg.wait_for(lambda s: s["phase"] == "online" and all(
        st.get("env_steps", 0) > K + 50 for st in s["seeds"].values()))
    url = run_json(cfg.run.run_dir)["metrics_url"]
    events["metrics"] = urllib.request.urlopen(url, timeout=10).read().decode()
    from wsrl_dist.runtime.orchestration import driver

    events["ack"] = driver.scale(None, 2, job=cfg.run.run_dir.rsplit("/", 1)[-1])
    events["scaled"] = bg.wait_for(lambda s: all(st["workers_alive"] == 2 for st in s["seeds"].values()))
    run_dir = bg.join()
    events["stdout"] = out.getvalue().splitlines()
    return cfg, run_dir, bg, events


def test_the_driver_prints_the_run_dir_once_and_each_seeds_stage_lines(multi):
    _, run_dir, _, events = multi
    lines = events["stdout"]
    assert lines[:2] == [f"run dir: {run_dir}", f"metrics: {run_json(run_dir)['metrics_url']}"]
    for seed in SEEDS:  # pretrain.algo=none: no build or pretrain line
        for stage, total in (("warmup", K), ("online", TOTAL)):
            assert f"seed {seed} {stage}: {total}/{total} (100%)" in [x.split("  ")[0] for x in lines], lines
    assert not any(" build" in x or " pretrain" in x for x in lines), lines
    per = events["scaled"]["seeds"]  # a status while online: each seed's own stage and progress
    assert all(st["stage"] == "online" and st["stage_total"] == TOTAL and 0 < st["stage_progress"] <= 1
               for st in per.values()), per
    for seed in SEEDS:
        assert f'wsrl_stage{{seed="{seed}",stage="online"}} 1.0' in events["metrics"]


def _seed_dir(run_dir, seed):
    return run_dir / f"seed-{seed}"


def test_each_group_warms_up_with_exactly_k_env_steps_and_zero_updates(multi):
    _, run_dir, _, _ = multi
    for seed in SEEDS:
        d = _seed_dir(run_dir, seed)
        warm = run_json(d)["stages"]["warmup"]
        assert (warm["env_steps"], warm["critic_updates"]) == (K, 0), seed
        tps = read_records(d, "throughput")
        assert all(r["critic_updates"] == 0 for r in tps if r["phase"] in ("pretrain", "warmup"))
        _, shards, _ = checkpoint.load(checkpoint.latest(d))
        assert (shards[0]["ring"]["arrays"]["policy_versions"][:K] == 0).all()
    # each group acted in its own envs (env seeds derived from the run's seed)
    first_obs = [checkpoint.load(checkpoint.latest(_seed_dir(run_dir, s)))[1][0]["ring"]["arrays"]
                 ["observations"][:K] for s in SEEDS]
    assert not np.allclose(first_obs[0], first_obs[1])


def test_both_seeds_train_inside_the_utd_band(multi):
    cfg, run_dir, _, _ = multi
    first = first_update_step(cfg)
    for seed in SEEDS:
        d = _seed_dir(run_dir, seed)
        online = [r for r in read_records(d, "throughput") if r["phase"] == "online"]
        assert len(online) >= 5
        assert max(r["critic_updates"] for r in online) > 0
        for r in online:
            gap = r["critic_updates"] - UTD * max(0, r["learner_env_steps"] - first)
            assert -UTD * (ROLLOUT_SLACK + 1) <= gap <= UTD_SLACK, (seed, r)
        info = run_json(d)
        assert info["env_steps"] == TOTAL
        assert info["critic_updates"] == UTD * (TOTAL - first)  # a finished run owes nothing
        late = [r["utd_cumulative"] for r in online if r["env_steps"] > TOTAL // 2]
        assert late and all(abs(u - UTD) < 0.5 for u in late)
        assert read_records(d, "train")


def test_each_seeds_weight_versions_advance_and_its_workers_act_with_them(multi):
    _, run_dir, bg, _ = multi
    for seed in SEEDS:
        d = _seed_dir(run_dir, seed)
        info = run_json(d)
        assert info["weights_version"] == info["critic_updates"] // UTD  # publish_every = 1
        versions = checkpoint.load(checkpoint.latest(d))[1][0]["ring"]["arrays"]["policy_versions"]
        quarters = [q.mean() for q in np.array_split(versions[K:], 4)]
        assert quarters == sorted(quarters) and quarters[-1] > 0.5 * info["weights_version"]
        seen = [st["seeds"][str(seed)]["weights_version"] for st in bg.statuses
                if st.get("phase") == "online" and st["seeds"].get(str(seed))]
        assert seen[-1] > seen[0] >= 0


def test_the_two_seeds_end_with_different_actor_weights(multi):
    _, run_dir, _, _ = multi
    actors = []
    for seed in SEEDS:
        state = torch.load(checkpoint.latest(_seed_dir(run_dir, seed)) / "learner.pt", weights_only=True)
        actors.append({k: v for k, v in state["agent"]["actor"].items()})
    assert actors[0].keys() == actors[1].keys()
    assert any(not torch.allclose(actors[0][k], actors[1][k]) for k in actors[0])


def test_run_dir_has_a_sub_directory_per_seed_with_the_single_seed_layout(multi):
    _, run_dir, _, _ = multi
    top = run_json(run_dir)
    assert top["seeds"] == list(SEEDS) and top["seed_dirs"] == [f"seed-{s}" for s in SEEDS]
    assert set(top["per_seed"]) == {str(s) for s in SEEDS}
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    for seed in SEEDS:
        d = _seed_dir(run_dir, seed)
        for name in ("config.yaml", "run.json", "metrics.jsonl", "results.md", "learning_curve.png",
                     "throughput.png"):
            assert (d / name).exists(), (seed, name)
        assert checkpoint.latest(d) is not None
        info = run_json(d)
        assert info["seed"] == seed and info["multiseed_run"] == str(run_dir)
        assert {r["phase"] for r in read_records(d, "eval")} >= {"initial", "after_warmup", "online"}


def test_scaling_applies_to_every_group_and_metrics_carry_a_seed_label(multi):
    _, run_dir, bg, events = multi
    assert events["ack"]["requested"] == 2
    online = [s for s in bg.statuses if s.get("phase") == "online" and s.get("seeds")]
    assert all(st["workers_alive"] == 1 for st in online[0]["seeds"].values())
    assert all(st["workers_alive"] == 2 for st in events["scaled"]["seeds"].values())
    for seed in SEEDS:
        workers = run_json(_seed_dir(run_dir, seed))["workers"]
        assert {w["id"] for w in workers} == {0, 1} and all(w["env_steps"] > 0 for w in workers)
    fams = {f.name: f for f in text_string_to_metric_families(events["metrics"])}
    phase = {(s.labels["seed"], s.labels["phase"]): s.value for s in fams["wsrl_phase"].samples}
    steps = {s.labels["seed"]: s.value for s in fams["wsrl_env_steps"].samples}
    for seed in map(str, SEEDS):
        assert phase[(seed, "online")] == 1.0 and steps[seed] > K


def test_resume_picks_the_newest_checkpoint_step_every_seed_has(tmp_path):
    from wsrl_dist.runtime.orchestration.seedgroup import common_checkpoints

    def save(seed: int, env_steps: int, bundles: int) -> Path:
        path = tmp_path / f"seed-{seed}" / "checkpoints" / f"step_{env_steps:010d}"
        path.mkdir(parents=True)
        (path / "meta.json").write_text(json.dumps({"counters": {"bundles": bundles}}))
        return path

    dirs = [tmp_path / "seed-0", tmp_path / "seed-1"]
    assert common_checkpoints(dirs) == [None, None]  # nothing saved: a fresh launch
    a0 = save(0, 300, 40)
    assert common_checkpoints(dirs) == [None, None]  # killed inside the first save: a fresh launch too
    a1 = save(1, 310, 40)
    save(0, 450, 77)  # killed after seed 0's save of the next step, before seed 1's
    assert common_checkpoints(dirs) == [a0, a1]
    save(1, 470, 90)
    (tmp_path / "seed-0" / "checkpoints" / "step_0000000300" / "meta.json").unlink()
    with pytest.raises(RuntimeError, match="no checkpoint of the same step"):
        common_checkpoints(dirs)


def test_a_multi_seed_resume_checks_each_seeds_config_hash_like_a_single_seed_resume(tmp_path):
    """resume_points: the common step's checkpoints are refused by name when a seed's was written
    by a config hashing differently (what checkpoint.load_newest does for one seed), and
    --force-config takes them anyway."""
    from wsrl_dist.errors import CheckpointError
    from wsrl_dist.runtime.orchestration.seedgroup import resume_points, seed_configs

    cfg = tiny_config(tmp_path / "run", "run.seeds=[0,1]")
    hashes = [c.hash() for c in seed_configs(cfg)]
    assert hashes[0] != hashes[1]  # run.seed is part of each seed's config
    for seed, h in zip((0, 1), (hashes[0], "0123abcd")):
        _save(tmp_path / "run" / f"seed-{seed}", 300, 40, h)
    with pytest.raises(CheckpointError, match="seed-1/checkpoints/step_0000000300: written by config 0123abcd"):
        resume_points(cfg, [0, 1], force_config=False)
    assert [p.parent.parent.name for p in resume_points(cfg, [0, 1], force_config=True)] == ["seed-0", "seed-1"]


def _save(seed_dir: Path, env_steps: int, bundles: int, config_hash: str) -> Path:
    """A real checkpoint (checkpoint.save: DONE marker, learner.pt) with no replay shards."""
    counters = {"env_steps": env_steps, "bundles": bundles, "config_hash": config_hash}
    return checkpoint.save(seed_dir, {"w": torch.full((2,), float(bundles))}, [], counters, keep=5)


def test_a_multi_seed_resume_skips_a_step_where_one_seeds_checkpoint_does_not_load(tmp_path, caplog):
    """Same size, garbage inside (only loading tells): the step is skipped with one warning naming
    the file, the step before that both seeds have is taken; none left is an error naming both
    broken files, and nothing stored is removed."""
    import logging

    from wsrl_dist.errors import CheckpointError
    from wsrl_dist.runtime.orchestration.seedgroup import resume_points, seed_configs

    cfg = tiny_config(tmp_path / "run", "run.seeds=[0,1]")
    dirs = [Path(c.run.run_dir) for c in seed_configs(cfg)]
    older = [_save(d, 300 + s, 40, c.hash()) for s, (d, c) in enumerate(zip(dirs, seed_configs(cfg)))]
    newer = [_save(d, 450 + s, 77, c.hash()) for s, (d, c) in enumerate(zip(dirs, seed_configs(cfg)))]
    learner = newer[1] / "learner.pt"
    learner.write_bytes(bytes(learner.stat().st_size))
    with caplog.at_level(logging.WARNING, logger="wsrl_dist.runtime.orchestration.seedgroup"):
        assert resume_points(cfg, [0, 1], force_config=False) == older
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"{learner}: does not load" in warnings[0], warnings
    learner = older[0] / "learner.pt"
    learner.write_bytes(bytes(learner.stat().st_size))
    with pytest.raises(CheckpointError, match="no checkpoint step that every seed has loads") as err:
        resume_points(cfg, [0, 1], force_config=False)
    assert str(newer[1] / "learner.pt") in str(err.value) and str(learner) in str(err.value)
    assert all(p.is_dir() for p in older + newer)


def test_each_seed_starts_from_the_agent_a_single_seed_learner_of_that_seed_builds(tmp_path):
    from wsrl_dist.runtime.datapath.learner import Learner
    from wsrl_dist.runtime.datapath.learneractor import LearnerActor

    cfgs = [tiny_config(tmp_path / f"s{s}", f"run.seed={s}").to_dict() for s in (3, 8)]
    multi = LearnerActor(cfgs, [None, None])  # no Ray needed until the shards are used
    for cfg, agent in zip(cfgs, (lrn.agent for lrn in multi.learners)):
        alone = Learner(cfg, None).agent.state_dict()["actor"]
        assert all(torch.equal(v, agent.state_dict()["actor"][k]) for k, v in alone.items())
    a, b = (lrn.agent.state_dict()["actor"] for lrn in multi.learners)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_each_seed_is_pre_trained_exactly_as_a_single_seed_learner_of_that_seed(tmp_path):
    from tests.runtime.test_sync import write_d4rl_file
    from wsrl_dist.runtime.datapath.learner import Learner
    from wsrl_dist.runtime.datapath.learneractor import LearnerActor

    write_d4rl_file(tmp_path / "data.hdf5")
    pre = ["finetune.method=wsrl", "pretrain.algo=cql", "pretrain.steps=20", "pretrain.batch_size=32",
           "dataset.source=d4rl", f"dataset.path={tmp_path / 'data.hdf5'}"]
    cfgs = [tiny_config(tmp_path / f"s{s}", f"run.seed={s}", *pre).to_dict() for s in (0, 5)]
    multi = LearnerActor(cfgs, [None, None])
    assert multi.prepare(1)["pretrain_steps"] == 20  # seed 5 first: each seed draws from its own stream
    alone = Learner(cfgs[0], None)  # re-seeds the process-wide torch RNG in between
    alone.prepare()
    multi.prepare(0)
    for i, ref in ((0, alone), (1, None)):
        if ref is None:
            ref = Learner(cfgs[1], None)
            ref.prepare()
        want, got = ref.agent.state_dict(), multi.learners[i].agent.state_dict()
        for part in ("actor", "critic"):
            assert all(torch.equal(v, got[part][k]) for k, v in want[part].items()), (i, part)
    a, b = (lrn.agent.state_dict()["critic"] for lrn in multi.learners)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_fused_pretraining_steps_every_seed_together_each_on_its_own_sampler(tmp_path):
    """run.fast_path=fused (the GPU default's step without compile or graph): the first prepare
    pre-trains both seeds in one S = 2 fused step per batch; each seed samples its own dataset copy
    with its own sampler seed, and the policy noise comes from seed group 0's stream. The result is
    what pretrain.pretrain_agents gives on freshly built learners with those samplers."""
    from tests.runtime.test_sync import write_d4rl_file
    from wsrl_dist import job
    from wsrl_dist.pretrain import DeviceSampler, pretrain_agents, training_arrays
    from wsrl_dist.runtime.datapath.learner import Learner
    from wsrl_dist.runtime.datapath.learneractor import LearnerActor

    write_d4rl_file(tmp_path / "data.hdf5")
    pre = ["finetune.method=wsrl", "pretrain.algo=calql", "pretrain.steps=6", "pretrain.batch_size=32",
           "dataset.source=d4rl", f"dataset.path={tmp_path / 'data.hdf5'}", "run.fast_path=fused"]
    cfgs = [tiny_config(tmp_path / f"s{s}", f"run.seed={s}", *pre).to_dict() for s in (0, 5)]
    multi = LearnerActor(cfgs, [None, None])
    out = multi.prepare(1)
    assert out["pretrain_steps"] == 6 and out["pretrain_step"].endswith("2 seeds together")
    assert multi.prepare(0)["pretrain_steps"] == 6
    refs = [Learner(cfgs[0], None)]
    stream = torch.get_rng_state()  # seed group 0's stream, as LearnerActor keeps it
    refs.append(Learner(cfgs[1], None))
    samplers = []
    for lrn in refs:
        data = job.load_offline_dataset(lrn.cfg, lrn.task, progress=False)
        samplers.append(DeviceSampler(training_arrays(data, lrn.task, lrn.cfg.sac.discount), lrn.device,
                                      lrn.cfg.run.seed))
    torch.set_rng_state(stream)
    pretrain_agents([r.agent for r in refs], samplers, refs[0].cfg, "fused")
    for ref, got in zip(refs, multi.learners):
        want, have = ref.agent.state_dict(), got.agent.state_dict()
        for part in ("actor", "critic", "target_critic", "temperature"):
            assert all(torch.equal(v, have[part][k]) for k, v in want[part].items()), part
        assert {float(st["step"]) for st in have["critic_opt"]["state"].values()} == {6.0}
    a, b = (lrn.agent.state_dict()["critic"] for lrn in multi.learners)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_learner_state_is_a_snapshot_not_views_of_the_live_agent(tmp_path):
    """state_dict() copies every tensor under the learner's locks, also on CPU: Ray serializes it
    after they are released, and views of the live agent came out torn by the steps in between (a
    2-seed CPU checkpoint whose actor Adam steps read 243 and 244 was refused at resume)."""
    from wsrl_dist.runtime.datapath.learner import Learner

    lrn = Learner(tiny_config(tmp_path / "s", "run.fast_path=fused").to_dict(), None)
    state = lrn.state_dict()
    before = {k: v.clone() for k, v in state["agent"]["actor"].items()}
    with torch.no_grad():
        for p in lrn.agent.actor.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, state["agent"]["actor"][k]) for k, v in before.items())
