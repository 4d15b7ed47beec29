"""Pre-training checkpoints (pretrain.checkpoint_every): a run killed during pre-training resumes
from its last checkpoint and ends with the agent an uninterrupted run ends with."""

from __future__ import annotations

import json

import pytest
import torch

from tests.runtime.conftest import tiny_config
from tests.runtime.test_sync import write_d4rl_file
from wsrl_dist import pretrain as pretrain_lib
from wsrl_dist.pretrain import PARTIAL

STEPS, EVERY = 20, 5


class _Killed(Exception):
    pass


def _die_at(monkeypatch, n: int) -> None:
    """The n-th pre-training step raises, as if the process were killed there."""
    real = pretrain_lib.make_offline_step_fn

    def dying(*args, **kwargs):
        fn, calls = real(*args, **kwargs), [0]

        def step(batch):
            calls[0] += 1
            if calls[0] == n:
                raise _Killed(f"step {n}")
            return fn(batch)

        return step

    monkeypatch.setattr(pretrain_lib, "make_offline_step_fn", dying)


def random_arrays(obs: int, act: int, n: int = 200, seed: int = 0) -> dict:
    """An offline dataset's training columns (pretrain.training_arrays' keys), random."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(n, obs)).astype(np.float32),
            "actions": rng.uniform(-0.9, 0.9, (n, act)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "next_observations": rng.normal(size=(n, obs)).astype(np.float32),
            "masks": np.ones(n, np.float32), "mc_returns": rng.normal(size=n).astype(np.float32)}


def _pre(tmp_path, algo="calql"):
    write_d4rl_file(tmp_path / "data.hdf5")
    return ["finetune.method=wsrl", f"pretrain.algo={algo}", f"pretrain.steps={STEPS}",
            f"pretrain.checkpoint_every={EVERY}", "pretrain.batch_size=32", "dataset.source=d4rl",
            f"dataset.path={tmp_path / 'data.hdf5'}"]


def _assert_same_agent(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for part in ("actor", "critic", "target_critic", "temperature"):
        for k, v in sa[part].items():
            assert torch.equal(v, sb[part][k]), (part, k)
    for part in ("critic_opt", "actor_opt"):
        assert sa[part]["state"].keys() == sb[part]["state"].keys()
        for i, st in sa[part]["state"].items():
            assert all(torch.equal(t, sb[part]["state"][i][k]) for k, t in st.items()), (part, i)


@pytest.mark.parametrize("fast_path", ["auto", "fused"])
def test_learner_killed_mid_pretraining_resumes_to_the_same_agent(tmp_path, monkeypatch, fast_path):
    """auto (CPU: the eager step) and fused (algo/fused_offline.py, whose flat buffers the agent's
    state_dict must see for the partial checkpoints)."""
    from wsrl_dist.runtime.datapath.learner import Learner

    pre = [*_pre(tmp_path), f"run.fast_path={fast_path}"]
    ref = Learner(tiny_config(tmp_path / "ref", *pre).to_dict(), None)
    out = ref.prepare()
    assert out["pretrain_steps"] == STEPS and out["pretrain_steps_per_s"] > 0
    # the first step (compilation / capture happen there) and the steady rate after it, apart
    # (test_pretrain_batches pins that the first step stays out of the steady rate)
    assert out["pretrain_first_step_s"] > 0 and out["pretrain_steady_steps_per_s"] > 0
    assert out["pretrain_step"] == ("fused (algo/fused_offline.py)" if fast_path == "fused" else "eager step")
    assert not (tmp_path / "ref" / "checkpoints" / PARTIAL).exists()  # removed once done

    cfg = tiny_config(tmp_path / "run", *pre).to_dict()
    _die_at(monkeypatch, 13)
    with pytest.raises(_Killed):
        Learner(cfg, None).prepare()
    partial = tmp_path / "run" / "checkpoints" / PARTIAL
    assert torch.load(partial, weights_only=True)["step"] == 10
    monkeypatch.undo()

    fresh = Learner(cfg, None)  # a new process would start from a freshly initialised agent
    out = fresh.prepare(resume=True)
    assert out["resumed_at_step"] == 11 and out["pretrain_steps"] == STEPS
    _assert_same_agent(ref.agent, fresh.agent)
    assert not partial.exists()

    again = Learner(cfg, None)  # without resume an old checkpoint is not picked up (here: none left)
    assert "resumed_at_step" not in again.prepare()


def test_local_run_killed_mid_pretraining_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from wsrl_dist import local

    cfg = tiny_config(tmp_path / "run", *_pre(tmp_path, "cql"), "finetune.warmup_steps=20",
                      "finetune.online_steps=40", "finetune.eval_every=100000",
                      "run.checkpoint_every=100000")
    _die_at(monkeypatch, 8)
    with pytest.raises(_Killed):
        local.run(cfg, "pytest killed")
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / PARTIAL).is_file() and not (ckpt / "pretrained.pt").exists()
    monkeypatch.undo()
    local.run(cfg, "pytest resume", resume=True)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["pretrain_resumed_at_step"] == EVERY + 1
    assert info["pretrain_step"] == "eager step" and info["pretrain_steps_per_s"] > 0
    assert info["pretrain_first_step_s"] > 0 and info["pretrain_steady_steps_per_s"] > 0
    assert (ckpt / "pretrained.pt").is_file() and not (ckpt / PARTIAL).exists()
    assert torch.load(ckpt / "pretrained.pt", weights_only=True)["counters"]["pretrain_steps"] == STEPS


def test_a_checkpoint_of_another_dataset_is_refused_by_name(tmp_path, monkeypatch):
    from wsrl_dist.runtime.datapath.learner import Learner

    pre = _pre(tmp_path)
    cfg = tiny_config(tmp_path / "run", *pre).to_dict()
    _die_at(monkeypatch, 7)
    with pytest.raises(_Killed):
        Learner(cfg, None).prepare()
    monkeypatch.undo()
    write_d4rl_file(tmp_path / "data.hdf5", n=300)  # the dataset changed under the run
    with pytest.raises(ValueError, match=f"{PARTIAL}.*400 transitions.*300"):
        Learner(cfg, None).prepare(resume=True)


def test_a_checkpoint_of_another_pretraining_algorithm_is_refused_by_name(tmp_path, monkeypatch):
    from wsrl_dist.runtime.datapath.learner import Learner

    _die_at(monkeypatch, 7)
    with pytest.raises(_Killed):
        Learner(tiny_config(tmp_path / "run", *_pre(tmp_path, "calql")).to_dict(), None).prepare()
    monkeypatch.undo()
    other = tiny_config(tmp_path / "run", *_pre(tmp_path, "cql")).to_dict()
    with pytest.raises(ValueError, match=f"{PARTIAL}: written by calql pre-training.*with cql"):
        Learner(other, None).prepare(resume=True)


def test_seeds_pretrained_together_resume_from_their_checkpoints_to_the_same_agents(tmp_path, monkeypatch):
    """pretrain.pretrain_agents (several seeds in one fused step): killed mid-way, every seed's
    partial checkpoint is at the same step, and resuming from them ends with the agents of an
    uninterrupted run; checkpoints at different steps are refused by name."""

    from wsrl_dist import job
    from wsrl_dist.envs.make import obs_act_dims

    cfg = tiny_config(tmp_path / "run", "finetune.method=wsrl", "pretrain.algo=cql", f"pretrain.steps={STEPS}",
                      f"pretrain.checkpoint_every={EVERY}", "pretrain.batch_size=32", "run.fast_path=fused")
    obs, act = obs_act_dims(cfg.task.spec())
    arrays = random_arrays(obs, act)

    def fresh():
        torch.manual_seed(0)
        agents = [job.build_agent(cfg, obs, act, torch.device("cpu")) for _ in range(2)]
        return agents, [pretrain_lib.DeviceSampler(arrays, torch.device("cpu"), s) for s in (0, 1)]

    ref, samplers = fresh()
    torch.manual_seed(1)
    pretrain_lib.pretrain_agents(ref, samplers, cfg, "fused")

    partials = [tmp_path / f"s{i}" / PARTIAL for i in range(2)]
    real, calls = pretrain_lib.make_offline_multiseed_fn, [0]

    def dying(*args, **kwargs):
        fn = real(*args, **kwargs)

        def step(batches):
            calls[0] += 1
            if calls[0] == 13:
                raise _Killed("step 13")
            return fn(batches)

        return step

    monkeypatch.setattr(pretrain_lib, "make_offline_multiseed_fn", dying)
    agents, samplers = fresh()
    torch.manual_seed(1)
    with pytest.raises(_Killed):
        pretrain_lib.pretrain_agents(agents, samplers, cfg, "fused", partials=partials)
    assert [torch.load(p, weights_only=True)["step"] for p in partials] == [10, 10]
    monkeypatch.undo()
    agents, samplers = fresh()  # a new process: fresh agents and samplers, the RNG from the checkpoint
    assert pretrain_lib.pretrain_agents(agents, samplers, cfg, "fused", partials=partials, resume=True) == 11
    for a, b in zip(ref, agents):
        _assert_same_agent(a, b)
    assert not any(p.exists() for p in partials)

    agents, samplers = fresh()  # checkpoints of two different steps
    for i, p in enumerate(partials):
        pretrain_lib._save_partial(p, agents[i], samplers[i], 5 + 5 * i, "cql")
    with pytest.raises(ValueError, match="different steps"):
        pretrain_lib.pretrain_agents(*fresh(), cfg, "fused", partials=partials, resume=True)
