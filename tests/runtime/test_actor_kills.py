"""SIGKILL the job's actors mid-online (issue 17): a replay shard comes back from its snapshot and
the job finishes with the right counters; a dead learner ends the job with one line naming the
resume command, and that command finishes the job.

Soak: the same small job with a random restartable actor (a rollout worker or the replay shard)
SIGKILLed every few seconds finishes with the right counters. The learner is not in the draw: it is
not restarted in place (its death ends the job). CI runs the short form (~1 min online, a kill every
~10 s). The long form runs only with WSRL_SOAK_S set: a kill every ~20 s for that many seconds (5
minutes: WSRL_SOAK_S=300), printing the counters:
    WSRL_SOAK_S=300 pytest -q -s tests/runtime/test_actor_kills.py -k long
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from tests.runtime.conftest import BackgroundJob, read_records, run_json, tiny_config
from wsrl_dist.runtime.datapath.learner import first_update_step
from wsrl_dist.runtime.orchestration import checkpoint

K, TOTAL, UTD = 200, 800, 4
REPO = Path(__file__).resolve().parents[2]
SOAK_S = float(os.environ.get("WSRL_SOAK_S", "300"))
LIMITS = ["runtime.num_workers=2", "runtime.utd_slack=16", "runtime.rollout_slack=32"]


def test_killed_replay_shard_restarts_from_its_snapshot_and_the_job_finishes_with_the_right_counters(
        ray_local, tmp_path):
    overrides = [f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=100000",
                 "run.checkpoint_every=100000", "runtime.replay_snapshot_s=1", *LIMITS]
    cfg = tiny_config(tmp_path / "shard", *overrides)
    bg = BackgroundJob(cfg)
    st = bg.wait_for(lambda s: s["phase"] == "online" and s["env_steps"] > K + 200)
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


def test_shard_killed_during_the_final_records_is_counted_and_status_had_left_online(ray_local, tmp_path,
                                                                                     monkeypatch):
    """The soak's race, forced: it kills a shard whenever the status reads "online", and CI once saw 3
    shard restarts in run.json for 4 kills (every other counter exact). The status read "online"
    until run.json was written, but the job had taken its last shard count before its final
    checkpoint: a shard killed in between came back (from its snapshot) uncounted. Here the shard
    dies inside that final checkpoint: by then the status must read "done", and the restart must
    be in run.json and in the last metrics record."""
    from wsrl_dist.runtime.orchestration import driver, seedrecords

    overrides = [f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=100000",
                 "run.checkpoint_every=100000", "runtime.replay_snapshot_s=1", *LIMITS]
    cfg = tiny_config(tmp_path / "end", *overrides)
    seen: dict = {}
    final_checkpoint = seedrecords.SeedRecords._checkpoint

    def killing_checkpoint(group, learner_state=None):
        # the final one: after the online stage (timed and stop checkpoints pass the learner state)
        if learner_state is None and "online" in group.stages and not seen:
            seen["phase"] = driver.status(None, job=Path(cfg.run.run_dir).name)["phase"]
            ray.get(group.shards[0].snapshot.remote())  # every row in the snapshot: the kill loses none
            os.kill(ray.get(group.shards[0].stats.remote())["pid"], signal.SIGKILL)
        return final_checkpoint(group, learner_state)

    monkeypatch.setattr(seedrecords.SeedRecords, "_checkpoint", killing_checkpoint)
    run_dir = driver.launch(cfg, "pytest")

    info = run_json(run_dir)
    assert (info["replay_shard_restarts"], info["replay_rows_lost"], info["env_steps"]) == (1, 0, TOTAL)
    last = read_records(run_dir, "throughput")[-1]
    assert (last["replay_restarts_total"], last["replay_rows_lost"]) == (1, 0)
    assert seen["phase"] == "done"  # a soak reading "online" now would kill after the last count


def test_a_shard_killed_after_the_online_stage_comes_back_with_every_row(ray_local, tmp_path, monkeypatch):
    """The online stage's last rows were in the shard's memory only until its next timed snapshot
    (runtime.replay_snapshot_s, 60 s by default): a shard killed after the stage, before the final
    checkpoint, came back without them, and with no steps left to collect them again the job ended
    short (here, with no timed snapshot in the run, every row). The stage's end now writes one."""
    from wsrl_dist.runtime.orchestration import seedrecords

    overrides = [f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=100000",
                 "run.checkpoint_every=100000", "runtime.replay_snapshot_s=3600", *LIMITS]
    cfg = tiny_config(tmp_path / "after", *overrides)
    final_checkpoint = seedrecords.SeedRecords._checkpoint
    killed: list[int] = []

    def killing_checkpoint(group, learner_state=None):
        if learner_state is None and "online" in group.stages and not killed:  # the final checkpoint
            pid = ray.get(group.shards[0].stats.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return final_checkpoint(group, learner_state)

    monkeypatch.setattr(seedrecords.SeedRecords, "_checkpoint", killing_checkpoint)
    from wsrl_dist.runtime.orchestration import driver

    run_dir = driver.launch(cfg, "pytest")
    info = run_json(run_dir)
    assert killed and info["replay_shard_restarts"] == 1
    assert (info["replay_rows_lost"], info["env_steps"]) == (0, TOTAL), info
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))  # the final checkpoint, taken after the kill
    assert sum(sh["ring"]["size"] for sh in shards) == TOTAL


