"""SIGKILL the job's stateful actors mid-online (issue 17): a replay shard comes back from its
snapshot and the job finishes with the right counters; a dead learner ends the job with one line
naming the resume command, and that command finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.runtime.conftest import BackgroundJob, read_records, run_json, tiny_config
from wsrl_dist.runtime import checkpoint
from wsrl_dist.runtime.learner import first_update_step

K, TOTAL, UTD = 200, 1400, 4
REPO = Path(__file__).resolve().parents[2]
LIMITS = ["runtime.num_workers=2", "runtime.utd_slack=16", "runtime.rollout_slack=32"]


def test_killed_replay_shard_restarts_from_its_snapshot_and_the_job_finishes_with_the_right_counters(
        ray_local, tmp_path):
    overrides = [f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=100000",
                 "run.checkpoint_every=100000", "runtime.replay_snapshot_s=1", *LIMITS]
    cfg = tiny_config(tmp_path / "shard", *overrides)
    bg = BackgroundJob(cfg)
    st = bg.wait_for(lambda s: s["phase"] == "online" and s["env_steps"] > K + 300)
    victim = st["replay_pids"][0]
    os.kill(victim, signal.SIGKILL)
    back = bg.wait_for(lambda s: s.get("replay_restarts_total", 0) >= 1, timeout=60)
    run_dir = bg.join()

    assert back["replay_pids"][0] != victim
    assert back["replay_sizes"][0] >= K  # refilled from its snapshot (every 1 s), not empty
    info = run_json(run_dir)
    assert info["replay_shard_restarts"] == 1
    lost = info["replay_rows_lost"]
    # the job still ends with exactly online_steps rows in replay: lost rows were collected again
    assert info["env_steps"] == TOTAL
    assert info["critic_updates"] == UTD * (TOTAL - first_update_step(cfg))
    # the workers' inserts into the dead shard were retried after its restart: no worker died, and
    # every row they stepped was stored once, or stored, lost with the shard and stepped again
    assert info["worker_restarts"] == 0
    assert sum(w["env_steps"] for w in info["workers"]) == TOTAL + lost
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    assert shards[0]["ring"]["total_inserted"] == shards[0]["ring"]["size"] == TOTAL
    last = read_records(run_dir, "throughput")[-1]
    assert (last["replay_rows_lost"], last["replay_restarts_total"]) == (lost, 1)


CLI_OVERRIDES = [f"finetune.warmup_steps={K}", "finetune.online_steps=1200", "finetune.eval_every=100000",
                 "run.checkpoint_every=200", *LIMITS]


def test_killed_learner_ends_the_job_in_one_line_and_resume_finishes_it(ray_local, tmp_path):
    from wsrl_dist import cli
    from wsrl_dist.runtime import driver

    run_dir = tmp_path / "learner"
    cfg = tiny_config(run_dir, *CLI_OVERRIDES)
    args = [*cfg_overrides(cfg), f"runtime.address={ray_local}"]
    child = subprocess.Popen([sys.executable, "-m", "wsrl_dist.cli", "launch", *args], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0, st = time.time(), {}
        while time.time() - t0 < 180 and child.poll() is None:
            try:
                st = driver.status(None, job=run_dir.name)
            except ValueError:  # its controller is not registered yet
                st = {}
            if st.get("phase") == "online" and st["env_steps"] > 500 and checkpoint.latest(run_dir):
                break
            time.sleep(0.25)
        assert child.poll() is None, child.communicate()[1][-3000:]
        os.kill(st["learner_pid"], signal.SIGKILL)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 1
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("wsrl-dist: error: LearnerDied: the learner died in the online stage at "), err[-3000:]
    assert f"resume with: wsrl-dist launch --resume {run_dir}" in line
    print(line)  # shown with pytest -s
    died_at = int(line.split(" env steps")[0].rsplit(" ", 1)[-1])
    saved = checkpoint.latest(run_dir)
    assert saved.name in line

    assert cli.main(["launch", "--resume", str(run_dir)]) == 0  # the command the line names
    info = run_json(run_dir)
    back = info["resumed_from"]
    assert back["saved"] == back["restored"]
    # lost: at most one checkpoint interval (run.checkpoint_every = 200 env steps; checkpoints are
    # taken on the driver's 0.5 s ticks, so plus what one tick collects)
    assert 0 <= died_at - back["saved"]["env_steps"] <= 200 + 150
    assert (info["env_steps"], info["critic_updates"]) == (1200, UTD * (1200 - first_update_step(cfg)))


def cfg_overrides(cfg) -> list[str]:
    """The k=v overrides tiny_config applied (TINY + run dir + CLI_OVERRIDES), for the CLI."""
    from tests.runtime.conftest import TINY

    return [*TINY, f"run.run_dir={cfg.run.run_dir}", *CLI_OVERRIDES]
