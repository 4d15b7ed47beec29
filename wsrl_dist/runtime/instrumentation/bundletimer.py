"""BundleTimer: how long update bundles take ON the device, measured without stalling the learner.

The learner's time split (wall seconds of its loop) cannot tell a GPU-bound loop from a loop-bound
one: CUDA launches are asynchronous, so waiting on a busy GPU shows up wherever the host happens to
block. Every `every`-th bundle is bracketed by two CUDA events; their elapsed time is read once the
end event has completed (query, never synchronize). Then

    device_busy = bundles/s (wall) * device seconds per bundle

is ~1 when the device is the bottleneck and well below 1 when the host loop around it is. On a CPU
device the bundle runs synchronously, so the wall time of the call is its device time.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import torch


class BundleTimer:
    def __init__(self, device: torch.device, every: int = 50, max_pending: int = 8):
        self.cuda = device.type == "cuda"
        self.every = max(1, int(every))
        self.max_pending = max_pending
        self._calls = 0
        self._open: tuple | None = None  # (start event | perf_counter) of the bundle being timed
        self._pending: deque = deque()  # (start, end) event pairs whose end may not have completed
        self._lock = threading.Lock()  # poll() runs in the training thread and in stats() callers
        self._first: float | None = None  # wall clock at the first call (after any compilation)
        self.samples = 0
        self.seconds = 0.0  # summed device seconds of the sampled bundles

    def start(self, n: int = 1) -> None:
        """Call right before a bundle (or a group of `n` launched as one call) is launched (after it
        was built: compilation is not timed)."""
        if self._first is None:
            self._first = time.perf_counter()
        before = self._calls
        self._calls += n
        if before // self.every == self._calls // self.every or len(self._pending) >= self.max_pending:
            self._open = None
            return
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._open = (ev, n)
        else:
            self._open = (time.perf_counter(), n)

    def stop(self) -> None:
        """Call right after the bundle was launched (on CUDA: queued on the current stream)."""
        if self._open is None:
            return
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._open[0], end, self._open[1]))
        else:
            with self._lock:
                self.samples += self._open[1]
                self.seconds += time.perf_counter() - self._open[0]
        self._open = None
        self.poll()

    def poll(self) -> None:
        """Fold in every timed bundle that has finished on the device (non-blocking)."""
        with self._lock:
            while self._pending and self._pending[0][1].query():
                start, end, n = self._pending.popleft()
                self.samples += n
                self.seconds += start.elapsed_time(end) / 1000.0

    @property
    def mean_ms(self) -> float:
        """Device milliseconds per bundle over the samples so far (0.0 before the first)."""
        return 1000.0 * self.seconds / self.samples if self.samples else 0.0

    def busy(self) -> float:
        """Device busy fraction since the first bundle: bundles/s x device seconds per bundle."""
        if self._first is None or not self.samples:
            return 0.0
        elapsed = time.perf_counter() - self._first
        return self._calls * (self.seconds / self.samples) / elapsed if elapsed > 0 else 0.0
