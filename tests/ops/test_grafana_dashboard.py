"""deploy/grafana/wsrl_dist.json: a valid dashboard whose every query names only exported metrics,
and (with a real Prometheus) returns data from a live exporter."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import pytest

from tests.ops.prometheus_fixture import prometheus_binary, start_prometheus
from tests.ops.test_metrics import full_snapshot
from wsrl_dist.ops.metrics import (
    METRIC_NAMES,
    POLICY_LAG_BUCKETS,
    SECONDS_BUCKETS,
    Histogram,
    MetricsServer,
    series_names,
)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "wsrl_dist.json"
METRIC_RE = re.compile(r"\bwsrl_[a-z0-9_]+")
REQUIRED_PANELS = [
    "Throughput", "UTD actual vs target", "Rate limiter blocked time", "Replay size per shard",
    "Replay inserts / samples per shard", "Rejected chunks by reason", "Policy lag (quantiles)",
    "Policy lag histogram", "Weight publish latency", "Worker and replay shard restarts / workers alive / replay rows lost",
    "Episode return", "Normalized score", "Learner step time", "Learner GPU memory",
]


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _query_panels(d: dict) -> list[dict]:
    return [p for p in d["panels"] if p["type"] != "row"]


def _exprs(d: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _query_panels(d) for t in p["targets"]]


def test_dashboard_json_has_the_keys_grafana_needs():
    d = _dashboard()
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "time"):
        assert key in d, key
    assert d["schemaVersion"] >= 36
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"])
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for p in d["panels"]:
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"} and all(isinstance(v, int) and v >= 0 for v in g.values())
        assert g["w"] >= 1 and g["x"] + g["w"] <= 24, p["title"]
    for p in _query_panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
    titles = [p["title"] for p in d["panels"]]
    assert not set(REQUIRED_PANELS) - set(titles)


def test_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for p in _dashboard()["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_every_expr_names_only_exported_metrics_and_every_metric_is_on_the_dashboard():
    allowed = series_names()
    used = set()
    for title, expr in _exprs(_dashboard()):
        names = set(METRIC_RE.findall(expr))
        assert names, f"{title}: {expr!r} names no wsrl_ metric"
        assert names <= allowed, f"{title}: unknown metrics {names - allowed}"
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) if n not in METRIC_NAMES else n for n in names}
    # wsrl_phase, versions etc. all appear somewhere: nothing exported goes unwatched.
    assert set(METRIC_NAMES) <= used, set(METRIC_NAMES) - used


def _grafana_to_promql(expr: str, seed: str = ".*") -> str:
    """A panel's query as Grafana sends it: variables at their All value, or one seed picked."""
    return expr.replace("$__rate_interval", "10s").replace("$job", ".*").replace("$seed", seed)


def test_every_query_filters_on_job_and_seed_variables():
    d = _dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    for name in ("job", "seed"):  # All must be .*: it also matches a single-seed job (no seed label)
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    assert "seed" in variables["seed"]["query"]["query"]
    for title, expr in _exprs(d):
        selectors = re.findall(r"\bwsrl_[a-z0-9_]+(\{[^}]*\})?", expr)
        assert selectors and all('job=~"$job"' in s and 'seed=~"$seed"' in s for s in selectors), title


@pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed (apt-get install -y prometheus)")
def test_every_dashboard_query_returns_data_from_a_live_exporter():
    base = full_snapshot()
    stop = threading.Event()
    state = {"snap": base}

    def drive() -> None:  # counters and histograms move between scrapes, as in a real job
        lag, step = Histogram(POLICY_LAG_BUCKETS), Histogram(SECONDS_BUCKETS)
        i = 0
        while not stop.is_set():
            i += 1
            lag.observe([i % 5, (i * 3) % 7])
            step.observe([0.003 * (1 + i % 4)])
            s = dict(base)
            s.update(env_steps_total=1000 + 50 * i, env_steps_by_worker={0: 600 + 30 * i, 1: 400 + 20 * i},
                     critic_updates_total=4000 + 200 * i, policy_lag=lag.to_dict(),
                     learner_step_seconds=step.to_dict(), weight_publish_seconds=step.to_dict(),
                     worker_restarts_total=1 + i // 10, replay_restarts_total=i // 10,
                     replay_rows_lost_total=30 * (i // 10),
                     limiter_blocked_seconds={"learner": 1.25 + 0.05 * i, "rollout": 0.5 + 0.01 * i},
                     rejected_chunks={"stale_version": 2 + i, "bad_shape": 1},
                     learner_cpu_seconds=12.5 + 0.2 * i, learner_gc_seconds=0.25 + 0.001 * i,
                     learner_grant_calls={"granted": 300 + 5 * i, "refused": 1200 + 20 * i},
                     learner_loop_seconds={"limiter_wait": 1.5 + 0.01 * i, "sample_wait": 0.5 + 0.02 * i,
                                           "assemble_to_device": 2.0 + 0.05 * i, "update_launch": 3.0 + 0.1 * i,
                                           "publish": 0.25 + 0.01 * i},
                     replay={0: {"size": 500 + i, "inserts": 520 + 25 * i, "samples": 90000 + 800 * i,
                                 "rejected": {"stale_version": 2 + i}},
                             1: {"size": 480 + i, "inserts": 480 + 25 * i, "samples": 88000 + 800 * i,
                                 "rejected": {}}})
            state["snap"] = s
            stop.wait(0.2)

    server = MetricsServer(lambda: state["snap"])
    host, port = server.start()
    # a multi-seed job beside it: one snapshot per seed under a `seed` label
    seeds = MetricsServer(lambda: {0: {**base, "episode_return": 100.0}, 1: {**base, "episode_return": 300.0}},
                          label="seed")
    seeds_host, seeds_port = seeds.start()
    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    prom = start_prometheus([f"{host}:{port}", f"{seeds_host}:{seeds_port}"])
    try:
        # rate()/increase() need two samples inside the window.
        prom.wait_for("min(count_over_time(wsrl_env_steps_total[10s]))", lambda v: v >= 3, timeout=20)
        pending = {e for _, e in _exprs(_dashboard())}
        deadline = time.monotonic() + 15
        while pending and time.monotonic() < deadline:
            for expr in sorted(pending):
                res = prom.query(_grafana_to_promql(expr))  # raises on a PromQL syntax error
                if any(math.isfinite(float(r["value"][1])) for r in res):
                    pending.discard(expr)
            time.sleep(0.5)
        assert not pending, f"queries with no finite data: {sorted(pending)}"
        # A variable query (label_values) must find the job label.
        assert prom.query('count by (job) (wsrl_env_steps_total{job=~".*"})')[0]["metric"]["job"] == "wsrl"
        # The Episode return panel: one series per seed, the single-seed job's under an empty seed;
        # picking seed 1 leaves only it
        (ret,) = [e for t, e in _exprs(_dashboard()) if t == "Episode return"]
        by_seed = {r["metric"].get("seed", ""): float(r["value"][1]) for r in prom.query(_grafana_to_promql(ret))}
        assert by_seed == {"": base["episode_return"], "0": 100.0, "1": 300.0}
        picked = prom.query(_grafana_to_promql(ret, seed="1"))
        assert [(r["metric"]["seed"], float(r["value"][1])) for r in picked] == [("1", 300.0)]
    finally:
        stop.set()
        prom.stop()
        server.stop()
        seeds.stop()
        thread.join(timeout=5)
