"""ProcessStats counts what it claims: CPU seconds, GC pauses per generation, grant calls/refusals."""

from __future__ import annotations

import gc

from wsrl_dist.runtime.instrumentation.procstats import ProcessStats


def test_counts_cpu_gc_and_grants():
    stats = ProcessStats()
    before = stats.snapshot()
    sum(i * i for i in range(300_000))  # some CPU
    gc.collect(2)
    gc.collect(0)
    for granted in (8, 0, 0, 4):
        stats.count_grant(granted)
    after = stats.snapshot()
    assert after["cpu_seconds"] > before["cpu_seconds"]
    assert after["gc_collections"][2] >= before["gc_collections"][2] + 1
    assert after["gc_collections"][0] >= before["gc_collections"][0] + 1
    assert after["gc_seconds"] > before["gc_seconds"]
    assert (after["grant_calls"], after["grant_refusals"]) == (4, 2)
    assert after["threads"] >= 1
    again = ProcessStats()  # a second learner in the process (multi-seed): one gc callback still
    assert sum(1 for cb in gc.callbacks if getattr(cb, "__self__", None) is stats._gc) == 1
    assert again._gc is stats._gc and again.snapshot()["grant_calls"] == 0  # own counters, shared GC timer


def test_monitor_exports_the_learner_process_counters():
    """Learner stats -> Monitor -> Prometheus snapshot and metrics.jsonl throughput record."""
    from wsrl_dist.ops.metrics import metric_families
    from wsrl_dist.runtime.instrumentation.monitor import Monitor

    class _Task:  # the monitor reads only this of the task
        has_ref_scores = False

    mon = Monitor(4, 100, _Task())
    shard = {"env_steps": 500, "recent_returns": [], "size": 500, "inserts": 500, "samples": 0,
             "rejected": {}, "env_steps_by_worker": {0: 500}}
    proc = {"cpu_seconds": 3.5, "gc_seconds": 0.02, "gc_collections": [9, 1, 0], "grant_calls": 40,
            "grant_refusals": 30, "threads": 12}
    split = {"limiter_wait": 0.5, "sample_wait": 0.25, "assemble_to_device": 1.0, "update_launch": 2.0,
             "publish": 0.125}
    mon.update(phase="online", learner={"critic_updates": 80, "process": proc, "time_split_s": split},
               shards=[shard], workers={},
               alive={}, store_version=3, restarts=0, dropped=0, workers_target=1, now=10.0)
    snap = mon.snapshot()
    assert snap["learner_cpu_seconds"] == 3.5 and snap["learner_gc_seconds"] == 0.02
    assert snap["learner_grant_calls"] == {"granted": 10, "refused": 30}
    names = {f.name for f in metric_families(snap, strict=True)}
    assert snap["learner_loop_seconds"] == split  # the loop's time split, by part
    assert {"wsrl_learner_cpu_seconds", "wsrl_learner_grant_calls", "wsrl_learner_loop_seconds"} <= names
    assert mon.throughput_record()["learner_process"] == proc
