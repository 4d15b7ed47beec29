"""No silent hangs (issue 17), in real small Ray jobs: env steps granted to a SIGKILLed rollout worker
go back to the pool while the others still run (a tight limiter used to stall for good after 2-3
kills), and a job that stops making progress ends with a StallError naming the stuck actor."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from tests.runtime.conftest import BackgroundJob, run_json, tiny_config
from wsrl_dist.runtime.orchestration.watchdog import StallError, Watchdog


def test_progress_clock_restarts_on_any_new_env_step_or_update():
    dog = Watchdog(stall_timeout_s=60)
    assert dog.progressed(10, 0, now=100.0) == 0.0
    assert dog.progressed(10, 0, now=130.0) == 30.0  # nothing moved
    assert dog.progressed(10, 4, now=131.0) == 0.0  # an update counts as progress
    assert dog.progressed(11, 4, now=140.0) == 0.0 and dog.progressed(11, 4, now=141.5) == 1.5


def test_tight_limiter_survives_repeated_worker_kills(ray_local, tmp_path):
    """rollout_slack=2, utd_slack=0: every kill strands the victim's granted steps. Before, the
    job stalled for good after 2-3 kills (steps went back only once every worker had finished)."""
    K, TOTAL = 100, 1500
    cfg = tiny_config(tmp_path / "tight", f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}",
                      "finetune.eval_every=100000", "run.checkpoint_every=100000", "runtime.num_workers=2",
                      "runtime.rollout_slack=2", "runtime.utd_slack=0", "runtime.grant_quantum=1",
                      "runtime.chunk_size=2", "runtime.stall_timeout_s=120")
    bg = BackgroundJob(cfg)
    bg.wait_for(lambda s: s["phase"] == "online" and s["env_steps"] > K + 20, timeout=180)
    killed: set[int] = set()
    while len(killed) < 3 and bg.thread.is_alive():
        st = bg.status()
        if st["env_steps"] >= TOTAL - 100:
            break
        pids = sorted(w["pid"] for w in st["workers"]
                      if w.get("pid") and w["state"] == "running" and w["pid"] not in killed)
        if not pids:  # restarting (the status may still show a dead worker's pid for a moment)
            time.sleep(0.5)
            continue
        victim = pids[len(killed) % len(pids)]
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.add(victim)
        time.sleep(3)
    kills = len(killed)
    run_dir = bg.join(timeout=300)
    assert kills >= 3
    info = run_json(run_dir)
    assert info["env_steps"] == TOTAL and info["worker_restarts"] >= 2
    assert info["dropped_env_steps"] >= 0


def test_a_stopped_worker_in_the_warmup_ends_the_job_naming_it(ray_local, tmp_path):
    """SIGSTOP: the worker's process lives but never answers; the warmup would wait forever."""
    cfg = tiny_config(tmp_path / "stuck", "finetune.warmup_steps=20000", "finetune.online_steps=20100",
                      "runtime.num_workers=1", "runtime.stall_timeout_s=6", "runtime.restart_timeout=600")
    bg = BackgroundJob(cfg)
    st = bg.wait_for(lambda s: s["phase"] == "warmup" and s["env_steps"] > 0 and any(
        w.get("pid") for w in s["workers"]), timeout=180)
    pid = next(w["pid"] for w in st["workers"] if w.get("pid"))
    msg = _stop_and_expect_stall(bg, pid)
    assert "no progress for" in msg and "warmup stage" in msg and "runtime.stall_timeout_s" in msg
    assert "rollout worker 0" in msg and "(no answer)" in msg and "\n" not in msg


def test_a_stopped_worker_of_one_seed_ends_a_multi_seed_warmup_naming_it(ray_local, tmp_path):
    """Two seeds run the same job code as one (runtime/orchestration/stages.py), watchdog included: a stopped
    worker of seed 1 ends the warmup while seed 0's group still makes progress."""
    msg = _stop_a_seed_1_worker(tmp_path / "stuck-seeds", "warmup", 0, "finetune.warmup_steps=20000",
                                "finetune.online_steps=20100")
    assert msg.startswith("seed 1: ") and " | " not in msg, msg  # seed 0 is still warming up: not stuck
    assert "no progress for" in msg and "warmup stage" in msg and "rollout worker 0" in msg and "(no answer)" in msg


