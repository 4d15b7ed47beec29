"""A real Prometheus server scrapes MetricsServer while a real env loop drives the snapshot."""

from __future__ import annotations

import math
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.ops.prometheus_fixture import prometheus_binary, start_prometheus
from wsrl_dist.ops.metrics import SECONDS_BUCKETS, Histogram, MetricsServer

pytestmark = pytest.mark.skipif(prometheus_binary() is None,
                                reason="prometheus not installed (apt-get install -y prometheus)")

N_STEPS = 2400
UPDATE_EVERY = 2  # one critic update per 2 env steps -> UTD 0.5


class PendulumLoop:
    """Steps Pendulum-v1 with random actions; every UPDATE_EVERY steps does one SGD step of a linear
    reward regressor (a stand-in critic) and publishes a fresh snapshot dict every 100 steps."""

    def __init__(self) -> None:
        self.snapshot: dict = {"phase": "warmup", "env_steps_total": 0, "utd_target": 0.5}
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.started.wait()
            env = gym.make("Pendulum-v1")
            obs, _ = env.reset(seed=0)
            rng = np.random.default_rng(0)
            critic = torch.nn.Linear(4, 1)
            opt = torch.optim.SGD(critic.parameters(), lr=1e-3)
            step_hist = Histogram(SECONDS_BUCKETS)
            steps = updates = 0
            t0 = time.monotonic()
            while steps < N_STEPS:
                act = rng.uniform(-2.0, 2.0, size=(1,)).astype(np.float32)
                nobs, rew, term, trunc, _ = env.step(act)
                x = torch.as_tensor(np.concatenate([obs, act])[None], dtype=torch.float32)
                steps += 1
                if steps % UPDATE_EVERY == 0:
                    ts = time.perf_counter()
                    loss = (critic(x).squeeze() - float(rew)) ** 2
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    step_hist.observe(time.perf_counter() - ts)
                    updates += 1
                obs = env.reset()[0] if (term or trunc) else nobs
                time.sleep(0.001)  # spread the run over a few scrapes
                if steps % 100 == 0:
                    dt = time.monotonic() - t0
                    # Replace, never mutate: the exporter thread may be reading the old dict.
                    self.snapshot = {
                        "phase": "online" if steps < N_STEPS else "done",
                        "env_steps_total": steps,
                        "env_steps_per_second": steps / dt,
                        "critic_updates_total": updates,
                        "critic_updates_per_second": updates / dt,
                        "utd_actual": updates / steps,
                        "utd_target": 0.5,
                        "learner_step_seconds": step_hist.to_dict(),
                        # the stage line's fields (runtime/instrumentation/progress.py): the online stage's share, rate, ETA
                        "stage": "online" if steps < N_STEPS else "done",
                        "stage_progress": steps / N_STEPS, "stage_steps_per_second": steps / dt,
                        "stage_eta_seconds": (N_STEPS - steps) / (steps / dt),
                    }
            env.close()
        except BaseException as e:  # surfaced by the test
            self.error = e


def test_real_prometheus_reads_back_env_rate_and_utd_from_a_running_loop():
    loop = PendulumLoop()
    server = MetricsServer(lambda: loop.snapshot)
    host, port = server.start()
    prom = start_prometheus([f"{host}:{port}"])
    try:
        loop.thread.start()
        # Let Prometheus see the pre-loop snapshot first, so the series must show progress.
        prom.wait_for('up{job="wsrl"}', lambda v: v == 1.0, timeout=15)
        prom.wait_for("wsrl_env_steps_total", lambda v: v == 0.0, timeout=10)
        loop.started.set()
        prom.wait_for("wsrl_env_steps_total", lambda v: v == N_STEPS, timeout=30)
        assert loop.error is None, loop.error
        final = loop.snapshot
        assert final["env_steps_total"] == N_STEPS and final["phase"] == "done"

        eps = prom.query_value("wsrl_env_steps_per_second")
        assert eps == pytest.approx(final["env_steps_per_second"], rel=1e-12)
        assert 0 < eps < 1100  # the loop sleeps 1 ms per step
        assert prom.query_value("wsrl_utd_actual") == pytest.approx(0.5, abs=1e-12)
        assert prom.query_value("wsrl_utd_actual / wsrl_utd_target") == pytest.approx(1.0)
        assert prom.query_value('wsrl_phase{phase="done"}') == 1.0
        assert prom.query_value('wsrl_phase{phase="online"}') == 0.0
        assert prom.query_value('wsrl_stage{stage="done"}') == 1.0
        assert prom.query_value('wsrl_stage{stage="online"}') == 0.0
        assert prom.query_value("wsrl_stage_progress") == 1.0 and prom.query_value("wsrl_stage_eta_seconds") == 0.0
        assert prom.query_value("wsrl_stage_steps_per_second") == pytest.approx(eps, rel=1e-12)
        # the progress went up between scrapes
        assert prom.query_value("min_over_time(wsrl_stage_progress[5m])") < 1.0
        # The counter moved between scrapes: Prometheus stored more than the start and end values.
        assert prom.query_value("changes(wsrl_env_steps_total[5m])") >= 1
        assert prom.query_value("min_over_time(wsrl_env_steps_total[5m])") == 0.0
        # Histograms are accepted as such: quantiles come out inside the bucket range.
        med = prom.query_value("histogram_quantile(0.5, wsrl_learner_step_seconds_bucket)")
        assert med is not None and math.isfinite(med) and 0 < med <= SECONDS_BUCKETS[-1]
        assert prom.query_value("wsrl_learner_step_seconds_count") == N_STEPS // UPDATE_EVERY
    finally:
        loop.started.set()
        prom.stop()
        server.stop()
        loop.thread.join(timeout=30)
    assert prom.proc.returncode is not None
