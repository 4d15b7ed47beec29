"""results/windows.md: how fast each method learns, as one number per window of online steps.

A single evaluation of a locomotion policy swings with single falls (hopper's per-eval standard error
reaches 15-25 points over 4 seeds), so "learns faster" and "ends higher" (the paper's claim (b)) are
read better from the mean of a seed's evaluations over a window, an area under its curve: per seed the
mean of its evaluations binned inside [lo, hi] (study_report.Results.binned_scores), then mean ±
standard error over seeds. A seed whose evaluations stop before `hi` is left out of that window, not
averaged over a shorter one (a run cut short would otherwise be compared over other steps than the
rest); the cell says how many seeds it holds where that is fewer than the method's. A window no run
reaches is not printed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# early (the first evaluations after the switch), late, and whole runs at 100k and 300k online steps
DEFAULT_WINDOWS = ((10_000, 40_000), (50_000, 100_000), (10_000, 100_000), (100_000, 300_000), (10_000, 300_000))


def mean_se(vals: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 for one seed)."""
    a = np.asarray(vals, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def unfinished_note(r: Any) -> str:
    """One line naming the cells whose runs have not finished (runs.csv `finished` = 0: killed, or still
    running), each with the step of its seeds' last evaluation (the earliest over seeds) and its target,
    so a row of the table or the windows is not read as a whole run; "" when every run finished."""
    cells = []
    for task in r.tasks:
        for method in r.methods:
            seeds = r.seeds(task, method)
            if not seeds or all(r.run_meta(task, method, s, "finished") for s in seeds):
                continue
            last = min((pts[-1][0] for s in seeds if (pts := r.score_points(task, method, s))), default=0)
            target = max(r.run_meta(task, method, s, "online_steps") for s in seeds)
            cells.append(f"{task} {method} (last eval at {_k(last)} of {_k(target)})")
    return ("Not finished: " + "; ".join(cells) + ".\n") if cells else ""


def _k(steps: float) -> str:
    return f"{round(steps / 1000)}k" if steps >= 1000 else str(int(steps))


def _label(lo: int, hi: int) -> str:
    return f"{lo // 1000}k-{hi // 1000}k"


def window_means(r: Any, task: str, method: str, lo: int, hi: int) -> list[float]:
    """Per seed, the mean of its evaluations binned in [lo, hi]; seeds whose last eval is before hi
    (or with none in the window) are left out."""
    out = []
    for seed in r.seeds(task, method):
        bins = r.binned_scores(task, method, seed)
        inside = [v for k, v in bins.items() if lo <= k <= hi]
        if inside and max(bins) >= hi:
            out.append(sum(inside) / len(inside))
    return out


def windows_md(r: Any, windows: tuple[tuple[int, int], ...] = DEFAULT_WINDOWS) -> str:
    label = "normalized score" if r.score_col == "normalized_score" else "return"
    pairs = [(t, m) for t in r.tasks for m in r.methods if r.seeds(t, m)]
    cols = {}  # (lo, hi) -> {(task, method): cell}, only the windows some run reaches
    for lo, hi in windows:
        col = {}
        for task, method in pairs:
            if vals := window_means(r, task, method, lo, hi):
                m, se = mean_se(vals)
                n = len(r.seeds(task, method))
                col[(task, method)] = f"{m:.1f} ± {se:.1f}" + (f" (n={len(vals)})" if len(vals) != n else "")
        if col:
            cols[(lo, hi)] = col
    if not cols:
        return "No run has evaluations that far: no window to show.\n"
    lines = [f"Per seed, the mean of its {label} evaluations in each window of online env steps (warmup "
             f"included; evaluations binned to their scheduled step), then mean ± standard error over seeds. "
             f"A seed whose evaluations stop before a window's end is left out of it (n= where fewer than "
             f"all); — where no seed reaches it. From results/evals.csv.", "",
             "| task | method | seeds | " + " | ".join(_label(lo, hi) for lo, hi in cols) + " |",
             "|" + "---|" * (3 + len(cols))]
    for task, method in pairs:
        row = [col.get((task, method), "—") for col in cols.values()]
        lines.append(f"| {task} | {method} | {len(r.seeds(task, method))} | " + " | ".join(row) + " |")
    note = unfinished_note(r)
    return "\n".join(lines) + "\n" + (f"\n{note}" if note else "")