def test_a_stopped_worker_of_one_seed_ends_a_multi_seed_online_stage_naming_it(ray_local, tmp_path):
    """Online, the seeds are in lock-step (one learner step runs a bundle for every seed): seed 1's
    stopped worker stalls its limiter and so both seeds; the job ends naming seed 1's worker (before,
    seed 0's watchdog could fire first and the error said 'not answering: none')."""
    msg = _stop_a_seed_1_worker(tmp_path / "stuck-online", "online", 120, "finetune.warmup_steps=100",
                                "finetune.online_steps=100000", "finetune.eval_every=100000",
                                "run.checkpoint_every=100000")
    per_seed = dict(part.split(": ", 1) for part in msg.split(" | "))
    assert set(per_seed) == {"seed 0", "seed 1"} and "\n" not in msg, msg  # lock-step: both stalled
    assert all("no progress for" in m and "online stage" in m for m in per_seed.values()), msg
    assert "not answering: rollout worker 0;" in per_seed["seed 1"] and "(no answer)" in per_seed["seed 1"], msg
    assert "not answering: none" in per_seed["seed 0"], msg


def _stop_a_seed_1_worker(run_dir, phase: str, after: int, *overrides: str) -> str:
    """A 2-seed job (one worker a seed, stall_timeout_s=6); once seed 1 is in `phase` with more than
    `after` env steps and a running worker, that worker is SIGSTOPped: the StallError's message."""
    cfg = tiny_config(run_dir, "run.seeds=[0,1]", *overrides, "runtime.num_workers=1",
                      "runtime.stall_timeout_s=6", "runtime.restart_timeout=600")
    bg = BackgroundJob(cfg)

    def running(w):
        return w.get("pid") and w.get("state") == "running"

    def seed_1_stepping(s):
        st = s.get("seeds", {}).get("1") or {}
        return st.get("phase") == phase and (st.get("env_steps") or 0) > after and any(
            running(w) for w in st.get("workers", []))

    st = bg.wait_for(seed_1_stepping, timeout=180)
    return _stop_and_expect_stall(bg, next(w["pid"] for w in st["seeds"]["1"]["workers"] if running(w)))


def _stop_and_expect_stall(bg, pid: int) -> str:
    """SIGSTOP worker `pid`; the job must end with a StallError (its message is returned)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(StallError) as err:
            bg.join(timeout=120)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    return str(err.value)


def test_a_shard_that_hangs_while_the_learner_runs_its_owed_updates_ends_the_job_naming_it(
        ray_local, tmp_path, monkeypatch):
    """After the rollout the driver only waited for the learner's owed updates, with no watchdog,
    and its monitor tick waited on the shards with no timeout: a hung shard (SIGSTOP) there held
    the job silently for good. Now the tick skips an actor that does not answer and the watchdog
    ends the job naming the shard."""
    from wsrl_dist.runtime.orchestration import seedgroup

    cfg = tiny_config(tmp_path / "hung", "finetune.warmup_steps=100", "finetune.online_steps=400",
                      "finetune.eval_every=100000", "run.checkpoint_every=100000", "runtime.stall_timeout_s=6",
                      # the rollout runs far ahead of a slow learner: thousands of updates owed at its end
                      "runtime.rollout_slack=1000", "runtime.test_learner_delay_s=0.02")
    # the learner is told to finish once this has returned True
    msg = _stall_with_the_shard_stopped(cfg, monkeypatch, seedgroup.SeedGroup, "_rollout_complete",
                                        lambda group: group.shards[0])
    assert "online stage" in msg and "not answering: replay shard 0" in msg, msg


def test_a_shard_that_hangs_as_the_rollout_ends_ends_the_job_naming_it(ray_local, tmp_path, monkeypatch):
    """The look at the rollout's end (every worker returned: do the shards hold every step?)
    waited on the shards with no timeout, before the watchdog's turn: a shard hung right then held
    the job silently. Now that look gives up after half the stall timeout and the watchdog names it."""
    from wsrl_dist.runtime.orchestration import supervisor

    cfg = tiny_config(tmp_path / "hung-end", "finetune.warmup_steps=100", "finetune.online_steps=400",
                      "finetune.eval_every=100000", "run.checkpoint_every=100000", "runtime.stall_timeout_s=6")
    msg = _stall_with_the_shard_stopped(cfg, monkeypatch, supervisor.Supervisor, "all_done", lambda sup: sup.shards[0])
    assert "online stage" in msg and "not answering: replay shard 0" in msg, msg


def _stall_with_the_shard_stopped(cfg, monkeypatch, owner, method: str, shard_of) -> str:
    """Launch `cfg` with `owner.method` patched to SIGSTOP the shard (`shard_of(self)`) the first
    time the method returns True online; the StallError's message (the shard is let go after)."""
    from wsrl_dist.runtime.orchestration import driver

    real = getattr(owner, method)
    stopped: list[int] = []

    def stopping(self, *args):
        done = real(self, *args)
        if done and not stopped:
            stopped.append(ray.get(shard_of(self).stats.remote())["pid"])
            os.kill(stopped[0], signal.SIGSTOP)
        return done

    monkeypatch.setattr(owner, method, stopping)
    try:
        with pytest.raises(StallError) as e:
            driver.launch(cfg, "pytest")
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert stopped
    return str(e.value)
