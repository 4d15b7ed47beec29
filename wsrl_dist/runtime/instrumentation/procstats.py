"""ProcessStats: what the learner's own process spends besides its loop (CPU, garbage collection,
the grant calls it answers), so a slowdown of the whole loop can be told apart from slower parts.

Why: on the H200 job (BENCHMARKS.md, 2026-11-30) every part of the learner loop got 1.3-1.5x slower
at once after ~100k env steps while the GPU bundle did not; the loop's time split cannot say whether
the process was starved of CPU, paused by the garbage collector or busy answering the 14 workers'
grant polls. These cumulative counters can (read their differences between throughput lines).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any


class _GcTimer:
    """Process-wide GC pause time and collections per generation: one gc callback per process, however
    many learners (a multi-seed learner holds one per seed) read it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started: float | None = None
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        # runs inside the collector, on whichever thread triggered it: keep it allocation-light
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.collections[info.get("generation", 0)] += 1
            self._started = None


_GC: _GcTimer | None = None
_GC_LOCK = threading.Lock()


def _gc_timer() -> _GcTimer:
    global _GC
    with _GC_LOCK:
        if _GC is None:
            _GC = _GcTimer()
        return _GC


class ProcessStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gc = _gc_timer()
        self._gc0 = (self._gc.seconds, list(self._gc.collections))
        self._cpu0 = time.process_time()
        self.grant_calls = 0
        self.grant_refusals = 0  # calls answered with 0 env steps (the worker backs off and asks again)

    def count_grant(self, granted: int) -> None:
        with self._lock:
            self.grant_calls += 1
            self.grant_refusals += granted == 0

    def snapshot(self) -> dict[str, Any]:
        """Cumulative since construction: CPU seconds of all the process's threads, GC pause
        seconds and collections per generation, grant calls and refusals; live thread count."""
        with self._lock:
            calls, refusals = self.grant_calls, self.grant_refusals
        gc_s, gc_n = self._gc0
        return {"cpu_seconds": time.process_time() - self._cpu0, "gc_seconds": self._gc.seconds - gc_s,
                "gc_collections": [n - n0 for n, n0 in zip(self._gc.collections, gc_n)],
                "grant_calls": calls, "grant_refusals": refusals, "threads": threading.active_count()}
