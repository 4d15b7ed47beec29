"""Shared pieces of the data tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for module-scoped fixtures too (the root conftest's per-test fixture starts
    after them): tiny matmuls on 2 shared cores are several times faster on one thread than two."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
