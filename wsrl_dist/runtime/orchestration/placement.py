"""Rollout workers Ray cannot place, and why: what each asks for vs what the cluster has free.

A worker actor that asks for more CPUs than any node has free stays in Ray's PENDING_CREATION with
no process (`ray status`: Pending Demands {'CPU': 1.0}); from the job's side it only looks like a
worker that never starts. `pending_ids` finds those through Ray's actor table; `reason` says why in
words; `scale` and `status` report both, the driver warns once, and `wsrl_workers_pending` exports
the count (ops/metrics.py).
"""

from __future__ import annotations

import logging
from typing import Any

import ray

log = logging.getLogger(__name__)


def _actor_state(handle: Any) -> dict[str, Any]:
    from ray._private import state  # the GCS actor table; public ray.util.state needs the dashboard

    try:
        return state.actors(handle._actor_id.hex()) or {}
    except Exception:  # noqa: BLE001 -- a GCS hiccup must not fail the monitor tick
        return {}


def is_unplaced(handle: Any) -> bool:
    """True while Ray has not given the actor a process (waiting for resources)."""
    st = _actor_state(handle)
    return st.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY") and not st.get("Pid")


def demanded(ask: dict[str, float]) -> int | None:
    """Actors / tasks of exactly this resource shape Ray's scheduler cannot place now (what
    `ray status` lists as Pending Demands); None where the autoscaler SDK is unavailable."""
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        demand = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    except Exception:  # noqa: BLE001 -- an older Ray, or a GCS hiccup: no demand figure
        return None
    return sum(b.count for d in demand.ray_task_actor_demand for b in d.bundles_by_count
               if {k: float(v) for k, v in b.bundle.items()} == ask)


def pending_count(handles: list, worker_cpus: float) -> int:
    """Workers waiting for resources: without a process yet AND counted in Ray's pending demand (a
    worker whose CPU is granted but whose process is still starting has no process yet either)."""
    unplaced = sum(is_unplaced(h) for h in handles)
    if not unplaced:
        return 0
    n = demanded(asks(worker_cpus))
    return unplaced if n is None else min(unplaced, n)


def asks(worker_cpus: float) -> dict[str, float]:
    return {"CPU": float(worker_cpus)}


def reason(worker_cpus: float, pending: int) -> str | None:
    """Why `pending` workers wait: their resource ask against the cluster's free and total."""
    if pending <= 0:
        return None
    free, total = ray.available_resources(), ray.cluster_resources()
    ask = asks(worker_cpus)
    parts = [f"{free.get(k, 0.0):g} of {total.get(k, 0.0):g} {k} free" for k in ask]
    return (f"{pending} rollout worker(s) waiting for placement: each asks {ask}, the cluster has "
            f"{', '.join(parts)}; they start when resources free up (add nodes, lower "
            f"runtime.worker_cpus, or scale down)")


def scale_note(n: int, alive: int, pending: int, worker_cpus: float) -> str | None:
    """At a scale request: will the extra workers fit in what is free now? None when they do."""
    extra = n - alive - pending
    if extra <= 0:
        return reason(worker_cpus, pending) if pending and n > alive else None
    free = ray.available_resources().get("CPU", 0.0)
    fit = int(free // worker_cpus) if worker_cpus > 0 else extra
    if fit >= extra:
        return None
    return reason(worker_cpus, pending + extra - fit)
