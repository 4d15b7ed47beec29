"""Control plane of a running job: a named Ray actor the CLI reaches from another process.

`JobController` (named "controller:<run name>" in namespace "wsrl_dist") queues scale requests and
holds the driver's latest status; the driver's monitor loop takes the requests and pushes the status
every tick. `scale(address, n)` and `status(address)` connect to the cluster and talk to it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

NAMESPACE = "wsrl_dist"
PREFIX = "controller:"


class JobController:
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._requests: list[int] = []
        self._status: dict[str, Any] = {"phase": "starting", "run_dir": run_dir}
        self.scale_history: list[tuple[float, int]] = []

    def scale(self, n: int) -> dict[str, Any]:
        """Ask for `n` rollout workers (n >= 1); applied by the driver within one monitor tick."""
        n = int(n)
        if n < 1:
            raise ValueError(f"scale: need at least one rollout worker, got {n}")
        self._requests.append(n)
        self.scale_history.append((time.time(), n))
        st = self._status
        out = {"requested": n, "workers_alive": st.get("workers_alive"),
               "workers_pending": st.get("workers_pending", 0), "phase": st.get("phase")}
        cpus = (st.get("worker_resources") or {}).get("CPU")
        if cpus is not None:  # will the new workers fit in what the cluster has free now?
            from wsrl_dist.runtime.orchestration.placement import scale_note

            out["placement"] = scale_note(n, st.get("workers_alive") or 0, out["workers_pending"], cpus)
        return out

    def take_requests(self) -> list[int]:
        out, self._requests = self._requests, []
        return out

    def set_status(self, status: dict[str, Any]) -> None:
        self._status = {**status, "run_dir": self.run_dir}

    def status(self) -> dict[str, Any]:
        return dict(self._status)


def make_controller(run_dir: str | Path) -> Any:
    """Start the job's named JobController on this (the driver's) node."""
    name = controller_name(str(run_dir))
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    opts = dict(name=name, namespace=NAMESPACE, num_cpus=0, scheduling_strategy=here)
    try:
        return ray.remote(JobController).options(**opts).remote(str(run_dir))
    except ValueError:  # a killed driver's controller can outlive it for a moment
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        time.sleep(1.0)
        return ray.remote(JobController).options(**opts).remote(str(run_dir))


def controller_name(run_dir: str) -> str:
    return PREFIX + str(run_dir).rstrip("/").rsplit("/", 1)[-1]


def use_token_auth_if_present() -> None:
    """Ray >= 2.52 clusters use token auth by default (`ray start --head` writes ~/.ray/auth_token),
    but a process joining one at an explicit address with RAY_AUTH_MODE unset sends no token
    ('Authentication token is missing or incorrect'; Ray auto-enables it only for address=auto). With the mode unset and a token at hand, use it, as `ray job submit`
    needs too (deploy/ray/job_submit.sh); an explicit RAY_AUTH_MODE is left alone."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or (path.is_file() and path.stat().st_size > 0):
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config at import: refresh it, as Ray's own _enable_token_auth does
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):  # another Ray: the env var alone, read at connect
            pass


def _connect(address: str | None) -> None:
    use_token_auth_if_present()
    if not ray.is_initialized():
        ray.init(address=address or "auto", namespace=NAMESPACE, logging_level="WARNING",
                 log_to_driver=False)


class SeveralJobs(RuntimeError):
    """Several wsrl_dist jobs run on the cluster and none was named: `names` are their run-dir names."""

    def __init__(self, names: list[str]):
        self.names = sorted(names)
        super().__init__(f"several wsrl_dist jobs are running, name one: {', '.join(self.names)}")


def running_jobs(address: str | None) -> list[str]:
    """Run-dir names of the wsrl_dist jobs whose controller is alive on the cluster."""
    _connect(address)
    return sorted(a["name"][len(PREFIX):] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(PREFIX))


def find_controller(address: str | None, job: str | None = None) -> Any:
    """Handle of the job's controller; `job` (run-dir name or path) is needed only when several jobs run."""
    _connect(address)
    if job is not None:
        try:
            return ray.get_actor(controller_name(job), namespace=NAMESPACE)
        except ValueError:
            raise ValueError(f"no running wsrl_dist job {controller_name(job)[len(PREFIX):]!r} on the "
                             f"cluster at {address or 'auto'}; running: {running_jobs(address) or 'none'}") from None
    names = running_jobs(address)
    if not names:
        raise RuntimeError(f"no running wsrl_dist job found on the cluster at {address or 'auto'}")
    if len(names) > 1:
        raise SeveralJobs(names)
    return ray.get_actor(PREFIX + names[0], namespace=NAMESPACE)


def job_address(job: str | None) -> str | None:
    """The Ray address recorded in run.json of the run dir `job` (driver.launch writes it), so that
    `wsrl-dist status RUN_DIR` reaches that job's cluster and not the newest one on this host."""
    if job is None or not (Path(job) / "run.json").is_file():
        return None
    return json.loads((Path(job) / "run.json").read_text()).get("ray_address")


def scale(address: str | None, n: int, job: str | None = None) -> dict[str, Any]:
    """Ask the running job to run `n` rollout workers; returns the request's acknowledgement."""
    return ray.get(find_controller(address, job).scale.remote(n))


def status(address: str | None, job: str | None = None) -> dict[str, Any]:
    """The job's latest status: stage with progress and ETA, phase, env steps/s, updates/s, UTD
    actual/target, replay sizes, policy lag, workers alive (see monitor.Monitor.status)."""
    return ray.get(find_controller(address, job).status.remote())


def status_command(address: str | None, job: str | None, as_json: bool, out=sys.stdout) -> int:
    """`wsrl-dist status [RUN_DIR|NAME] [--json]`: the summary (runtime/instrumentation/progress.py format_status) or
    the raw record. With several jobs running and none named it lists them and asks which (on a
    terminal), or names them and exits 2."""
    from wsrl_dist.runtime.instrumentation.progress import format_status

    address = address or job_address(job) or "auto"
    try:
        st = status(address, job)
    except SeveralJobs as e:
        if not sys.stdin.isatty():
            print(f"wsrl-dist status: {e}\n  e.g. wsrl-dist status {e.names[0]}", file=sys.stderr)
            return 2
        for i, name in enumerate(e.names, 1):
            print(f"  {i}) {name}", file=out)
        pick = input(f"several wsrl_dist jobs are running; which one [1-{len(e.names)}]? ").strip()
        if not pick.isdigit() or not 1 <= int(pick) <= len(e.names):
            print(f"wsrl-dist status: no job {pick!r}", file=sys.stderr)
            return 2
        job = e.names[int(pick) - 1]
        st = status(address, job)
    except (RuntimeError, ValueError, ConnectionError) as e:
        print(f"wsrl-dist status: {e}", file=sys.stderr)
        return 1
    st["job"] = controller_name(st.get("run_dir") or job or "")[len(PREFIX):]
    print(json.dumps(st, indent=2, default=str) if as_json else format_status(st), file=out)
    return 0
