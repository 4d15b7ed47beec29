"""Histogram accumulator arithmetic, metric naming, and the exporter's text output."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import wsrl_dist.ops.metrics as m
from wsrl_dist.ops.metrics import (
    METRIC_NAMES,
    METRICS,
    POLICY_LAG_BUCKETS,
    SECONDS_BUCKETS,
    STAGES,
    Histogram,
    MetricsServer,
    metric_families,
)


def _scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(fam, name=None) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if name is None or s.name == name}


def test_histogram_bounds_are_inclusive_and_overflow_goes_to_inf():
    h = Histogram([1.0, 2.0, 5.0])
    h.observe(1.0)  # on the bound -> le=1 bucket
    h.observe(np.array([0.5, 1.5, 2.0, 4.0, 7.0, 100.0]))
    d = h.to_dict()
    assert d["buckets"] == [1.0, 2.0, 5.0]
    assert d["counts"] == [2, 2, 1, 2]  # (<=1), (1,2], (2,5], (5,inf)
    assert d["count"] == 7
    assert d["sum"] == pytest.approx(1.0 + 0.5 + 1.5 + 2.0 + 4.0 + 7.0 + 100.0)


def test_histogram_observe_accepts_any_shape_and_ignores_empty():
    h = Histogram(POLICY_LAG_BUCKETS)
    h.observe(np.zeros((3, 4), dtype=np.int64))
    h.observe([])
    assert h.count == 12 and h.counts[0] == 12 and h.sum == 0.0


def test_histogram_merge_adds_counts_sums_and_roundtrips_through_dict():
    rng = np.random.default_rng(0)
    a_vals, b_vals = rng.exponential(0.05, 500), rng.exponential(0.5, 300)
    a, b, both = Histogram(SECONDS_BUCKETS), Histogram(SECONDS_BUCKETS), Histogram(SECONDS_BUCKETS)
    a.observe(a_vals)
    b.observe(b_vals)
    both.observe(np.concatenate([a_vals, b_vals]))
    merged = Histogram.from_dict(a.to_dict()).merge(b.to_dict())
    assert merged.to_dict()["counts"] == both.to_dict()["counts"]
    assert merged.count == 800
    assert merged.sum == pytest.approx(both.sum)
    assert merged.merge(Histogram(SECONDS_BUCKETS)).count == 800  # merging a Histogram object works too


def test_histogram_refuses_foreign_buckets_nan_and_bad_bounds():
    h = Histogram([1.0, 2.0])
    with pytest.raises(ValueError, match="cannot merge"):
        h.merge(Histogram([1.0, 3.0]).to_dict())
    with pytest.raises(ValueError, match="NaN"):
        h.observe([1.0, float("nan")])
    with pytest.raises(ValueError):
        Histogram([2.0, 1.0])
    with pytest.raises(ValueError):
        Histogram([])
    assert h.count == 0  # the failed observe added nothing


def test_metric_names_follow_prometheus_conventions_and_cover_every_snapshot_key():
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    for spec in METRICS:
        assert spec.name.startswith("wsrl_"), spec.name
        assert spec.name == spec.name.lower()
        assert spec.name.endswith("_total") == (spec.type == "counter"), spec.name
        if spec.type == "histogram":
            assert spec.buckets is not None
        assert spec.key in m.__doc__, f"snapshot key {spec.key} not documented"
    documented = ["phase", "env_steps_total", "env_steps_by_worker", "env_steps_per_second",
                  "critic_updates_total", "critic_updates_per_second", "utd_actual", "utd_target",
                  "limiter_blocked_seconds", "replay", "rejected_chunks", "policy_lag",
                  "weight_publish_seconds", "weights_version", "worker_restarts_total", "workers_alive",
                  "workers_pending", "replay_rows_lost_total", "replay_restarts_total",
                  "episode_return", "normalized_score", "learner_step_seconds", "gpu_memory_bytes",
                  "learner_device_busy", "learner_cpu_seconds", "learner_gc_seconds", "learner_grant_calls",
                  "learner_loop_seconds", "stage", "stage_progress", "stage_steps_per_second",
                  "stage_eta_seconds"]
    assert set(documented) == {s.key for s in METRICS}


def full_snapshot() -> dict:
    lag = Histogram(POLICY_LAG_BUCKETS)
    lag.observe([0, 0, 1, 2, 3, 9])
    step = Histogram(SECONDS_BUCKETS)
    step.observe([0.004, 0.006, 0.02])
    return {
        "phase": "online", "env_steps_total": 1000, "env_steps_by_worker": {0: 600, 1: 400},
        "env_steps_per_second": 250.5, "critic_updates_total": 4000, "critic_updates_per_second": 1002.0,
        "utd_actual": 3.9, "utd_target": 4.0, "limiter_blocked_seconds": {"learner": 1.25, "rollout": 0.5},
        "replay": {0: {"size": 500, "inserts": 520, "samples": 90000, "rejected": {"stale_version": 2}},
                   1: {"size": 480, "inserts": 480, "samples": 88000, "rejected": {}}},
        "rejected_chunks": {"stale_version": 2, "bad_shape": 1}, "policy_lag": lag.to_dict(),
        "weight_publish_seconds": step.to_dict(), "weights_version": 17, "worker_restarts_total": 1,
        "replay_rows_lost_total": 30, "replay_restarts_total": 1,
        "workers_alive": 2, "workers_pending": 1, "episode_return": -310.0, "normalized_score": 71.5,
        "learner_step_seconds": step.to_dict(), "gpu_memory_bytes": 123456789,
        "learner_device_busy": 0.93, "learner_cpu_seconds": 12.5, "learner_gc_seconds": 0.25,
        "learner_grant_calls": {"granted": 300, "refused": 1200},
        "learner_loop_seconds": {"limiter_wait": 1.5, "sample_wait": 0.5, "assemble_to_device": 2.0,
                                 "update_launch": 3.0, "publish": 0.25},
        "stage": "online", "stage_progress": 0.25, "stage_steps_per_second": 250.5, "stage_eta_seconds": 12.0,
    }


def test_exporter_serves_every_metric_with_types_labels_and_cumulative_buckets():
    snap = full_snapshot()
    with MetricsServer(lambda: snap) as srv:
        assert srv.port > 0
        fams = _scrape(srv.port)
    # The parser names counter families without `_total`; map back to exposed names.
    exposed = {(f.name + "_total" if f.type == "counter" else f.name): f for f in fams.values()}
    assert set(exposed) == set(METRIC_NAMES)
    for spec in METRICS:
        assert exposed[spec.name].type == spec.type
        assert exposed[spec.name].documentation == spec.help
    assert _samples(exposed["wsrl_env_steps_total"], "wsrl_env_steps_total") == {(): 1000.0}
    assert _samples(exposed["wsrl_worker_env_steps_total"]) == {
        (("worker_id", "0"),): 600.0, (("worker_id", "1"),): 400.0}
    assert _samples(exposed["wsrl_phase"]) == {
        (("phase", "pretrain"),): 0.0, (("phase", "warmup"),): 0.0,
        (("phase", "online"),): 1.0, (("phase", "done"),): 0.0}
    assert _samples(exposed["wsrl_stage"]) == {(("stage", s),): float(s == "online") for s in STAGES}
    assert _samples(exposed["wsrl_stage_progress"]) == {(): 0.25}
    assert _samples(exposed["wsrl_stage_eta_seconds"]) == {(): 12.0}
    assert _samples(exposed["wsrl_limiter_blocked_seconds_total"])[(("side", "learner"),)] == 1.25
    assert _samples(exposed["wsrl_replay_size"]) == {(("shard", "0"),): 500.0, (("shard", "1"),): 480.0}
    assert _samples(exposed["wsrl_replay_rejected_total"]) == {
        (("reason", "stale_version"), ("shard", "0")): 2.0}
    assert _samples(exposed["wsrl_rejected_chunks_total"])[(("reason", "bad_shape"),)] == 1.0
    lag = exposed["wsrl_policy_lag_versions"]
    buckets = {s.labels["le"]: s.value for s in lag.samples if s.name.endswith("_bucket")}
    assert buckets["0.0"] == 2 and buckets["1.0"] == 3 and buckets["3.0"] == 5
    assert buckets["8.0"] == 5 and buckets["12.0"] == 6 and buckets["+Inf"] == 6
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert _samples(lag, "wsrl_policy_lag_versions_count") == {(): 6.0}
    assert _samples(lag, "wsrl_policy_lag_versions_sum") == {(): 15.0}
    assert _samples(exposed["wsrl_learner_grant_calls_total"], "wsrl_learner_grant_calls_total") == {
        (("outcome", "granted"),): 300.0, (("outcome", "refused"),): 1200.0}
    assert _samples(exposed["wsrl_learner_cpu_seconds_total"], "wsrl_learner_cpu_seconds_total") == {(): 12.5}


def test_missing_keys_are_not_exported_and_a_bad_value_drops_only_its_metric():
    assert metric_families({}) == []
    snap = {"env_steps_total": 5, "utd_actual": None,
            "policy_lag": Histogram([1.0, 2.0]).to_dict(),  # foreign buckets
            "phase": "training"}  # not a phase
    names = [f.name for f in metric_families(snap)]
    assert names == ["wsrl_env_steps"]  # prometheus_client stores counters without `_total`
    with pytest.raises(ValueError, match="policy_lag"):
        metric_families({"policy_lag": Histogram([1.0, 2.0]).to_dict()}, strict=True)


def test_a_labelled_server_exports_each_seeds_snapshot_under_a_seed_label():
    one, two = full_snapshot(), {**full_snapshot(), "env_steps_total": 7, "phase": "warmup",
                                 "policy_lag": Histogram([1.0, 2.0]).to_dict()}  # seed 2's lag is bad
    with MetricsServer(lambda: {0: one, 2: two}, label="seed") as srv:
        fams = _scrape(srv.port)
    assert _samples(fams["wsrl_env_steps"], "wsrl_env_steps_total") == {
        (("seed", "0"),): 1000.0, (("seed", "2"),): 7.0}
    assert _samples(fams["wsrl_replay_rejected"], "wsrl_replay_rejected_total") == {
        (("reason", "stale_version"), ("seed", "0"), ("shard", "0")): 2.0,
        (("reason", "stale_version"), ("seed", "2"), ("shard", "0")): 2.0}
    assert _samples(fams["wsrl_phase"])[(("phase", "warmup"), ("seed", "2"))] == 1.0
    lag = _samples(fams["wsrl_policy_lag_versions"], "wsrl_policy_lag_versions_count")
    assert lag == {(("seed", "0"),): 6.0}  # a bad value drops only that seed's series
    assert all("seed" in s.labels for f in fams.values() for s in f.samples)


def test_snapshot_is_read_at_scrape_time():
    state = {"snap": {"env_steps_total": 1}}
    with MetricsServer(lambda: state["snap"]) as srv:
        first = _scrape(srv.port)["wsrl_env_steps"].samples[0].value
        state["snap"] = {"env_steps_total": 2, "workers_alive": 3}
        second = _scrape(srv.port)
    assert first == 1.0
    assert second["wsrl_env_steps"].samples[0].value == 2.0 and "wsrl_workers_alive" in second


def test_server_uses_its_own_registry_and_releases_the_port_on_stop():
    srv = MetricsServer(lambda: {"env_steps_total": 3})
    host, port = srv.start()
    assert host == "127.0.0.1" and port == srv.port
    with pytest.raises(RuntimeError):
        srv.start()
    assert REGISTRY.get_sample_value("wsrl_env_steps_total") is None
    assert srv.registry.get_sample_value("wsrl_env_steps_total") == 3.0
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
