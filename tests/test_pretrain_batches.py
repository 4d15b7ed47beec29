"""Pre-training batches drawn a chunk of steps at a time (pretrain.ChunkedBatches) and the GEMM
autotune switch of the compiled pre-training step (pretrain.max_autotune_gemm)."""

from __future__ import annotations

import numpy as np
import torch

from wsrl_dist.pretrain import ChunkedBatches, DeviceSampler


def _sampler(n: int = 500, seed: int = 0) -> DeviceSampler:
    ids = np.arange(n, dtype=np.float32)
    cols = {"observations": np.stack([ids, -ids], 1), "actions": ids[:, None] / n, "rewards": ids,
            "next_observations": np.stack([ids + 0.5, -ids], 1), "masks": np.ones(n, np.float32),
            "mc_returns": 2 * ids}
    return DeviceSampler(cols, torch.device("cpu"), seed)


def test_chunks_are_one_draw_sliced_into_whole_batches():
    sampler = _sampler()
    draws = ChunkedBatches(sampler, batch_size=8, steps=10, chunk_rows=32)  # 4 steps a chunk
    ref = _sampler()  # the same stream: one draw per chunk of 4, 4, 2 steps
    expect = [ref.sample(32), ref.sample(32), ref.sample(16)]
    for step in range(1, 11):
        b = draws.at(step)
        chunk, i = expect[(step - 1) // 4], ((step - 1) % 4) * 8
        assert b.observations.shape == (8, 2) and b.rewards.shape == (8,) and b.mc_returns.shape == (8,)
        for got, want in zip(b, chunk):
            torch.testing.assert_close(got, want[i: i + 8], rtol=0, atol=0)
        ids = b.rewards  # every field of a row is the same row
        torch.testing.assert_close(b.observations[:, 0], ids)
        torch.testing.assert_close(b.next_observations[:, 0], ids + 0.5)
        torch.testing.assert_close(b.mc_returns, 2 * ids)
    assert draws.draws == 3


def test_chunks_end_at_every_checkpoint_step_so_a_resume_draws_what_the_run_drew():
    draws = ChunkedBatches(_sampler(seed=4), batch_size=8, steps=20, checkpoint_every=6, chunk_rows=80)
    assert [draws.chunk_end(s) for s in (1, 7, 13, 19)] == [6, 12, 18, 20]  # 10-step chunks cut at 6, 12, 18
    uninterrupted = [draws.at(s).rewards.clone() for s in range(1, 21)]

    # a run killed after its step-12 checkpoint: the sampler's state saved there, then a new process
    killed_sampler = _sampler(seed=4)
    first = ChunkedBatches(killed_sampler, batch_size=8, steps=20, checkpoint_every=6, chunk_rows=80)
    for s in range(1, 13):
        first.at(s)
    saved = killed_sampler.gen.get_state()
    resumed_sampler = _sampler(seed=99)
    resumed_sampler.gen.set_state(saved)
    resumed = ChunkedBatches(resumed_sampler, batch_size=8, steps=20, checkpoint_every=6, chunk_rows=80)
    for s in range(13, 21):
        torch.testing.assert_close(resumed.at(s).rewards, uninterrupted[s - 1], rtol=0, atol=0)


def test_step_clock_keeps_the_first_step_out_of_the_steady_rate():
    import time

    from wsrl_dist.pretrain import StepClock

    clock, timing = StepClock(torch.device("cpu"), start=5), {}
    time.sleep(0.5)  # the first step: compilation and capture
    clock.stepped(5)
    for step in range(6, 26):
        time.sleep(0.001)
        clock.stepped(step)
    clock.report(25, timing)
    assert timing["first_step_s"] >= 0.5 and timing["loop_s"] >= 0.52
    assert timing["steps_per_s"] < 42  # 21 steps over > 0.5 s: the whole loop's rate
    # 20 steps of >= 1 ms: at most 1,000/s, and far above the diluted rate (< 40/s) even on a busy box
    assert 100 < timing["steady_steps_per_s"] < 1_000


def test_max_autotune_gemm_reaches_the_compiled_step_and_leaves_the_config_hash(tmp_path, monkeypatch):
    from tests.runtime.conftest import tiny_config
    from tests.runtime.test_sync import write_d4rl_file
    from wsrl_dist import pretrain as pretrain_lib
    from wsrl_dist.config import load
    from wsrl_dist.runtime.datapath.learner import Learner

    assert load(overrides=["pretrain.max_autotune_gemm=true"]).hash() == load().hash()
    seen = []
    real = pretrain_lib.make_offline_step_fn

    def spy(*args, **kwargs):
        seen.append(args[7] if len(args) > 7 else kwargs.get("inductor"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_lib, "make_offline_step_fn", spy)
    write_d4rl_file(tmp_path / "data.hdf5")
    for on in (False, True):
        cfg = tiny_config(tmp_path / f"run{on}", "finetune.method=wsrl", "pretrain.algo=cql", "pretrain.steps=3",
                          "pretrain.batch_size=32", "dataset.source=d4rl", f"dataset.path={tmp_path / 'data.hdf5'}",
                          f"pretrain.max_autotune_gemm={str(on).lower()}")
        Learner(cfg.to_dict(), None).prepare()
    assert seen[0] is None and seen[1]["max_autotune_gemm"] is True
    assert {k: v for k, v in seen[1].items() if k != "max_autotune_gemm"} == pretrain_lib.QUIET_AUTOTUNE  # torch 2.13


def test_autotuning_drops_only_the_out_of_resource_candidates_errors(caplog):
    """With pretrain.max_autotune_gemm Inductor's log of candidates it skips for lack of shared memory
    is dropped (62 errors for one CQL step on an H100); any other autotuning error still reaches the user."""
    import logging

    from wsrl_dist import pretrain as pretrain_lib
    from wsrl_dist.config import load

    log = logging.getLogger("torch._inductor.select_algorithm")
    text = "Runtime error during autotuning: \n%s. \nIgnoring this choice."
    for _ in range(2):  # installed once however often the step is built
        pretrain_lib.inductor_overrides(load(overrides=["pretrain.max_autotune_gemm=true"]).pretrain)
    assert sum(isinstance(f, pretrain_lib._BenignAutotuneErrors) for f in log.filters) == 1
    with caplog.at_level(logging.ERROR, logger=log.name):
        log.error(text, "No valid triton configs. OutOfMemoryError: out of resource: triton_mm Required: 294912")
        log.error(text, "CUDA error: an illegal memory access was encountered")
        log.error("some other inductor error")
    shown = [r.getMessage() for r in caplog.records]
    assert len(shown) == 2 and "illegal memory access" in shown[0] and shown[1] == "some other inductor error"


def test_the_loop_cuts_chunks_at_checkpoint_steps_with_or_without_a_checkpoint_file(tmp_path):
    """A run's batches must not depend on whether it writes partial checkpoints."""
    from tests.runtime.conftest import tiny_config
    from tests.test_pretrain_resume import random_arrays
    from wsrl_dist import job
    from wsrl_dist.envs.make import obs_act_dims
    from wsrl_dist.pretrain import pretrain_agent

    cfg = tiny_config(tmp_path / "run", "finetune.method=wsrl", "pretrain.algo=cql", "pretrain.steps=12",
                      "pretrain.checkpoint_every=5", "pretrain.batch_size=32")
    obs, act = obs_act_dims(cfg.task.spec())
    cols = random_arrays(obs, act)
    sizes = {}
    for partial in (None, tmp_path / "partial.pt"):
        sampler = DeviceSampler(cols, torch.device("cpu"), 0)
        real = sampler.sample
        sizes[partial] = []
        sampler.sample = lambda n, real=real, out=sizes[partial]: (out.append(n), real(n))[1]
        agent = job.build_agent(cfg, obs, act, torch.device("cpu"), capturable=False)
        pretrain_agent(agent, sampler, cfg, partial=partial)
    assert sizes[None] == sizes[tmp_path / "partial.pt"] == [5 * 32, 5 * 32, 2 * 32]
