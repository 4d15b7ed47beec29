"""Driver-side guard against silent hangs (issue 17): lost grants back to the pool, and a watchdog.

Lost grants. Env steps the learner granted to a rollout worker that then died never reach a replay
shard. Before, they went back to the pool only once EVERY worker had finished (driver
`_rollout_complete`); with a tight limiter (runtime.rollout_slack=2, utd_slack=0) the learner waited
for those rows while the live workers waited for the learner's updates, and the job stalled for good
after 2-3 kills. Now, once a worker has died and no env step or update has happened for
`REGRANT_AFTER_S`, the granted count is set back to what the shards hold (learner.begin_online): the
live workers are all blocked then (a worker sends its rows before asking for more), so the gap is
exactly the steps lost with the dead one.

Watchdog. No stored env step and no critic update for runtime.stall_timeout_s in the warmup or
online stage ends the job with a StallError naming the actors that do not answer and each worker's
state, instead of a driver that waits forever.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from wsrl_dist.errors import ProjectError

log = logging.getLogger(__name__)
REGRANT_AFTER_S = 2.0  # no progress this long after a worker died: its grants are lost, re-sync
PING_TIMEOUT_S = 5.0


class StallError(ProjectError, RuntimeError):
    """The job made no progress for runtime.stall_timeout_s; the message names what is stuck."""


class Watchdog:
    def __init__(self, stall_timeout_s: float, regrant_after_s: float = REGRANT_AFTER_S):
        self.stall_timeout_s, self.regrant_after_s = float(stall_timeout_s), float(regrant_after_s)
        self.last: tuple[int, int] | None = None
        self.since = time.time()
        self.deaths_synced = 0
        self.regranted = 0  # env steps handed out again after worker deaths

    def progressed(self, env_steps: int, updates: int, now: float | None = None) -> float:
        """Seconds since (env_steps, updates) last changed."""
        now = time.time() if now is None else now
        if (env_steps, updates) != self.last:
            self.last, self.since = (env_steps, updates), now
        return now - self.since

    def check(self, job: Any, phase: str) -> None:
        """One look from the driver's loop (`job`: one seedgroup.SeedGroup): re-sync lost grants, or fail."""
        view = job.monitor.view
        idle = self.progressed(int(view.get("env_steps") or 0), int(view.get("critic_updates") or 0))
        deaths = job.sup.deaths
        if phase == "online" and deaths > self.deaths_synced and idle >= self.regrant_after_s:
            if self._regrant(job):
                self.deaths_synced = deaths
        if idle >= self.stall_timeout_s:
            raise StallError(describe_stall(job, phase, idle))

    def _regrant(self, job: Any) -> bool:
        """False if a shard did not answer (nothing changed; tried again at the next look, and a
        hung shard is named by the stall check that follows instead of holding this call)."""
        try:
            job._sync_shard_losses(job.answer_s)  # rows lost with a restarted shard are taken off `granted` first
            granted = ray.get(job.learner.stats.remote())["granted_env_steps"]
            held = job._env_steps(job.answer_s)
        except GetTimeoutError as e:
            log.warning("lost grants not re-synced this look: %s", e)
            return False
        if granted > held:
            log.warning("%d env steps granted to rollout workers that died never arrived; handing them "
                        "out again", granted - held)
            job.c["dropped"] += granted - held
            self.regranted += granted - held
            ray.get(job.learner.begin_online.remote(held))
        return True


class Watchdogs:
    """One Watchdog per seed group of a job. With several seeds a stall names its seed; online it is
    described for every seed still in the stage: they run in lock-step there (one learner step runs
    a bundle for every seed), so one seed's stopped worker stalls them all, and the seed whose clock
    runs out first need not be the stuck one (its description alone named nothing stuck). In the
    warmup each group steps on its own: the seed that stalls is the stuck one."""

    def __init__(self, groups: list[Any], stall_timeout_s: float):
        self.groups = groups
        self.dogs = [Watchdog(stall_timeout_s) for _ in groups]

    def check(self, i: int, phase: str, active: list[bool]) -> None:
        """Watchdog.check of group `i`; `active`: per group, whether it is still in `phase`."""
        try:
            self.dogs[i].check(self.groups[i], phase)
        except StallError as e:
            if len(self.groups) == 1:
                raise
            if phase != "online":
                raise StallError(f"seed {self.groups[i].cfg.run.seed}: {e}") from e
            now = time.time()
            raise StallError(" | ".join(f"seed {g.cfg.run.seed}: {describe_stall(g, phase, now - d.since)}"
                                        for d, g, on in zip(self.dogs, self.groups, active) if on)) from e


def _answers(ref: Any) -> bool:
    try:
        ray.get(ref, timeout=PING_TIMEOUT_S)
        return True
    except Exception:  # GetTimeoutError, RayActorError: either way it does not answer
        return False


def describe_stall(job: Any, phase: str, idle: float) -> str:
    """One line: how long, the counters, the actors that do not answer, each worker's state."""
    view = job.monitor.view
    stuck = [] if _answers(job.learner.stats.remote()) else ["learner"]
    stuck += [f"replay shard {i}" for i, s in enumerate(job.shards) if not _answers(s.env_steps.remote())]
    workers = []
    for wid, slot in sorted(job.sup.slots.items()):
        if slot.state == "retired":
            continue
        alive = slot.state not in ("running", "idle") or _answers(slot.handle.ping.remote())
        workers.append(f"{wid}:{slot.state} for {time.time() - slot.since:.0f} s"
                       + ("" if alive else " (no answer)"))
        if not alive:
            stuck.append(f"rollout worker {wid}")
    return (f"no progress for {idle:.0f} s in the {phase} stage (runtime.stall_timeout_s): env steps "
            f"{view.get('env_steps')}, critic updates {view.get('critic_updates')}; not answering: "
            f"{', '.join(stuck) or 'none'}; rollout workers {', '.join(workers) or 'none'}")
