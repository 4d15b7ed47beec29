"""GrantDesk: the rollout workers' side of the learner's UTD limiter (rollout -> limiter), thread-safe.

Grant calls arrive on the learner actor's GRANTS thread pool (learner_actor_class). One that must wait
sleeps on a condition that the training loop notifies as its updates make room, instead of the worker
polling: with the learner the bottleneck, 14 polling workers made ~600 grant calls/s into the H200
job's learner process, 84% of them refused (BENCHMARKS.md, "Rollout grants"), each one GIL time taken
from the training loop.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

from wsrl_dist.plan import RunPlan
from wsrl_dist.runtime.datapath.limiter import UtdLimiter
from wsrl_dist.runtime.instrumentation.progress import PROGRESS

GRANTS = "grants"  # Ray concurrency group of the rollout workers' grant calls


def learner_actor_class(cls: type, num_workers: int, groups: int = 1) -> Any:
    """`cls` (learneractor.LearnerActor) as a Ray actor class whose grant calls run on a thread
    pool of their own: a worker waiting there for env steps holds one thread. Twice the workers (at
    least 16) per seed group leaves room for `wsrl-dist scale`; past that, grant calls queue (the
    workers slow down, nothing deadlocks: each waits at most runtime.grant_wait_s). progress() has
    a thread of its own (runtime/instrumentation/progress.py): it answers while prepare() holds the learner."""
    return ray.remote(concurrency_groups={GRANTS: max(16, 2 * int(num_workers)) * int(groups),
                                          PROGRESS: 1})(cls)


def rollout_slack(cfg, plan: RunPlan | None = None) -> int | None:
    """The limiter's rollout side: runtime.rollout_slack capped at one chunk per rollout worker
    (runtime.num_workers x chunk_size env steps), or None (workers unpaced) when the Cal-QL
    loss is kept online. Deviation, for that case only: its workers hold each episode's rows until
    the episode ends (its MC returns need all of them), and with paced workers the rows they hold
    could exceed the slack while the learner waits for exactly those rows (a stall). Unpaced, the
    learner side still caps updates at one per env step in the shards; it may fall behind the
    rollout (utd_actual < 1 for a while) and makes up the owed updates before the run ends.
    `plan`: the job's RunPlan (a caller with none gets its config's)."""
    if (plan if plan is not None else RunPlan.of(cfg)).mc_returns:
        return None
    rt = cfg.runtime
    if rt.rollout_slack is None:
        return None
    # At most one grant request (a chunk) per worker ahead of the learner's updates: a fixed 512
    # let the 2-worker smoke job take its whole 1,000-step online phase at once (UTD ~0 while the
    # rollouts ran, then the learner alone for 35 s: issue 16). Throughput is not lost: the slack
    # binds only while the learner is the slower side, and then the learner sets the pace anyway.
    pool = max(rt.num_workers, 1) * max(rt.chunk_size, rt.envs_per_worker)
    return max(rt.envs_per_worker, min(rt.rollout_slack, pool))


class GrantDesk:
    """Env-step grants out of `limiter`, whose every use holds `lock` (shared with the learner's
    own limiter checks). `quantum`: runtime.grant_quantum (limiter.grant)."""

    def __init__(self, limiter: UtdLimiter, lock: threading.Lock, quantum: int):
        self.limiter, self.lock, self.quantum = limiter, lock, int(quantum)
        self._room = threading.Condition(lock)
        self.waiters = 0  # grant calls asleep in wait_for

    def acquire(self, n: int, multiple: int = 1, blocked_s: float = 0.0) -> int:
        """Env steps a worker may take now, never waiting (0 = none now, -1 = budget spent).
        `blocked_s`: what the worker slept since its last refused call (the rollout side's wait)."""
        with self.lock:
            if blocked_s:
                self.limiter.add_blocked("rollout", blocked_s)
            return self.limiter.grant(n, multiple, self.quantum)

    def wait_for(self, n: int, multiple: int = 1, wait_s: float = 0.1) -> tuple[int, float]:
        """Like acquire, but a refused call sleeps until wake() finds room for it or `wait_s`
        passes. Returns (granted: 0 after wait_s, -1 = budget spent; seconds it waited)."""
        t0 = time.perf_counter()
        deadline, slept = t0 + max(0.0, float(wait_s)), False
        with self._room:
            while True:
                granted = self.limiter.grant(n, multiple, self.quantum)
                left = deadline - time.perf_counter()
                if granted or left <= 0:
                    break
                self.waiters += 1
                try:
                    self._room.wait(left)
                finally:
                    self.waiters -= 1
                slept = True
            waited = time.perf_counter() - t0 if slept else 0.0
            if self.limiter.total_steps <= self.limiter.granted:
                self._room.notify_all()  # the budget is spent: every waiter returns -1 now
            if waited:
                self.limiter.add_blocked("rollout", waited)
        return granted, waited

    def wake(self) -> None:
        """After updates were recorded (caller holds the lock): wake one waiter per grant quantum of
        room there is now, so a bundle that frees one env step does not wake all 14 workers."""
        if not self.waiters:
            return
        room = self.limiter.rollout_room()
        left = self.limiter.total_steps - self.limiter.granted
        if left <= 0:
            self._room.notify_all()
        elif room >= min(self.quantum, left):
            self._room.notify(min(self.waiters, max(1, room // self.quantum)))

    def wake_all(self) -> None:
        """The granted count or the budget moved (caller holds the lock): every waiter looks again."""
        self._room.notify_all()
