"""Entry points of a distributed job: start or join Ray, then run its Job (runtime/orchestration/stages.py: one
learner and a SeedGroup per seed, one seed or many); `wsrl-dist scale` / `status` talk to a running
job's controller (runtime/orchestration/control.py).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import ray
import yaml

from wsrl_dist.config import RunConfig, from_dict
from wsrl_dist.plan import RunPlan
from wsrl_dist.runtime.orchestration import exposure, stop
from wsrl_dist.runtime.orchestration.control import NAMESPACE, scale, status
from wsrl_dist.runtime.orchestration.jobtools import _port_note, _start_metrics  # noqa: F401 (tests import them here)
from wsrl_dist.runtime.orchestration.stages import Job

__all__ = ["launch", "resume", "scale", "status"]


def _connect(rt, groups: int = 1) -> bool:
    """Start or join Ray; True when this call started it. Under `ray job submit` RAY_ADDRESS is set
    and address=None joins that cluster.

    A local Ray started here gets at least the logical CPUs the job asks for (learner + workers +
    shards, per seed group): on a 2-core laptop the default 2 workers would otherwise never be
    scheduled, and the warmup would wait on them. Oversubscribing cores is fine for env stepping."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    local = rt.address is None and not os.environ.get("RAY_ADDRESS")
    if not local:
        from wsrl_dist.runtime.orchestration.control import use_token_auth_if_present

        use_token_auth_if_present()  # joining a cluster: send the token Ray 2.60 expects
    if local:
        need = 1 + groups * (rt.num_workers * rt.worker_cpus + rt.num_shards * rt.shard_cpus)
        kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(need))
        kwargs["dashboard_host"] = exposure.LOCAL_DASHBOARD_HOST  # runtime/orchestration/exposure.py says why
        exposure.warn_if_auth_disabled()
    with stop.ray_spawned_apart() if local else contextlib.nullcontext():  # stop.py says why
        ray.init(address=rt.address, namespace=NAMESPACE, logging_level="WARNING", **kwargs)
    if local:
        exposure.tighten_token_file()  # the token Ray 2.60 just wrote, owner-only
    return True


def launch(cfg: RunConfig, command: str = "") -> Path:
    """Run the whole job on Ray (cfg.runtime.address, or a local Ray); returns the run directory.
    Two or more run.seeds: one learner trains them all (runtime/orchestration/stages.py)."""
    plan = RunPlan.of(cfg)  # the one derivation of stages, UTD and rows for this job (plan.py)
    started = _connect(cfg.runtime, len(plan.seeds))
    try:
        with stop.signals_raise():  # SIGTERM (`ray job stop`, kill) stops like Ctrl-C
            return Job(cfg, command, plan=plan).run()
    finally:
        if started:
            ray.shutdown()


def resume(run_dir: str | Path, command: str = "", force_config: bool = False) -> Path:
    """Continue the job in `run_dir` from its newest checkpoint that loads, with the same counters
    (a fresh launch of its config when it has none; checkpoint.load_newest). `force_config`: resume
    even if the checkpoint was written by a config that hashes differently."""
    from wsrl_dist.storage import check_resume_dir

    run_dir = check_resume_dir(run_dir)  # one-line ResumeError for anything but a run dir
    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    cfg.run.run_dir = str(run_dir)
    plan = RunPlan.of(cfg)
    started = _connect(cfg.runtime, len(plan.seeds))
    try:
        resumed = Job(cfg, command or f"resume {run_dir}", resume=True, force_config=force_config, plan=plan)
        with stop.signals_raise():
            return resumed.run()
    finally:
        if started:
            ray.shutdown()
