"""Ctrl-C and SIGTERM on a running `wsrl-dist launch` (issue 16 item 5): the job checkpoints, prints
one `stopped at <stage> step N; resume with: ...` line (no KeyboardInterrupt traceback), exits 130 /
143 like the shell, and the printed command continues it to the same totals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.runtime.conftest import TINY, read_records, run_json

REPO = Path(__file__).resolve().parents[2]
K, TOTAL = 100, 1200
ARGS = [*TINY, f"finetune.warmup_steps={K}", f"finetune.online_steps={TOTAL}", "finetune.eval_every=100000",
        "run.checkpoint_every=100000", "runtime.num_workers=2", "runtime.num_shards=1"]


def _launch(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    # its own session, as a terminal's foreground job: Ctrl-C reaches the whole process group
    return subprocess.Popen([sys.executable, "-m", "wsrl_dist.cli", "launch", *args], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _online_steps(run_dir: Path) -> int:
    try:
        recs = read_records(run_dir, "throughput")
    except (OSError, json.JSONDecodeError):
        return 0
    return max([r["env_steps"] for r in recs if r["phase"] == "online"], default=0)


def _interrupt_online(proc: subprocess.Popen, run_dir: Path, log: Path, sig: int, group: bool,
                      past: int) -> int:
    """Send `sig` once the online stage is past `past` env steps; returns the exit status."""
    t0 = time.time()
    while _online_steps(run_dir) <= past:
        assert proc.poll() is None and time.time() - t0 < 300, log.read_text()[-3000:]
        time.sleep(0.3)
    (os.killpg if group else os.kill)(proc.pid, sig)
    return proc.wait(timeout=180)


def _stop_line(log: Path, run_dir: Path) -> int:
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if "stopped at" in ln]
    assert len(lines) == 1, text[-3000:]
    m = re.fullmatch(rf"wsrl-dist: stopped at online step (\d+); resume with: "
                     rf"wsrl-dist launch --resume {re.escape(str(run_dir))}", lines[0])
    assert m, lines[0]
    return int(m.group(1))


def test_ctrl_c_and_sigterm_on_launch_checkpoint_say_how_to_resume_and_resume_finishes(tmp_path):
    from wsrl_dist.runtime.orchestration import checkpoint

    run_dir = tmp_path / "job"
    log1 = tmp_path / "first.log"
    first = _launch(*ARGS, f"run.run_dir={run_dir}", log=log1)
    try:  # Ctrl-C in a terminal: SIGINT to the foreground process group
        assert _interrupt_online(first, run_dir, log1, signal.SIGINT, group=True, past=K + 200) == 130
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    step = _stop_line(log1, run_dir)
    saved = json.loads((checkpoint.latest(run_dir) / "meta.json").read_text())["counters"]
    assert saved["env_steps"] == step and K + 200 < step < TOTAL

    # `ray job stop` / kill: SIGTERM to the driver alone, on the resumed run
    log2 = tmp_path / "second.log"
    second = _launch("--resume", str(run_dir), log=log2)
    try:
        assert _interrupt_online(second, run_dir, log2, signal.SIGTERM, group=False, past=step + 200) == 143
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    step2 = _stop_line(log2, run_dir)
    assert step + 200 < step2 < TOTAL

    log3 = tmp_path / "third.log"
    third = _launch("--resume", str(run_dir), log=log3)  # the command the line printed
    assert third.wait(timeout=400) == 0, log3.read_text()[-3000:]
    info = run_json(run_dir)
    assert info["env_steps"] == TOTAL and info["resumed_from"]["saved"]["env_steps"] == step2


def test_sigterm_on_a_multi_seed_launch_checkpoints_every_seed_at_one_step_and_resume_finishes(tmp_path):
    """Two seeds in one learner (a study's cell): SIGTERM online checkpoints both seeds from the same
    multi-seed step (what resume needs), prints the resume line, exits 143; the printed command
    continues both seeds to their totals."""
    from wsrl_dist.runtime.orchestration import checkpoint

    run_dir = tmp_path / "seeds"
    log1 = tmp_path / "first.log"
    args = [a for a in ARGS if not a.startswith("runtime.num_workers")]
    first = _launch(*args, "runtime.num_workers=1", "run.seeds=[0,1]", f"run.run_dir={run_dir}", log=log1)
    try:
        assert _interrupt_online(first, run_dir / "seed-1", log1, signal.SIGTERM, group=False, past=K + 200) == 143
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    step = _stop_line(log1, run_dir)
    saved = [json.loads((checkpoint.latest(run_dir / f"seed-{s}") / "meta.json").read_text())["counters"]
             for s in (0, 1)]
    assert saved[0]["bundles"] == saved[1]["bundles"] and saved[0]["env_steps"] == step and K < step < TOTAL
    log2 = tmp_path / "second.log"
    second = _launch("--resume", str(run_dir), log=log2)
    assert second.wait(timeout=400) == 0, log2.read_text()[-3000:]
    for s in (0, 1):
        assert run_json(run_dir / f"seed-{s}")["env_steps"] == TOTAL
    assert set(run_json(run_dir)["resumed_from"]) == {"0", "1"}


def test_the_stop_line_says_where_a_resume_picks_up_when_the_stop_could_not_checkpoint():
    """A stop whose actors were already gone wrote no checkpoint; the line printed "stopped at online
    step 0", which read as if the job had not started. It now names the step a resume continues from
    (the newest earlier checkpoint) or says the stage starts over; the exit status stays the signal's."""
    from wsrl_dist.runtime.orchestration import stop

    saved = stop.JobStopped("online", 7300, Path("/r"), signal.SIGTERM)
    assert saved.line == "stopped at online step 7300; resume with: wsrl-dist launch --resume /r"
    earlier = stop.JobStopped("online", 5000, Path("/r"), signal.SIGTERM, saved=False)
    assert "no checkpoint written at the stop" in earlier.line and "its checkpoint at step 5000" in earlier.line
    none = stop.JobStopped("online", None, Path("/r"), signal.SIGINT, saved=False)
    assert "from the start of the stage" in none.line and "step 0" not in none.line
    assert none.line.endswith("resume with: wsrl-dist launch --resume /r")
    assert (saved.exit_code, none.exit_code) == (143, 130)


def test_a_second_sigterm_during_the_stop_is_ignored_and_handlers_come_back():
    """The first SIGTERM raises Interrupted; one more arriving before the stop path is shielded (the
    GPU machine delivered two) must not abort the stop checkpoint; afterwards the handlers are
    the ones from before."""
    from wsrl_dist.runtime.orchestration import stop

    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    caught = []
    with stop.signals_raise():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except stop.Interrupted as e:
            caught.append(stop.signum_of(e))
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: no second Interrupted here
            time.sleep(0.2)
            caught.append("survived")
    assert caught == [int(signal.SIGTERM), "survived"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# a parent that outlives a group SIGTERM, as `timeout` does: the driver is not its group's leader
_GROUP_PARENT = ("import signal, subprocess, sys; signal.signal(signal.SIGTERM, lambda *a: None); "
                 "sys.exit(subprocess.call(sys.argv[1:]))")


def _children(pid: int) -> dict[int, tuple[str, int]]:
    """{pid: (command name, process group)} of `pid`'s children, from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[1]) == pid:  # fields after comm: state, ppid, pgrp
            out[int(stat.parent.name)] = (comm, int(rest[2]))
    return out


def test_sigterm_to_the_whole_process_group_still_checkpoints_at_the_stop(tmp_path):
    """`timeout` at its deadline (the study's GPU calls) and batch schedulers send SIGTERM to every
    process of the job's group. A local Ray started in that group (its GCS and raylet) died at the same
    instant as the driver: on a GPU cell the stop found no actors ("no checkpoint written at the stop",
    "stopped at online step 0") and the resume restarted the cell from its last periodic checkpoint.
    Ray now starts in a group of its own (stop.ray_spawned_apart), and the stop checkpoints the step
    it reached. (A tiny job's checkpoint can beat the dying raylet, so the groups are checked too.)"""
    from wsrl_dist.runtime.orchestration import checkpoint

    run_dir = tmp_path / "job"
    log = tmp_path / "group.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", _GROUP_PARENT, sys.executable, "-m", "wsrl_dist.cli", "launch",
                             *ARGS, f"run.run_dir={run_dir}"], cwd=REPO, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while _online_steps(run_dir) == 0:
            assert proc.poll() is None and time.time() - t0 < 300, log.read_text()[-3000:]
            time.sleep(0.3)
        (driver, (_, driver_group)), = _children(proc.pid).items()
        assert driver_group == proc.pid  # the driver stays in its parent's group: the group SIGTERM reaches it
        ray_groups = {comm: group for comm, group in _children(driver).values() if comm in ("gcs_server", "raylet")}
        assert set(ray_groups) == {"gcs_server", "raylet"} and set(ray_groups.values()) == {driver}, ray_groups
        assert _interrupt_online(proc, run_dir, log, signal.SIGTERM, group=True, past=K + 200) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "no checkpoint written" not in log.read_text(), log.read_text()[-3000:]
    step = _stop_line(log, run_dir)
    saved = json.loads((checkpoint.latest(run_dir) / "meta.json").read_text())["counters"]
    assert saved["env_steps"] == step and K + 200 < step < TOTAL
