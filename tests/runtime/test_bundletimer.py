"""BundleTimer: sampled device time per bundle and the device-busy share (runtime/instrumentation/bundletimer.py)."""

import time

import pytest
import torch

from wsrl_dist.runtime.instrumentation.bundletimer import BundleTimer


def test_cpu_samples_every_nth_bundle_and_busy_share():
    timer = BundleTimer(torch.device("cpu"), every=2)
    for i in range(6):
        timer.start()
        time.sleep(0.02 if i % 2 else 0.0)  # only the timed (even-numbered) calls sleep
        timer.stop()
        time.sleep(0.02)  # the "loop" around the bundle: the device idles
    assert timer.samples == 3
    assert 18.0 <= timer.mean_ms <= 60.0
    # 6 bundles of ~20 ms device time in ~6 x 30 ms of wall time (first start to now)
    assert 0.3 <= timer.busy() <= 1.0


def test_nothing_sampled_reads_zero():
    timer = BundleTimer(torch.device("cpu"), every=50)
    for _ in range(10):
        timer.start()
        timer.stop()
    assert timer.samples == 0 and timer.mean_ms == 0.0 and timer.busy() == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events need a GPU")
def test_cuda_events_time_queued_work_without_blocking():
    timer = BundleTimer(torch.device("cuda"), every=1)
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(4):
        timer.start()
        for _ in range(20):
            x = torch.tanh(x @ x)
        timer.stop()
    torch.cuda.synchronize()
    timer.poll()
    assert timer.samples == 4 and timer.mean_ms > 0.0


def test_a_group_of_bundles_counts_as_that_many_bundles():
    """runtime.replay_groups launches 4 bundles as one call: a sampled call's time is 4 bundles'."""
    timer = BundleTimer(torch.device("cpu"), every=6)
    for _ in range(3):  # bundles 1-4, 5-8 (crosses 6: sampled), 9-12 (crosses 12: sampled)
        timer.start(4)
        time.sleep(0.04)
        timer.stop()
    assert timer.samples == 8
    assert 8.0 <= timer.mean_ms <= 30.0  # ~40 ms per call / 4 bundles
