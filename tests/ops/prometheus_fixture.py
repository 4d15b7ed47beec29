"""A real Prometheus server for tests (Debian's `prometheus` binary), scraping given targets every 1 s.

Reusable from any layer: `from tests.ops.prometheus_fixture import start_prometheus, prometheus_binary`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def prometheus_binary() -> str | None:
    """Path of the prometheus server binary, or None if it is not installed."""
    found = shutil.which("prometheus")
    if found:
        return found
    return "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusHandle:
    """A running Prometheus process; `query` runs an instant PromQL query against its HTTP API."""

    def __init__(self, proc: subprocess.Popen, port: int, tmp: tempfile.TemporaryDirectory) -> None:
        self.proc, self.port, self._tmp = proc, port, tmp
        self.url = f"http://127.0.0.1:{port}"

    def _get(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read().decode())

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the `result` vector: [{"metric": {...}, "value": [ts, "str"]}, ...]."""
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {expr!r} failed: {body}")
        return body["data"]["result"]

    def query_value(self, expr: str) -> float | None:
        """The value of a query returning one sample, or None when it returns none yet."""
        res = self.query(expr)
        if not res:
            return None
        if len(res) != 1:
            raise AssertionError(f"{expr!r} returned {len(res)} series, expected 1: {res}")
        return float(res[0]["value"][1])

    def wait_for(self, expr: str, pred: Callable[[float], bool], timeout: float = 30.0) -> float:
        """Poll `expr` until `pred(value)` holds; raises TimeoutError with the last value seen."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            self._check_alive()
            last = self.query_value(expr)
            if last is not None and pred(last):
                return last
            time.sleep(0.25)
        raise TimeoutError(f"{expr!r} never satisfied the predicate in {timeout} s; last value {last}")

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets")["data"]["activeTargets"]

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        p = Path(self._tmp.name) / "prometheus.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._tmp.cleanup()


def start_prometheus(targets: list[str], scrape_interval: str = "1s",
                     ready_timeout: float = 30.0) -> PrometheusHandle:
    """Start Prometheus on 127.0.0.1 (free port, temp storage) scraping `targets` ("host:port")
    as job "wsrl"; returns once it reports ready. Raises FileNotFoundError if not installed."""
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError("prometheus binary not found (apt-get install -y prometheus)")
    tmp = tempfile.TemporaryDirectory(prefix="wsrl-prom-")
    cfg = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": "wsrl", "static_configs": [{"targets": list(targets)}]}],
    }
    cfg_path = Path(tmp.name) / "prometheus.yml"
    cfg_path.write_text(json.dumps(cfg))  # JSON is YAML
    for _attempt in range(3):  # the free port can be taken between probing and binding
        port = _free_port()
        logf = open(Path(tmp.name) / "prometheus.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [binary, f"--config.file={cfg_path}", f"--storage.tsdb.path={Path(tmp.name) / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=logf, stderr=subprocess.STDOUT,
        )
        logf.close()
        handle = PrometheusHandle(proc, port, tmp)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{handle.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return handle
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        tail = handle.log_tail()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
            tmp.cleanup()
            raise TimeoutError(f"prometheus not ready in {ready_timeout} s: {tail}")
        if "address already in use" not in tail:
            tmp.cleanup()
            raise RuntimeError(f"prometheus exited with {proc.returncode}: {tail}")
    tmp.cleanup()
    raise RuntimeError("prometheus could not bind a free port in 3 attempts")
