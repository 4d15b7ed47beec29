"""ProcessStats counts what it claims: CPU seconds, GC pauses per generation, grant calls/refusals."""

from __future__ import annotations

import gc

from wsrl_dist.runtime.procstats import ProcessStats


def test_counts_cpu_gc_and_grants():
    stats = ProcessStats()
    try:
        before = stats.snapshot()
        sum(i * i for i in range(300_000))  # some CPU
        gc.collect(2)
        gc.collect(0)
        for granted in (8, 0, 0, 4):
            stats.count_grant(granted)
        after = stats.snapshot()
    finally:
        stats.close()
    assert after["cpu_seconds"] > before["cpu_seconds"]
    assert after["gc_collections"][2] >= before["gc_collections"][2] + 1
    assert after["gc_collections"][0] >= before["gc_collections"][0] + 1
    assert after["gc_seconds"] > before["gc_seconds"]
    assert (after["grant_calls"], after["grant_refusals"]) == (4, 2)
    assert after["threads"] >= 1
    assert stats._on_gc not in gc.callbacks  # closed: no callback left behind
