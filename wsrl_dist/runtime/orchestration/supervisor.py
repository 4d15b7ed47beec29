"""Supervisor: the driver's bookkeeping of rollout worker actors (scale, restart, replace).

Each worker id owns a Slot: its actor handle, its pending call (collect / run) and a state. Ray
restarts a dead worker process itself (max_restarts); a worker that runs out of restarts, or takes
longer than runtime.restart_timeout to come back (its node is gone and no other has room yet), is
replaced by a fresh actor under the same id. Either way the new process pulls the latest weights in
its constructor. Called from the driver's monitor loop only (one thread).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from wsrl_dist.config import from_dict
from wsrl_dist.plan import RunPlan
from wsrl_dist.runtime.datapath.rollout import RolloutWorker
from wsrl_dist.runtime.instrumentation.monitor import ALIVE_STATES
from wsrl_dist.runtime.orchestration.peers import make_directory

log = logging.getLogger(__name__)


@dataclass
class Slot:
    wid: int
    handle: Any
    state: str = "starting"  # starting | restarting | idle | running | stopping | done | retired
    ref: Any = None  # pending collect() / run()
    ping: Any = None  # pending ping() while (re)starting
    since: float = field(default_factory=time.time)
    stats: dict[str, Any] = field(default_factory=dict)
    replaced: int = 0  # fresh actors made since this slot last came up


class Supervisor:
    def __init__(self, cfg: dict, shards: list, store: Any, learner: Any, monitor: Any,
                 plan: RunPlan | None = None):
        self.cfg, self.rt, self.plan = cfg, from_dict(cfg).runtime, plan  # plan: handed to each worker
        self.shards, self.store, self.learner, self.monitor = shards, store, learner, monitor
        self.slots: dict[int, Slot] = {}
        self.next_wid = 0
        self.restarts = 0
        self.deaths = 0  # workers lost mid-call (watchdog.Watchdog re-syncs their grants)
        self.online = False
        # small constructor arguments only: a restarted worker asks this named actor for its peers
        self.directory, self.directory_name = make_directory(shards, store, learner)

    # ------------------------------------------------------------------ actors
    def _actor(self, wid: int) -> Any:
        rt = self.rt
        return ray.remote(RolloutWorker).options(
            num_cpus=rt.worker_cpus, max_restarts=rt.max_restarts, max_task_retries=0,
            max_concurrency=2,  # run() in one thread, stop()/stats() in the other
        ).remote(self.cfg, wid, weights_timeout=rt.restart_timeout, peers=self.directory_name, plan=self.plan)

    def _await_start(self, slot: Slot, state: str) -> None:
        slot.state, slot.ping, slot.since, slot.ref = state, slot.handle.ping.remote(), time.time(), None

    def _replace(self, slot: Slot) -> None:
        if slot.replaced > self.rt.max_restarts:  # e.g. its constructor fails every time
            raise RuntimeError(f"rollout worker {slot.wid} could not be started "
                               f"{slot.replaced} times in a row; see its actor's log")
        slot.replaced += 1
        ray.kill(slot.handle, no_restart=True)
        slot.handle = self._actor(slot.wid)
        self._await_start(slot, "restarting")

    def _retire(self, slot: Slot) -> None:
        self.monitor.retire(slot.stats)
        slot.stats, slot.state, slot.ref = {}, "retired", None
        ray.kill(slot.handle, no_restart=True)

    def _died(self, slot: Slot) -> None:
        log.warning("rollout worker %d died; waiting for its restart", slot.wid)
        self.deaths += 1
        self.monitor.retire(slot.stats)
        slot.stats = {}
        self._await_start(slot, "restarting")

    def kill_all(self) -> None:
        for slot in self.slots.values():
            ray.kill(slot.handle, no_restart=True)
        ray.kill(self.directory, no_restart=True)

    # ------------------------------------------------------------------ calls
    def scale(self, n: int) -> None:
        """Grow by starting new workers, shrink by stopping the newest ones (they flush first)."""
        active = sorted((s for s in self.slots.values() if s.state not in ("retired", "stopping")),
                        key=lambda s: s.wid)
        for _ in range(n - len(active)):
            slot = Slot(self.next_wid, self._actor(self.next_wid))
            self._await_start(slot, "starting")
            self.slots[slot.wid] = slot
            self.next_wid += 1
        for slot in reversed(active[n:] if n < len(active) else []):
            if slot.state == "running":
                slot.handle.stop.remote()
                slot.state = "stopping"
            else:
                self._retire(slot)

    def collect(self, steps: int) -> list:
        """Split `steps` exactly over the idle workers (warmup); returns the pending refs."""
        idle = [s for s in self.slots.values() if s.state == "idle"]
        refs = []
        for i, slot in enumerate(idle):
            share = steps // len(idle) + (i < steps % len(idle))
            if share:
                slot.ref, slot.state = slot.handle.collect.remote(share), "running"
                refs.append(slot.ref)
        return refs

    def start_runs(self) -> None:
        """Online stage: every idle or finished worker runs until the limiter's budget is spent."""
        self.online = True
        for slot in self.slots.values():
            if slot.state in ("idle", "done"):
                slot.ref, slot.state = slot.handle.run.remote(), "running"

    def all_done(self) -> bool:
        states = [s.state for s in self.slots.values()]
        return self.online and "done" in states and all(s in ("done", "retired") for s in states)

    # ------------------------------------------------------------------ health
    def supervise(self) -> None:
        now = time.time()
        for slot in self.slots.values():
            if slot.state in ("starting", "restarting"):
                self._check_start(slot, now)
            elif slot.state in ("running", "stopping") and ray.wait([slot.ref], timeout=0)[0]:
                self._check_call(slot)

    def _check_start(self, slot: Slot, now: float) -> None:
        if not ray.wait([slot.ping], timeout=0)[0]:
            if now - slot.since > self.rt.restart_timeout:
                log.warning("rollout worker %d not back after %.0f s; replacing it", slot.wid,
                            now - slot.since)
                self._replace(slot)
            return
        try:
            ray.get(slot.ping)
        except RayActorError:  # out of restarts (or its constructor failed): a fresh actor
            self._replace(slot)
            return
        if slot.state == "restarting":
            self.restarts += 1
        slot.state, slot.ping, slot.replaced = "idle", None, 0
        if self.online:
            slot.ref, slot.state = slot.handle.run.remote(), "running"

    def _check_call(self, slot: Slot) -> None:
        try:
            slot.stats = ray.get(slot.ref)
        except RayActorError:
            if slot.state == "stopping":
                self._retire(slot)
            else:
                self._died(slot)
            return
        except RayTaskError as e:  # the worker raised: restart its process, keep the job going
            log.error("rollout worker %d failed: %s", slot.wid, e)
            ray.kill(slot.handle, no_restart=False)
            self._died(slot)
            return
        if slot.state == "stopping":
            self._retire(slot)
        else:
            slot.state, slot.ref = ("done" if self.online else "idle"), None

    def poll_stats(self, timeout: float = 2.0) -> None:
        slots = [s for s in self.slots.values() if s.state in ALIVE_STATES]
        refs = [s.handle.stats.remote() for s in slots]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout) if refs else ([], [])
        ready = set(ready)
        for slot, ref in zip(slots, refs):
            if ref in ready:
                try:
                    slot.stats = ray.get(ref)
                except (RayActorError, RayTaskError, GetTimeoutError):
                    pass  # its pending call reports the death; supervise() handles it

    def last_stats(self) -> dict[int, dict[str, Any]]:
        return {wid: s.stats for wid, s in self.slots.items() if s.stats and s.state != "retired"}

    def placement(self) -> dict[str, Any]:
        """Workers Ray has not placed (no resources free) and why; warns once per job when it starts."""
        from wsrl_dist.runtime.orchestration import placement

        waiting = [s for s in self.slots.values() if s.state in ("starting", "restarting")]
        n = placement.pending_count([s.handle for s in waiting], self.rt.worker_cpus)
        why = placement.reason(self.rt.worker_cpus, n)
        if why and not getattr(self, "_warned_pending", False):
            log.warning("%s", why)
            self._warned_pending = True
        return {"workers_pending": n, "pending_reason": why,
                "worker_resources": placement.asks(self.rt.worker_cpus)}

    def states(self) -> dict[int, str]:
        return {wid: s.state for wid, s in self.slots.items()}
