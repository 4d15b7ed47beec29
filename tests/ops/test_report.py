"""Run-directory report: MetricsLog lines, plots that decode, and the results table's numbers.

Phase names follow wsrl_dist/local.py. The run is a tiny real computation: Pendulum-v1 episodes under a policy that mixes random actions
with a swing-up controller in a growing share (standing in for learning), a linear reward regressor
as the "critic", and measured step rates. It tests rendering and bookkeeping, not learning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gymnasium as gym
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from wsrl_dist.ops.report import MetricsLog, read_metrics, summarize, write_report

R_RANDOM, R_EXPERT = -1200.0, -150.0  # Pendulum-v1 reference returns for the normalized score
WARMUP, TOTAL, EVAL_EVERY = 1000, 6000, 1000


def _controller(obs: np.ndarray) -> np.ndarray:
    c, s, td = obs
    u = -12.0 * np.arctan2(s, c) - 2.0 * td if c > 0.85 else (2.0 * np.sign(td) if 0.5 * td**2 + 10 * (c - 1) < 0 else 0.0)
    return np.clip([u], -2.0, 2.0).astype(np.float32)


def _act(obs, p, rng):
    return _controller(obs) if rng.random() < p else rng.uniform(-2, 2, 1).astype(np.float32)


def _evaluate(p: float, seed: int, episodes: int = 2) -> tuple[float, float]:
    env, rng, rets = gym.make("Pendulum-v1"), np.random.default_rng(seed), []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 100 + ep)
        done, ret = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(_act(obs, p, rng))
            ret, done = ret + float(r), term or trunc
        rets.append(ret)
    env.close()
    return float(np.mean(rets)), float(np.std(rets))


def _skill(steps: int) -> float:
    return 0.5 if steps == 0 else min(1.0, 0.3 + 0.7 * (steps - WARMUP) / (TOTAL - WARMUP))


def _run(run_dir: Path, normalized: bool, dataset_note: str | None) -> list[dict]:
    run = {"command": "wsrl-dist train configs/wsrl.yaml --set task.name=pendulum --set run.seed=3",
           "config_hash": "0123456789ab", "task": "Pendulum-v1", "warmup_steps": WARMUP, "seed": 3,
           "utd_target": 1.0}
    if dataset_note:
        run["dataset_note"] = dataset_note
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "config.yaml").write_text("task:\n  name: Pendulum-v1\n")
    env, rng = gym.make("Pendulum-v1"), np.random.default_rng(0)
    critic = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(critic.parameters(), lr=1e-3)
    evals = []
    with MetricsLog(run_dir) as mlog:

        def evaluate(steps: int, phase: str) -> None:
            mean, std = _evaluate(_skill(steps), seed=steps)
            ns = 100 * (mean - R_RANDOM) / (R_EXPERT - R_RANDOM) if normalized else None
            rec = dict(env_steps=steps, phase=phase, return_mean=mean, return_std=std, normalized_score=ns,
                       success_rate=None)
            evals.append(rec)
            mlog.write("eval", **rec)

        evaluate(0, "pretrained")
        obs, _ = env.reset(seed=0)
        steps = updates = 0
        window_t, window_s, window_u = time.perf_counter(), 0, 0
        while steps < TOTAL:
            a = _act(obs, _skill(max(steps, WARMUP)), rng)
            nobs, r, term, trunc, _ = env.step(a)
            steps += 1
            window_s += 1
            if steps > WARMUP:  # warmup collects data without updates, as WSRL does
                x = torch.as_tensor(np.concatenate([obs, a])[None], dtype=torch.float32)
                loss = (critic(x).squeeze() - float(r) / 100) ** 2
                opt.zero_grad()
                loss.backward()
                opt.step()
                updates += 1
                window_u += 1
            obs = env.reset()[0] if (term or trunc) else nobs
            if steps % 500 == 0:
                dt = time.perf_counter() - window_t
                mlog.write("throughput", env_steps=steps, env_steps_per_second=window_s / dt,
                           critic_updates_per_second=window_u / dt, utd_actual=window_u / window_s)
                if steps > WARMUP:
                    q = float(critic(x).detach().item())
                    mlog.write("train", env_steps=steps, critic_updates=updates, critic_loss=float(loss.detach()),
                               actor_loss=-q, temperature=float(np.exp(-steps / 3000)), q_mean=q)
                window_t, window_s, window_u = time.perf_counter(), 0, 0
            if steps % EVAL_EVERY == 0:
                evaluate(steps, "after_warmup" if steps == WARMUP else "online")
    env.close()
    return evals


def _table(md: str) -> dict[str, str]:
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3:
            rows[cells[0]] = cells[1]
    return rows


def _png_ok(path: Path) -> None:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas


def test_report_from_a_real_pendulum_run_has_plots_and_the_right_numbers(tmp_path: Path):
    evals = _run(tmp_path, normalized=True, dataset_note="built by our SAC recipe (no D4RL file)")
    paths = write_report(tmp_path)
    assert set(paths) == {"learning_curve", "throughput", "results"}
    for key in ("learning_curve", "throughput"):
        assert paths[key].stat().st_size > 10_000
        _png_ok(paths[key])
    md = paths["results"].read_text()
    rows = _table(md)
    ns = [e["normalized_score"] for e in evals]
    after = next(e for e in evals if e["phase"] == "after_warmup")
    assert after["env_steps"] == WARMUP
    assert rows["Pre-trained score"].startswith(f"{ns[0]:.2f} ")
    assert rows["Score after warmup"].startswith(f"{after['normalized_score']:.2f} ")
    assert rows["Final score"].startswith(f"{ns[-1]:.2f} ")
    assert rows["Best score"].startswith(f"{max(ns):.2f} ")
    assert rows["Env steps"] == f"{TOTAL:,}"
    assert rows["Wall time"].endswith(" s)")
    assert "wsrl-dist train configs/wsrl.yaml --set task.name=pendulum --set run.seed=3" in md
    assert "`0123456789ab`" in md
    assert "Dataset source: built by our SAC recipe (no D4RL file)" in md
    assert "**normalized score**" in md
    # The skill schedule is real: later evals score higher than the first online one.
    assert ns[-1] > after["normalized_score"]


def test_report_falls_back_to_return_and_survives_a_torn_last_line(tmp_path: Path):
    evals = _run(tmp_path, normalized=False, dataset_note=None)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "eval", "env_steps": 70')  # the run was killed mid-write
    paths = write_report(tmp_path)
    md = paths["results"].read_text()
    rows = _table(md)
    assert "**return**" in md and "Dataset source" not in md
    best = max(evals, key=lambda e: e["return_mean"])
    assert rows["Best score"].startswith(f"{best['return_mean']:.2f} ± {best['return_std']:.2f}")
    assert rows["Pre-trained score"].startswith(f"{evals[0]['return_mean']:.2f}")
    _png_ok(paths["learning_curve"])


def test_summary_picks_after_warmup_as_first_post_warmup_eval():
    recs = [{"kind": "eval", "env_steps": s, "phase": p, "return_mean": r, "return_std": 1.0,
             "normalized_score": None, "wall_time": s / 100}
            for s, p, r in [(0, "pretrain", -5.0), (500, "warmup", -9.0), (1000, "online", -7.0),
                            (2000, "online", -1.0), (3000, "online", -2.0)]]
    s = summarize(recs, {"warmup_steps": 1000})
    assert s["label"] == "return"
    assert s["pretrained"]["env_steps"] == 0 and s["after_warmup"]["env_steps"] == 1000
    assert s["final"]["env_steps"] == 3000 and s["best"]["env_steps"] == 2000
    assert s["env_steps"] == 3000 and s["wall_time"] == 30.0


def test_summary_reads_the_training_loops_phase_names():
    """wsrl_dist/local.py logs "pretrained"/"initial", "after_warmup" and "online" evals."""
    recs = [{"kind": "eval", "env_steps": s, "phase": p, "return_mean": r, "return_std": 0.0,
             "normalized_score": r * 10, "wall_time": 1.0}
            for s, p, r in [(0, "pretrained", 5.0), (1000, "after_warmup", 4.0), (3000, "online", 9.0)]]
    s = summarize(recs, {"warmup_steps": 1000})
    assert s["label"] == "normalized score"
    assert s["pretrained"]["phase"] == "pretrained" and s["after_warmup"]["env_steps"] == 1000
    assert s["best"]["normalized_score"] == 90.0
    recs[0]["phase"] = "initial"  # no pre-training (sac_scratch): nothing to call pre-trained
    s = summarize(recs, {"warmup_steps": 1000})
    assert s["pretrained"] is None and s["after_warmup"]["env_steps"] == 1000


def test_metrics_log_flushes_each_line_and_writes_nan_as_null(tmp_path: Path):
    log = MetricsLog(tmp_path)
    log.write("train", env_steps=np.int64(10), critic_loss=np.float32(0.5), q_mean=float("nan"))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()  # readable before close
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["kind"] == "train" and rec["env_steps"] == 10 and rec["critic_loss"] == 0.5
    assert rec["q_mean"] is None and rec["wall_time"] >= 0
    log.write("episode", env_steps=12, episode_return=np.float32(-3.5), info={"lens": np.arange(2)})
    with pytest.raises(ValueError):
        log.write("not a kind", env_steps=1)
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")  # kinds beyond the report's are kept
    assert len(recs) == 2 and recs[0] == rec
    assert recs[1]["episode_return"] == -3.5 and recs[1]["info"] == {"lens": [0, 1]}


def test_write_report_names_the_missing_file(tmp_path: Path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="run.json"):
        write_report(tmp_path)


def test_throughput_plot_is_on_wall_time_so_a_learner_drain_is_visible_not_a_vertical_line():
    """Issue 16 item 8: rollouts done at 1,500 env steps at 54 s, the learner updating until 90 s.
    On an env-step axis that drain collapsed into a vertical line; on wall time it spans 54-90 s,
    and the env steps (twin axis) stay flat there."""
    import matplotlib.pyplot as plt

    from wsrl_dist.ops.report import throughput_figure

    tps = []
    for i in range(1, 31):  # one record every 3 s: env steps stop growing after 54 s
        t = 3.0 * i
        steps = min(1500, int(1500 * t / 54))
        tps.append({"kind": "throughput", "phase": "warmup" if steps <= 500 else "online",
                    "wall_time": t, "env_steps": steps, "env_steps_per_second": 0.0 if t > 54 else 28.0,
                    "critic_updates_per_second": 60.0, "utd_actual": None if t > 54 else 2.1,
                    "utd_cumulative": 2.0})
    fig = throughput_figure(tps, {"task": "t", "utd_target": 4}, tps)
    try:
        ax1, ax2, twin = fig.axes
        assert ax2.get_xlabel() == "wall time (s)" and twin.get_ylabel() == "env steps"
        xs = ax1.lines[0].get_xdata()
        assert list(xs) == [t["wall_time"] for t in tps]  # 12 records after the rollouts stopped
        env = twin.lines[0].get_ydata()
        late = [e for x, e in zip(xs, env) if x > 54]
        assert len(late) == 12 and set(late) == {1500}
    finally:
        plt.close(fig)
