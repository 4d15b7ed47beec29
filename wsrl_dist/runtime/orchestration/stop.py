"""Ctrl-C / SIGTERM on a running `launch` (or `ray job stop`): stop cleanly, checkpoint, and say how
to resume in one line, instead of a KeyboardInterrupt traceback out of `ray.wait`.

`signals_raise()` turns SIGTERM into the same KeyboardInterrupt that SIGINT raises (tagged with its
signal number); Job.run catches either, checkpoints what the stage it was in can resume from, and
raises JobStopped, which the CLI prints as `stopped at <stage> step N; resume with: ...` and turns
into the shell's exit status for that signal (130 for SIGINT, 143 for SIGTERM).

`ray_spawned_apart()` keeps that possible when SIGTERM goes to the driver's whole process group
(`timeout`, a batch script stopped by its scheduler, `kill -TERM -PGID`): see its docstring.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_spawned_apart() -> Iterator[None]:
    """Start a local Ray inside this block: its processes (GCS, raylet, and through the raylet every
    worker) then live in a process group of their own, not the driver's. A SIGTERM to the driver's
    group, as `timeout` sends at its deadline (the GPU calls of the study, docs/RESULTS.md) or a batch
    scheduler's stop, otherwise reached Ray's processes at the same instant as the driver: the actors
    were gone before the driver could checkpoint ("no checkpoint written at the stop"), and the resume
    lost everything since the last periodic checkpoint (a study cell at 43k of 100k restarted from 0).
    Ctrl-C needs none of this: Ray's processes block SIGINT.

    How: the driver becomes the leader of a new group for the spawn (its children inherit it), then
    rejoins its own group, so signals to that group still reach the driver. A driver that leads its
    own group already (a shell's job) or its own session cannot make a group apart: Ray then starts
    as before. Ray's processes still die with the driver (its kernel fate-sharing, PR_SET_PDEATHSIG)."""
    if os.name != "posix":
        yield
        return
    old = os.getpgrp()
    moved = False
    if old != os.getpid():
        try:
            os.setpgid(0, 0)
            moved = True
        except OSError as e:  # a session leader, say
            log.debug("Ray starts in the driver's process group: %s", e)
    try:
        yield
    finally:
        if moved:
            try:
                os.setpgid(0, old)
            except OSError as e:  # every other member of the old group has exited: nothing to rejoin
                log.warning("could not rejoin process group %d: %s", old, e)


class Interrupted(KeyboardInterrupt):
    """SIGTERM raised as a KeyboardInterrupt (SIGINT raises a plain KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class JobStopped(Exception):
    """The job was stopped by a signal after checkpointing; `line` is what to tell the user."""

    def __init__(self, stage: str, step: int | None, run_dir: Path, signum: int, saved: bool = True):
        """`step`: where a resume picks up; `saved`: whether the stop itself checkpointed it. When it
        could not (actors already gone), `step` is the newest earlier checkpoint's, or None for none
        (the stage starts over): the line says so, where it used to print "stopped at online step 0"."""
        self.stage, self.run_dir, self.signum = stage, Path(run_dir), int(signum)
        self.step = None if step is None else int(step)
        self.saved = saved
        self.exit_code = 128 + self.signum
        super().__init__(self.line)

    @property
    def line(self) -> str:
        resume = f"resume with: wsrl-dist launch --resume {self.run_dir}"
        if self.saved:
            return f"stopped at {self.stage} step {self.step}; {resume}"
        since = (f"from its checkpoint at step {self.step}" if self.step is not None
                 else "from the start of the stage")
        return f"stopped in {self.stage} with no checkpoint written at the stop; it resumes {since}; {resume}"


def signum_of(exc: KeyboardInterrupt) -> int:
    return getattr(exc, "signum", int(signal.SIGINT))


def _raise(signum: int, frame) -> None:
    # from here until signals_raise() exits, a repeated SIGTERM / Ctrl-C is ignored: a second
    # SIGTERM that landed before the stop path entered shielded() aborted the stop checkpoint
    # (seen on the GPU machine: `timeout` + Ray's shutdown delivered two)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM raises Interrupted in the main thread while inside (a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.getsignal(signal.SIGINT)
    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A second Ctrl-C / SIGTERM while the stop checkpoint is written is ignored (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def pretrain_step(run_dir: Path) -> int:
    """The pre-training step a resume continues from (its partial checkpoint's), 0 without one."""
    import torch

    from wsrl_dist.pretrain import PARTIAL

    path = Path(run_dir) / "checkpoints" / PARTIAL
    if not path.is_file():
        return 0
    with contextlib.suppress(Exception):  # being rewritten right now: say 0, resume still finds it
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    return 0