def test_a_shard_killed_while_the_learner_runs_its_owed_updates_comes_back_with_every_row(ray_local, tmp_path,
                                                                                         monkeypatch):
    """The window before that one: the rollout is complete and the learner runs the updates still
    owed. The shards wrote their end-of-stage snapshot only after those, so a shard killed in
    between lost every row since its last timed snapshot, for good (no rollout left to collect them
    again: a 5,000-step kill soak ended 16 rows short). The snapshot is now written as the rollout
    completes, before the stage moves on."""
    from wsrl_dist.runtime.orchestration import driver, seedgroup

    overrides = [f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=100000",
                 "run.checkpoint_every=100000", "runtime.replay_snapshot_s=3600", *LIMITS]
    cfg = tiny_config(tmp_path / "owed", *overrides)
    complete = seedgroup.SeedGroup._rollout_complete
    killed: list[int] = []

    def killing_once_complete(group, total):
        done = complete(group, total)
        if done and not killed:  # the learner is told to finish only after this returns
            pid = ray.get(group.shards[0].stats.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return done

    monkeypatch.setattr(seedgroup.SeedGroup, "_rollout_complete", killing_once_complete)
    run_dir = driver.launch(cfg, "pytest")
    info = run_json(run_dir)
    assert killed and info["replay_shard_restarts"] == 1
    assert (info["replay_rows_lost"], info["env_steps"]) == (0, TOTAL), info
    assert info["critic_updates"] == UTD * (TOTAL - first_update_step(cfg))
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    assert sum(sh["ring"]["size"] for sh in shards) == TOTAL


def test_a_job_a_test_leaves_running_stops_as_on_ctrl_c_with_a_checkpoint(ray_local, tmp_path):
    """What tests/conftest.py does with a BackgroundJob whose test failed before joining it: an
    interrupt in the job's thread takes Job.run's Ctrl-C path (checkpoint, teardown), so no job
    runs on into the next module (whose Ray shutdown under it once crashed pytest)."""
    from wsrl_dist.runtime.orchestration.stop import JobStopped

    cfg = tiny_config(tmp_path / "left", f"finetune.warmup_steps={K}", "finetune.online_steps=100000",
                      "finetune.eval_every=100000", "run.checkpoint_every=100000", *LIMITS)
    bg = BackgroundJob(cfg)
    bg.wait_for(lambda s: s["phase"] == "online" and s["env_steps"] > K + 100)
    assert bg.stop() and not bg.thread.is_alive()
    assert isinstance(bg.error, JobStopped) and bg.error.saved and bg.error.stage == "online", bg.error
    assert bg.error.step > K and checkpoint.latest(Path(cfg.run.run_dir)).name == f"step_{bg.error.step:010d}"


CLI_OVERRIDES = [f"finetune.warmup_steps={K}", "finetune.online_steps=900", "finetune.eval_every=100000",
                 "run.checkpoint_every=200", *LIMITS]


def test_killed_learner_ends_the_job_in_one_line_and_resume_finishes_it(ray_local, tmp_path):
    from wsrl_dist import cli
    from wsrl_dist.runtime.orchestration import driver

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
    errors = [x for x in err.splitlines() if x.startswith("wsrl-dist:")]
    assert len(errors) == 1, err[-3000:]  # Ray's own log lines about the dead process may come too
    line = errors[0]
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
    assert (info["env_steps"], info["critic_updates"]) == (900, UTD * (900 - first_update_step(cfg)))


def cfg_overrides(cfg) -> list[str]:
    """The k=v overrides tiny_config applied (TINY + run dir + CLI_OVERRIDES), for the CLI."""
    from tests.runtime.conftest import TINY

    return [*TINY, f"run.run_dir={cfg.run.run_dir}", *CLI_OVERRIDES]


# ---------------------------------------------------------------- soak


def soak(tmp_path, total: int, every_s: float, duration_s: float) -> dict:
    """Run a `total`-step job, killing a random worker or shard every ~every_s seconds of the
    online stage for up to duration_s; returns the kill counts, the run dir and run.json."""
    cfg = tiny_config(tmp_path / "soak", f"finetune.warmup_steps={K}", f"finetune.online_steps={total}",
                      "finetune.eval_every=100000", "run.checkpoint_every=100000", "runtime.num_workers=2",
                      "runtime.utd_slack=16", "runtime.rollout_slack=32", "runtime.replay_snapshot_s=2",
                      "runtime.max_restarts=50", "runtime.checkpoint_every_s=10")
    bg = BackgroundJob(cfg)
    bg.wait_for(lambda s: s["phase"] == "online", timeout=180)
    rng, kills, t0 = random.Random(17), {"worker": 0, "shard": 0}, time.time()
    last_kind, online_after = None, True
    next_kill = t0 + every_s
    while bg.thread.is_alive() and time.time() - t0 < duration_s:
        time.sleep(0.25)
        if time.time() < next_kill:
            continue
        try:
            st = bg.status()
        except ValueError:  # the controller went with the job's teardown: the job ended since the check
            bg.thread.join(timeout=60)
            if bg.thread.is_alive():
                raise
            break
        if st.get("phase") != "online":
            break
        # a shard first, then a worker, so that even the shortest soak restarts both; then at random
        kind = ("shard" if not kills["shard"] else "worker" if not kills["worker"]
                else rng.choice(["worker", "shard"]))
        pids = (st["replay_pids"] if kind == "shard"
                else [w["pid"] for w in st["workers"] if w["state"] == "running" and w["pid"]])
        if not pids or None in pids:
            continue
        try:
            os.kill(rng.choice(pids), signal.SIGKILL)
        except ProcessLookupError:  # it died on its own meanwhile (a status a tick old)
            continue
        kills[kind] += 1
        last_kind = kind
        online_after = _reads_online(bg)
        next_kill = time.time() + every_s * rng.uniform(0.75, 1.25)
    run_dir = bg.join(timeout=600)
    info = run_json(run_dir)
    # the right final counters: every row stored once, every update the UTD owes done
    assert info["env_steps"] == total
    assert info["critic_updates"] == UTD * (total - first_update_step(cfg))
    assert info["weights_version"] == info["critic_updates"] // UTD
    # every shard kill is counted: the job has the status read "done" before its last count of shard
    # restarts (stages.Job.run), so a kill that a status still reading "online" followed is in
    # run.json. Only a last kill after which the status read "done" raced that count: it may have
    # landed after it, uncounted (CI once saw 3 for 4 when the count came before the final checkpoint)
    racing = last_kind == "shard" and not online_after
    assert kills["shard"] - racing <= info["replay_shard_restarts"] <= kills["shard"]
    # every killed worker is restarted, except that the last kill may land as the job ends (its
    # rows all stored: nothing is left for a restart to do; CI saw 2 restarts for 3 such kills)
    assert info["worker_restarts"] >= kills["worker"] - (last_kind == "worker")
    _, shards, _ = checkpoint.load(checkpoint.latest(run_dir))
    assert shards[0]["ring"]["total_inserted"] == shards[0]["ring"]["size"] == total
    assert sum(shards[0]["meta"]["env_steps_by_worker"].values()) == total
    # run.checkpoint_every is out of reach: the checkpoint before the final one was a timed one
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*") if checkpoint.problem(p) is None)
    assert len(saved) == 2 and K < int(saved[0].split("_")[1]) < total
    last = read_records(run_dir, "throughput")[-1]
    assert last["replay_rows_lost"] == info["replay_rows_lost"]
    out = {"kills": kills, "soak_s": round(time.time() - t0), "run_json": info}
    print({"kills": kills, "online_s": round(info["stages"]["online"]["wall_s"]),
           **{k: info[k] for k in ("env_steps", "critic_updates", "replay_rows_lost", "replay_shard_restarts",
                                   "worker_restarts", "dropped_env_steps")}})
    return out


def _reads_online(bg: BackgroundJob) -> bool:
    try:
        return bg.status().get("phase") == "online"
    except ValueError:  # the controller went with the job's teardown
        return False


def test_soak_short_random_worker_and_shard_kills_end_with_the_right_counters(ray_local, tmp_path):
    # a kill every ~4 s: on an idle 2-core box the 2,000 steps take ~20 s online, under CI load longer
    out = soak(tmp_path, total=2000, every_s=4, duration_s=120)
    assert out["kills"]["shard"] >= 1 and out["kills"]["worker"] >= 1


@pytest.mark.slow
@pytest.mark.skipif("WSRL_SOAK_S" not in os.environ, reason="the 5-minute soak: set WSRL_SOAK_S=300")
def test_soak_long_a_kill_every_20_s_for_wsrl_soak_s_seconds(ray_local, tmp_path):
    # ~30 env steps/s on a loaded 2-core box: enough online steps to outlast the soak
    out = soak(tmp_path, total=int(60 * SOAK_S), every_s=20, duration_s=SOAK_S)
    assert sum(out["kills"].values()) >= int(SOAK_S // 20) - 2
