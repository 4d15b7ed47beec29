"""The study report's aggregate over tasks, from hand-written CSVs (the figures' numbers, not pixels)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from wsrl_dist.ops.study_report import Results, aggregate_curves

RUN_COLS = ("task", "method", "seed", "run_dir", "warmup_steps", "online_steps", "eval_every", "q_probe_every",
            "q_probe_until", "finished")
EVAL_COLS = ("task", "method", "seed", "env_steps", "phase", "normalized_score", "return_mean")


def _write(path: Path, cols: tuple[str, ...], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def test_the_aggregate_averages_only_methods_run_on_every_task(tmp_path):
    """A study being filled in: wsrl on both tasks, rlpd on hopper only. rlpd's curve is left out of the
    2-task mean (it would be hopper's alone beside wsrl's average) and named as left out."""
    cells = {("hopper", "wsrl"): 40.0, ("cheetah", "wsrl"): 60.0, ("hopper", "rlpd"): 90.0}
    runs, evals = [], []
    for (task, method), score in cells.items():
        for seed in (0, 1):
            runs.append({"task": task, "method": method, "seed": seed, "run_dir": "", "warmup_steps": 0,
                         "online_steps": 20, "eval_every": 10, "q_probe_every": 0, "q_probe_until": 0, "finished": 1})
            for step in (10, 20):
                evals.append({"task": task, "method": method, "seed": seed, "env_steps": step, "phase": "online",
                              "normalized_score": score + seed + step, "return_mean": 0})
    _write(tmp_path / "runs.csv", RUN_COLS, runs)
    _write(tmp_path / "evals.csv", EVAL_COLS, evals)
    curves, left_out = aggregate_curves(Results(tmp_path))
    assert left_out == ["rlpd"] and list(curves) == ["wsrl"]
    x, mean, se, n = curves["wsrl"]
    # per seed the mean of 40 and 60 (+ seed + step), then the mean over seeds 0 and 1 (+ 0.5)
    assert x.tolist() == [10.0, 20.0] and np.allclose(mean, [60.5, 70.5]) and np.allclose(se, 0.5)
    assert n.tolist() == [2, 2]


def test_a_method_keeps_its_colour_in_every_figure():
    from wsrl_dist.ops.study_report import method_color

    assert method_color("wsrl") == "C0" and method_color("rlpd") == "C3"
    assert method_color("rlpd") == method_color("rlpd", ["rlpd", "wsrl"])  # whatever else the figure shows
    # methods outside the known list get colours none of the known ones has
    assert {method_color(m, ["zeta", "alpha"]) for m in ("alpha", "zeta")} == {"C6", "C7"}
