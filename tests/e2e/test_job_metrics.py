"""A running distributed job scraped by a real Prometheus (Debian's server, on loopback): env steps/s
and UTD come back through Prometheus's HTTP API, and every metric the Grafana dashboard queries is
one the live job exports."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from tests.ops.prometheus_fixture import prometheus_binary, start_prometheus
from tests.ops.test_grafana_dashboard import _dashboard, _exprs
from tests.runtime.conftest import BackgroundJob, ray_local, run_json, tiny_config  # noqa: F401

UTD = 2

pytestmark = pytest.mark.skipif(prometheus_binary() is None,
                                reason="prometheus not installed (make test installs it)")


def _exported_names(body: str) -> set[str]:
    names = set()
    for line in body.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_prometheus_reads_throughput_and_utd_of_a_running_job_and_the_dashboard_metrics_exist(
        ray_local, tmp_path):  # noqa: F811
    cfg = tiny_config(tmp_path / "job", "finetune.warmup_steps=100", "finetune.online_steps=4000",
                      "finetune.eval_every=1000", f"sac.utd={UTD}", "runtime.num_workers=2",
                      "run.checkpoint_every=100000")
    bg = BackgroundJob(cfg)
    prom = None
    try:
        bg.wait_for(lambda s: s["phase"] == "online" and s["critic_updates"] > 0, timeout=180)
        url = run_json(cfg.run.run_dir)["metrics_url"]
        assert url.startswith("http://127.0.0.1:"), url  # loopback by default
        prom = start_prometheus([url.split("//", 1)[1].split("/", 1)[0]])
        steps_per_s = prom.wait_for("wsrl_env_steps_per_second", lambda v: v > 0, timeout=60)
        utd = prom.wait_for("wsrl_utd_actual", lambda v: v > 0, timeout=60)
        assert prom.query_value("wsrl_utd_target") == UTD
        # the limiter holds critic updates near utd per online env step; Prometheus sees the same
        assert 0.25 * UTD < utd < 2.0 * UTD, utd
        assert steps_per_s < 1e5
        # the stage series (runtime/instrumentation/progress.py): online, part done, at a rate, with an ETA
        assert prom.wait_for('wsrl_stage{stage="online"}', lambda v: v == 1.0, timeout=30) == 1.0
        assert prom.query_value('wsrl_stage{stage="pretrain"}') == 0.0
        assert 0 < prom.query_value("wsrl_stage_progress") <= 1
        assert prom.wait_for("wsrl_stage_steps_per_second", lambda v: v > 0, timeout=30) > 0
        assert prom.query_value("wsrl_stage_eta_seconds") >= 0
        # counters advance between scrapes of the live job
        first = prom.query_value("wsrl_env_steps_total")
        time.sleep(3)
        assert prom.wait_for("wsrl_env_steps_total", lambda v: v > first, timeout=30) > first

        body = urllib.request.urlopen(url, timeout=10).read().decode()
        exported = _exported_names(body)
        queried = {m for _, expr in _exprs(_dashboard()) for m in re.findall(r"\bwsrl_[a-z_]+", expr)}
        missing = {m for m in queried if m not in exported}
        assert not missing, f"dashboard queries metrics the job does not export: {sorted(missing)}"
    finally:
        if prom is not None:
            prom.stop()
        bg.join(timeout=600)
