"""Every test runs on 2 shared CPU cores in CI: one torch intra-op thread avoids oversubscription
(tiny nets become ~100x slower when two torch threads fight other processes for the cores). The local
Ray of tests/runtime/conftest.py's `ray_local` is shared by consecutive modules that ask for it."""

from __future__ import annotations

import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test():
    """A job a runtime test ran in a background thread (tests/runtime/conftest.py BackgroundJob)
    and left running, because the test failed before joining it, is stopped here, before the
    next module's Ray shutdown can pull Ray out from under it (that crashed pytest once)."""
    yield
    helpers = sys.modules.get("tests.runtime.conftest")
    if helpers is not None and helpers.BackgroundJob.live:
        stuck = helpers.stop_background_jobs()
        if stuck:
            pytest.fail(f"jobs still running after an interrupt: {stuck}", pytrace=False)


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never imported: nothing to stop
    return ray is not None and ray.is_initialized()


@pytest.fixture(scope="module", autouse=True)
def _no_shared_ray_unless_asked(request):
    """A module none of whose tests asks for `ray_local` runs with no Ray in this process, as when
    every module started and stopped its own: it may start one of another shape, or check that
    `launch` starts one. (Autouse: set up before the module's own fixtures.)"""
    mine = [i for i in request.session.items if i.getparent(pytest.Module) is request.node]
    if _ray_running() and not any("ray_local" in i.fixturenames for i in mine):
        sys.modules["ray"].shutdown()
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_ray_at_the_end():
    yield
    if _ray_running():
        sys.modules["ray"].shutdown()
