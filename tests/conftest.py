"""Every test runs on 2 shared CPU cores in CI: one torch intra-op thread avoids oversubscription
(tiny nets become ~100x slower when two torch threads fight other processes for the cores)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
