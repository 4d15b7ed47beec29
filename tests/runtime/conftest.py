"""Shared pieces of the runtime tests: a tiny job config, a local Ray shared by the modules that ask for it, and helpers to
drive a job from a background thread while the test pokes at it (scale, kill, status)."""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wsrl_dist.config import RunConfig, load

TINY = [
    "task.name=inverted-pendulum-v5", "finetune.method=sac_scratch", "pretrain.algo=none",
    "net.actor_hidden=[32,32]", "net.critic_hidden=[32,32]", "sac.critic_ensemble_size=4",
    "sac.batch_size=32", "finetune.replay_capacity=20000", "finetune.eval_episodes=1",
    "runtime.worker_cpus=0.5", "runtime.metrics_port=0", "runtime.monitor_interval=0.5",
    "runtime.chunk_size=16", "run.progress=false", "run.log_every=100", "run.device=cpu",
]


def tiny_config(run_dir: Path, *overrides: str) -> RunConfig:
    return load(overrides=[*TINY, f"run.run_dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (4 logical CPUs on the 2-core machine) kept for the next module that asks for it:
    a Ray start costs 5-15 s on 2 busy cores. tests/conftest.py stops it before any module that does
    not ask for it (those start their own Ray, or check that none runs) and at the end of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    return ray.get_runtime_context().gcs_address


class BackgroundJob:
    """`driver.launch` in a thread; `wait_for(pred)` polls the job's status from this thread.

    A job still running when its test ends is stopped there (`stop_background_jobs`, from
    tests/conftest.py): left running, it went on inside the pytest process, and the next module's
    Ray shutdown under it crashed pytest with no summary (CI, session 10)."""

    live: list[BackgroundJob] = []

    def __init__(self, cfg: RunConfig, launch: Callable[..., Path] | None = None):
        from wsrl_dist.runtime.orchestration import driver

        self.cfg, self.result, self.error = cfg, None, None
        self.statuses: list[dict[str, Any]] = []
        fn = launch or (lambda: driver.launch(cfg, "pytest"))
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()
        BackgroundJob.live.append(self)

    def _run(self, fn) -> None:
        try:
            self.result = fn()
        except BaseException as e:  # surfaced by join()
            self.error = e

    def status(self) -> dict[str, Any]:
        from wsrl_dist.runtime.orchestration import driver

        st = driver.status(None, job=Path(self.cfg.run.run_dir).name)
        self.statuses.append(st)
        return st

    def wait_for(self, pred: Callable[[dict], bool], timeout: float = 120.0) -> dict[str, Any]:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.error is not None:
                raise self.error
            try:
                st = self.status()
            except ValueError:  # the controller is not registered yet
                st = {}
            if st and pred(st):
                return st
            time.sleep(0.25)
        raise TimeoutError(f"condition not reached in {timeout} s; last status: {self.statuses[-1:]}")

    def join(self, timeout: float = 300.0) -> Path:
        self.thread.join(timeout)
        if self.thread.is_alive():  # where it hangs, then stop it as Ctrl-C would
            where = self.stack()
            stopped = self.stop()
            raise TimeoutError(f"job did not finish in {timeout:.0f} s (then {'stopped' if stopped else 'did not stop'}"
                               f" on an interrupt); its thread was at:\n{where}")
        if self.error is not None:
            raise self.error
        return self.result

    def stack(self) -> str:
        frame = sys._current_frames().get(self.thread.ident)
        return "".join(traceback.format_stack(frame)) if frame is not None else "(thread gone)"

    def stop(self, timeout: float = 60.0) -> bool:
        """Interrupt the job as Ctrl-C does (KeyboardInterrupt in its thread: Job.run's stop path,
        with its checkpoint and teardown); True once the thread has ended."""
        if self.thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident),
                                                       ctypes.py_object(KeyboardInterrupt))
            self.thread.join(timeout)
        return not self.thread.is_alive()


def stop_background_jobs() -> list[str]:
    """Stop the jobs a test left running; the run dirs of those that would not stop."""
    stuck = [str(bg.cfg.run.run_dir) for bg in BackgroundJob.live if not bg.stop()]
    BackgroundJob.live.clear()
    return stuck


def read_records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def run_json(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "run.json").read_text())
