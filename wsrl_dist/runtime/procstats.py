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


class ProcessStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gc_started: float | None = None
        self.gc_seconds = 0.0
        self.gc_collections = [0, 0, 0]  # per generation
        self.grant_calls = 0
        self.grant_refusals = 0  # calls answered with 0 env steps (the worker backs off and asks again)
        self._cpu0 = time.process_time()
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        # runs inside the collector, on whichever thread triggered it: keep it allocation-light
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.gc_seconds += time.perf_counter() - self._gc_started
            self.gc_collections[info.get("generation", 0)] += 1
            self._gc_started = None

    def count_grant(self, granted: int) -> None:
        with self._lock:
            self.grant_calls += 1
            self.grant_refusals += granted == 0

    def snapshot(self) -> dict[str, Any]:
        """Cumulative since construction: CPU seconds of all the process's threads, GC pause
        seconds and collections per generation, grant calls and refusals; live thread count."""
        with self._lock:
            calls, refusals = self.grant_calls, self.grant_refusals
        return {"cpu_seconds": time.process_time() - self._cpu0, "gc_seconds": self.gc_seconds,
                "gc_collections": list(self.gc_collections), "grant_calls": calls,
                "grant_refusals": refusals, "threads": threading.active_count()}

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
