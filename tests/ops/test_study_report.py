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


def test_the_window_table_averages_each_seeds_evals_and_leaves_out_runs_cut_short(tmp_path):
    """Per seed the mean of its evals in a window, then mean +- s.e. over seeds. A seed that stopped
    before a window's end is left out of that window (n=), a window no run reaches is not printed."""
    from wsrl_dist.ops.study_windows import window_means, windows_md

    runs, evals = [], []
    ends = {("hopper", "wsrl", 0): 100_000, ("hopper", "wsrl", 1): 100_000, ("hopper", "rlpd", 0): 100_000,
            ("hopper", "rlpd", 1): 70_000}  # rlpd's seed 1 cut short at 70k
    for (task, method, seed), end in ends.items():
        runs.append({"task": task, "method": method, "seed": seed, "run_dir": "", "warmup_steps": 5000,
                     "online_steps": end, "eval_every": 10_000, "q_probe_every": 0, "q_probe_until": 0,
                     "finished": 1})
        evals.append({"task": task, "method": method, "seed": seed, "env_steps": 0, "phase": "pretrained",
                      "normalized_score": 1000.0, "return_mean": 0})  # outside every window
        for step in range(10_000, end + 1, 10_000):
            score = (10.0 if method == "wsrl" else 20.0) + seed + step / 10_000  # 11 + seed .. 20 + seed
            evals.append({"task": task, "method": method, "seed": seed, "env_steps": step + 237, "phase": "online",
                          "normalized_score": score, "return_mean": 0})
    _write(tmp_path / "runs.csv", RUN_COLS, runs)
    _write(tmp_path / "evals.csv", EVAL_COLS, evals)
    r = Results(tmp_path)
    # wsrl seed 0: evals 11..14 over 10k-40k (mean 12.5), seed 1 one more
    assert window_means(r, "hopper", "wsrl", 10_000, 40_000) == [12.5, 13.5]
    assert window_means(r, "hopper", "rlpd", 50_000, 100_000) == [27.5]  # seed 1 ends at 70k: left out
    lines = windows_md(r).splitlines()
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")[3:]]
            for line in lines if line.startswith("| hopper")}
    head = next(line for line in lines if line.startswith("| task"))
    assert head == "| task | method | seeds | 10k-40k | 50k-100k | 10k-100k |"  # nobody reaches 300k
    assert rows[("hopper", "wsrl")] == ["13.0 ± 0.5", "18.0 ± 0.5", "16.0 ± 0.5"]
    assert rows[("hopper", "rlpd")] == ["23.0 ± 0.5", "27.5 ± 0.0 (n=1)", "25.5 ± 0.0 (n=1)"]


def test_the_tables_name_the_cells_whose_runs_did_not_finish(tmp_path):
    """A cell stopped short (its machine gone before it could resume: walker2d's rlpd in the study) keeps
    its rows, and both tables say under them which cells did not finish and how far they got, so a row
    is not read as a whole run; with every run finished there is no such line."""
    from wsrl_dist.ops.study_report import table_md
    from wsrl_dist.ops.study_windows import windows_md

    def write(rlpd_finished: int) -> Results:
        runs, evals = [], []
        for method, end, done in (("wsrl", 100_000, 1), ("rlpd", 70_000, rlpd_finished)):
            for seed in (0, 1):
                runs.append({"task": "hopper", "method": method, "seed": seed, "run_dir": "", "warmup_steps": 0,
                             "online_steps": 100_000, "eval_every": 10_000, "q_probe_every": 0,
                             "q_probe_until": 0, "finished": done})
                for step in range(10_000, end + 1 + 10_000 * seed, 10_000):  # seed 1 one eval further
                    evals.append({"task": "hopper", "method": method, "seed": seed, "env_steps": step + 40,
                                  "phase": "online", "normalized_score": 50.0, "return_mean": 0})
        _write(tmp_path / "runs.csv", RUN_COLS, runs)
        _write(tmp_path / "evals.csv", EVAL_COLS, evals)
        return Results(tmp_path)

    r = write(rlpd_finished=0)
    note = "Not finished: hopper rlpd (last eval at 70k of 100k)."  # the earlier seed's last eval
    for md in (table_md(r, [0, 50_000, 100_000]), windows_md(r)):
        assert md.rstrip().splitlines()[-1] == note, md
        assert any(line.startswith("| hopper | rlpd | 2 |") for line in md.splitlines())  # the rows stay
    r = write(rlpd_finished=1)
    for md in (table_md(r, [0, 50_000, 100_000]), windows_md(r)):
        assert "Not finished" not in md and md.rstrip().splitlines()[-1].startswith("| hopper | rlpd |")
