"""Driver-side helpers of the Job (runtime/orchestration/stages.py) and its seed groups (runtime/orchestration/seedgroup.py):
actor placement, the metrics server, the learner's and the controller's calls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from wsrl_dist.errors import LearnerDied
from wsrl_dist.ops.metrics import MetricsServer

log = logging.getLogger(__name__)


def check_learner_running(train_ref: Any) -> None:
    """During the online stage the learner's train() only returns by failing: raise its error."""
    if ray.wait([train_ref], timeout=0)[0]:
        ray.get(train_ref)  # raises the learner's error; it never ends on its own
        raise RuntimeError("the learner stopped before the online stage was over")


def scale_requests(controller: Any) -> list[int]:
    """Worker counts asked for by `wsrl-dist scale` since the last call (none while it restarts)."""
    try:
        return ray.get(controller.take_requests.remote())
    except ActorUnavailableError:
        return []



def _on_this_node(soft: bool = False) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=soft)


def _start_metrics(snapshot_fn, rt, label: str | None = None) -> MetricsServer:
    server = MetricsServer(snapshot_fn, rt.metrics_host, rt.metrics_port, label=label)
    try:
        server.start()
    except OSError as e:  # port taken (another job on this host): serve on a free one instead
        server = MetricsServer(snapshot_fn, rt.metrics_host, 0, label=label)
        server.start()
        log.warning("metrics port %s unavailable (%s); serving on http://%s:%d/metrics instead",
                    rt.metrics_port, e, server.host, server.port)
    return server


def _port_note(server: MetricsServer, rt) -> str:
    """Said after the metrics URL when the configured port was taken (run.json has the URL too)."""
    return f"  (port {rt.metrics_port} was taken)" if rt.metrics_port and server.port != rt.metrics_port else ""


def _ray_address() -> str | None:
    """The cluster's GCS address, for `wsrl-dist status RUN_DIR` (it connects there, not to 'auto')."""
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - an older Ray or a client connection: status falls back to auto
        return None


def learner_died(learner: Any, run_dir: Path, stage: str, env_steps: Any, updates: Any,
                 newest: str | None) -> LearnerDied | None:
    """LearnerDied (one line: where the job stood, its newest checkpoint, the resume command) if
    `learner` (an actor handle) no longer answers, else None. The learner is not restarted in
    place: resuming from the newest checkpoint redoes at most run.checkpoint_every env steps (plus
    what one monitor tick collects) and their updates."""
    try:
        ray.get(learner.ping.remote(), timeout=10)
        return None
    except Exception:  # noqa: BLE001 - ActorDiedError, or no answer: it is gone
        pass
    at = (f"its newest checkpoint is {newest}" if newest is not None
          else "it has no online checkpoint yet (resume starts the online stage over)")
    return LearnerDied(
        f"the learner died in the {stage} stage at {env_steps} env steps, {updates} critic updates "
        f"(process killed or its node lost); {at}; resume with: wsrl-dist launch --resume {run_dir}")
