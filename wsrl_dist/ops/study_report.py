"""`wsrl-dist report --study DIR`: a study's per-run metrics reduced to small CSVs, then figures and a
markdown table drawn from those CSVs alone (so a copy of results/ re-renders without the run dirs).

    results/runs.csv      one row per (task, method, seed): run dir, warmup K, online steps, eval spacing
    results/evals.csv     every evaluation: env_steps, phase, normalized_score, return_mean
    results/train.csv     the learner's logged losses: env_steps, q_mean (mean Q of the sampled online
                          batch), critic_loss, actor_loss
    results/q_probe.csv   Q-vs-Monte-Carlo probes (evaluation.q_probe): env_steps, Q and MC return means
    results/score_<task>.png   normalized score vs env steps, mean +- standard error over seeds, one
                          line per method, the warmup window shaded
    results/score_aggregate.png  the same averaged over tasks (per seed, then mean +- s.e. over seeds)
    results/onset.png     claim (a): Q vs MC return of the same states over the first online steps,
                          wsrl vs wsrl_no_warmup (plus the batch q_mean the learner logs)
    results/table.md      score at the study's table_steps (nearest eval; "—" where a run is shorter)
    results/windows.md    per window of online steps, the mean of each seed's evals (ops/study_windows.py)

Env steps count from the start of the online stage, warmup included (the K warmup steps are the first
K of finetune.online_steps, as in the reference). A resumed run's metrics.jsonl holds the killed
attempt's rows before the resumed ones: per kind, a row whose env_steps is below the previous row's
starts a new timeline and drops the earlier rows at or past it (`latest_timeline`).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from wsrl_dist.ops.report import START_PHASES, read_metrics
from wsrl_dist.ops.study_windows import mean_se as _mean_se
from wsrl_dist.ops.study_windows import unfinished_note, windows_md

RUN_COLS = ("task", "method", "seed", "run_dir", "warmup_steps", "online_steps", "eval_every",
            "q_probe_every", "q_probe_until", "finished")
EVAL_COLS = ("task", "method", "seed", "env_steps", "phase", "normalized_score", "return_mean")
TRAIN_COLS = ("task", "method", "seed", "env_steps", "q_mean", "critic_loss", "actor_loss")
PROBE_COLS = ("task", "method", "seed", "env_steps", "phase", "q_probe_q_mean", "q_probe_mc_mean",
              "q_probe_gap_mean", "q_probe_states", "q_probe_return_mean")
DEFAULT_TABLE_STEPS = [0, 5_000, 25_000, 50_000, 100_000, 200_000, 300_000]
ONSET_METHODS = ("wsrl", "wsrl_no_warmup")
# one colour per method in every figure (matplotlib's C0, C1, ... in this order; others after them)
METHOD_ORDER = ("wsrl", "wsrl_no_warmup", "sac_scratch", "rlpd", "offline_continued", "offline_retained")


def method_color(method: str, others: list[str] | None = None) -> str:
    """`others`: the figure's methods, so an unlisted one gets a colour no listed one has."""
    if method in METHOD_ORDER:
        return f"C{METHOD_ORDER.index(method)}"
    extra = sorted(m for m in (others or [method]) if m not in METHOD_ORDER)
    return f"C{(len(METHOD_ORDER) + extra.index(method)) % 10}"


def latest_timeline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one kind in file order -> the latest timeline: a row with fewer env_steps than the
    row before it (a resume or restart) drops every earlier row at or past its env_steps."""
    keep: list[dict[str, Any]] = []
    for r in rows:
        x = r.get("env_steps")
        if x is None:
            continue
        if keep and x < keep[-1]["env_steps"]:
            keep = [k for k in keep if k["env_steps"] < x]
        keep.append(r)
    return keep


# ---------------------------------------------------------------------- reduce run dirs -> CSVs
def _seed_dirs(study_dir: Path) -> list[tuple[str, str, int, Path]]:
    """(task, method, seed, run dir) of every run under runs/<task>/<method>/seed-<s>/."""
    out = []
    for d in sorted((study_dir / "runs").glob("*/*/seed-*")):
        if (d / "config.yaml").is_file():
            out.append((d.parent.parent.name, d.parent.name, int(d.name.split("-", 1)[1]), d))
    return out


def reduce_runs(study_dir: str | Path) -> dict[str, Path]:
    """Rewrite results/*.csv from the run dirs present; rows of runs whose dirs are gone are kept
    from the CSVs already there, and so are the metric rows of a run dir without its metrics.jsonl
    (a study dir restored from its committed copy, results/<name>/: run.json and config.yaml kept,
    metrics reduced to the CSVs; a later session's `wsrl-dist study` continues it)."""
    tables, _ = reduced_tables(study_dir)
    return write_tables(Path(study_dir) / "results", tables)


def write_tables(res: Path, tables: dict[str, list[dict[str, Any]]]) -> dict[str, Path]:
    """results/<name>.csv for each table, rows in (task, method, seed, env_steps) order."""
    res.mkdir(parents=True, exist_ok=True)
    cols = {"runs": RUN_COLS, "evals": EVAL_COLS, "train": TRAIN_COLS, "q_probe": PROBE_COLS}
    out = {}
    for name, rows in tables.items():
        rows.sort(key=lambda r: (r["task"], r["method"], int(r["seed"]), float(r.get("env_steps") or 0)))
        out[f"{name}_csv"] = _write_csv(res / f"{name}.csv", cols[name], rows)
    return out


def reduced_tables(study_dir: str | Path) -> tuple[dict[str, list[dict[str, Any]]], set[tuple[str, str, str]]]:
    """What reduce_runs writes, without writing it: the four tables, and the (task, method, seed) keys
    whose rows came from a run dir's metrics.jsonl here (not from the CSVs already there)."""
    study_dir = Path(study_dir)
    res = study_dir / "results"
    found = _seed_dirs(study_dir)
    present = {(t, m, str(s)) for t, m, s, _ in found}
    measured = {(t, m, str(s)) for t, m, s, d in found if (d / "metrics.jsonl").is_file()}
    tables: dict[str, list[dict[str, Any]]] = {}
    for name in ("runs", "evals", "train", "q_probe"):
        old = _read_csv(res / f"{name}.csv")
        gone = present if name == "runs" else measured
        tables[name] = [r for r in old if (r["task"], r["method"], str(r["seed"])) not in gone]
    for task, method, seed, d in found:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        run = json.loads((d / "run.json").read_text()) if (d / "run.json").is_file() else {}
        ft = cfg["finetune"]
        key = {"task": task, "method": method, "seed": seed}
        tables["runs"].append({**key, "run_dir": str(d.relative_to(study_dir)),
                               "warmup_steps": run.get("warmup_steps", 0 if method == "wsrl_no_warmup"
                                                       else ft["warmup_steps"]),
                               "online_steps": ft["online_steps"], "eval_every": ft["eval_every"],
                               "q_probe_every": ft.get("q_probe_every", 0),
                               "q_probe_until": ft.get("q_probe_until", 0),
                               "finished": int("finished" in run)})
        if (task, method, str(seed)) not in measured:
            continue  # its metric rows stay as the CSVs hold them
        metrics = read_metrics(d / "metrics.jsonl")
        by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in metrics:
            by_kind[r.get("kind", "")].append(r)
        for kind, table, cols in (("eval", "evals", EVAL_COLS), ("train", "train", TRAIN_COLS),
                                  ("q_probe", "q_probe", PROBE_COLS)):
            for r in latest_timeline(by_kind[kind]):
                tables[table].append({**{c: r.get(c) for c in cols}, **key})
    return tables, measured


def _write_csv(path: Path, cols: tuple[str, ...], rows: list[dict[str, Any]]) -> Path:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(cols), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r.get(c) for c in cols})
    tmp.replace(path)
    return path


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    x = float(v)
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------- series from the CSVs
class Results:
    """The CSVs of results/, typed: what every figure and the table read."""

    def __init__(self, res: Path):
        self.runs = {(r["task"], r["method"], int(r["seed"])): r for r in _read_csv(res / "runs.csv")}
        if not self.runs:
            raise FileNotFoundError(f"{res}: no runs.csv rows: not a study's results (run `wsrl-dist study` first)")
        self.evals = _read_csv(res / "evals.csv")
        self.train = _read_csv(res / "train.csv")
        self.probes = _read_csv(res / "q_probe.csv")
        self.tasks = sorted({k[0] for k in self.runs})
        self.methods = sorted({k[1] for k in self.runs}, key=lambda m: (  # the table's and legends' order
            METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))
        # normalized score where every eval has one (D4RL tasks), else the raw return (classic tasks)
        self.score_col = ("normalized_score" if self.evals and all(_num(e["normalized_score"]) is not None
                                                                  for e in self.evals) else "return_mean")

    def run_meta(self, task: str, method: str, seed: int, key: str) -> int:
        return int(float(self.runs[(task, method, seed)][key] or 0))

    def seeds(self, task: str, method: str) -> list[int]:
        return sorted(s for t, m, s in self.runs if t == task and m == method)

    def score_points(self, task: str, method: str, seed: int) -> list[tuple[float, str, float]]:
        """(env_steps, phase, score) of one run's evals, in step order."""
        pts = [(float(e["env_steps"]), e["phase"], _num(e[self.score_col])) for e in self.evals
               if e["task"] == task and e["method"] == method and int(e["seed"]) == seed]
        return sorted((x, p, y) for x, p, y in pts if y is not None)

    def binned_scores(self, task: str, method: str, seed: int) -> dict[int, float]:
        """Evals keyed by their scheduled step: 0 (pre-trained / initial), K (after warmup), else the
        nearest multiple of eval_every (the monitor starts an eval at the first tick past it)."""
        every = max(self.run_meta(task, method, seed, "eval_every"), 1)
        K = self.run_meta(task, method, seed, "warmup_steps")
        out = {}
        for x, phase, y in self.score_points(task, method, seed):
            key = 0 if phase in START_PHASES else K if phase == "after_warmup" else int(round(x / every) * every)
            out[key] = y
        return out


def _curve(per_seed: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and s.e. over seeds at every bin some seed has (n: seeds there)."""
    keys = sorted({k for d in per_seed for k in d})
    stats = [(_mean_se([d[k] for d in per_seed if k in d]), sum(k in d for d in per_seed)) for k in keys]
    return (np.array(keys, float), np.array([s[0][0] for s in stats]), np.array([s[0][1] for s in stats]),
            np.array([s[1] for s in stats]))


# ---------------------------------------------------------------------- figures and table
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_scores(path: Path, title: str, ylabel: str, curves: dict[str, tuple], warmup: int) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    if warmup:
        ax.axvspan(0, warmup, color="tab:orange", alpha=0.12, label=f"warmup (K={warmup:,})")
    for method, (x, m, se, _) in curves.items():
        if len(x):
            color = method_color(method, list(curves))
            ax.plot(x, m, marker="o", ms=3, label=method, color=color)
            ax.fill_between(x, m - se, m + se, color=color, alpha=0.2)
    ax.set_xlabel("online env steps (warmup included)")
    ax.set_ylabel(f"{ylabel} (mean ± s.e. over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _warmup_of(r: Results, task: str | None = None) -> int:
    ks = [int(float(v["warmup_steps"] or 0)) for (t, _, _), v in r.runs.items() if task in (None, t)]
    return max(ks) if ks else 0


def _plot_onset(path: Path, r: Results) -> None:
    """Per task: the probe's mean Q (solid) and MC return-to-go (dashed) of the same states, and the
    learner's batch q_mean (dotted), mean +- s.e. over seeds, up to q_probe_until env steps."""
    plt = _plt()
    tasks = r.tasks
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), dpi=120, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        until = max([r.run_meta(task, m, s, "q_probe_until") for m in ONSET_METHODS for s in r.seeds(task, m)] or [0])
        warm = max([r.run_meta(task, "wsrl", s, "warmup_steps") for s in r.seeds(task, "wsrl")] or [0])
        if warm:
            ax.axvspan(0, warm, color="tab:orange", alpha=0.12, label=f"warmup (K={warm:,})")
        drawn = False
        for method in (m for m in ONSET_METHODS if r.seeds(task, m)):
            color = method_color(method)
            every = max([r.run_meta(task, method, s, "q_probe_every") for s in r.seeds(task, method)] or [1]) or 1
            for col, style, name in (("q_probe_q_mean", "-", "Q (probe states)"),
                                     ("q_probe_mc_mean", "--", "MC return (same states)")):
                per_seed = []
                for s in r.seeds(task, method):
                    d, K = {}, r.run_meta(task, method, s, "warmup_steps")
                    for p in r.probes:
                        if (p["task"], p["method"], int(p["seed"])) == (task, method, s) and _num(p[col]) is not None:
                            x = float(p["env_steps"])
                            if x <= until:  # keyed as binned_scores keys evals
                                key = (0 if p["phase"] in START_PHASES else K if p["phase"] == "after_warmup"
                                       else int(round(x / every) * every))
                                d[key] = _num(p[col])
                    if d:
                        per_seed.append(d)
                x, m, se, _ = _curve(per_seed) if per_seed else (np.array([]),) * 4
                if len(x):
                    drawn = True
                    ax.plot(x, m, style, color=color, marker="o", ms=2.5, label=f"{method}: {name}")
                    ax.fill_between(x, m - se, m + se, color=color, alpha=0.15)
            per_seed = []
            for s in r.seeds(task, method):
                d = {int(round(float(t["env_steps"]) / every) * every): _num(t["q_mean"]) for t in r.train
                     if (t["task"], t["method"], int(t["seed"])) == (task, method, s)
                     and _num(t["q_mean"]) is not None and float(t["env_steps"]) <= until}
                if d:
                    per_seed.append(d)
            if per_seed:
                x, m, _, _ = _curve(per_seed)
                ax.plot(x, m, ":", color=color, lw=1, marker="x", ms=3, label=f"{method}: q_mean of the online batch")
        if not drawn:
            ax.text(0.5, 0.5, "no q_probe rows\n(finetune.q_probe_every=0?)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(f"{task}: Q vs Monte-Carlo return")
        ax.set_xlabel("online env steps (warmup included)")
        ax.set_ylabel("value (critic's reward scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def nearest_score(points: list[tuple[float, str, float]], step: int) -> float | None:
    """The eval nearest `step` (ties: the later one); None where the run has no eval that far."""
    if not points or step > points[-1][0]:
        return None
    return min(points, key=lambda p: (abs(p[0] - step), -p[0]))[2]


def table_md(r: Results, steps: list[int]) -> str:
    label = "normalized score" if r.score_col == "normalized_score" else "return"
    head = "| task | method | seeds | " + " | ".join(f"{s // 1000}k" if s >= 1000 else str(s) for s in steps) + " |"
    lines = [f"Mean ± standard error over seeds of the {label} at the eval nearest each online env step "
             f"(warmup included); — where a run is shorter. From results/evals.csv.", "",
             head, "|" + "---|" * (3 + len(steps))]
    for task in r.tasks:
        for method in r.methods:
            seeds = r.seeds(task, method)
            if not seeds:
                continue
            cells = []
            for step in steps:
                vals = [v for s in seeds if (v := nearest_score(r.score_points(task, method, s), step)) is not None]
                if not vals:
                    cells.append("—")
                else:
                    m, se = _mean_se(vals)
                    cells.append(f"{m:.1f} ± {se:.1f}" + (f" (n={len(vals)})" if len(vals) != len(seeds) else ""))
            lines.append(f"| {task} | {method} | {len(seeds)} | " + " | ".join(cells) + " |")
    note = unfinished_note(r)
    return "\n".join(lines) + "\n" + (f"\n{note}" if note else "")


def aggregate_curves(r: Results) -> tuple[dict[str, tuple], list[str]]:
    """The aggregate figure's curves: per seed the mean over tasks, then mean +- s.e. over seeds. Only
    methods with runs on every task: a method run on fewer would be averaged over other tasks than the
    rest (a study still being filled in showed rlpd's hopper-only curve beside wsrl's 2-task mean).
    Returns (curves, the methods left out)."""
    agg, left_out = {}, []
    for m in r.methods:
        if not all(r.seeds(t, m) for t in r.tasks):
            left_out.append(m)
            continue
        per_seed = []
        for s in sorted(set.intersection(*[set(r.seeds(t, m)) for t in r.tasks])):
            by_task = [r.binned_scores(t, m, s) for t in r.tasks]
            common = set.intersection(*[set(d) for d in by_task])
            per_seed.append({k: float(np.mean([d[k] for d in by_task])) for k in common})
        agg[m] = _curve(per_seed) if per_seed else (np.array([]),) * 4
    return agg, left_out


def write_study_report(study_dir: str | Path) -> dict[str, Path]:
    """CSVs from the run dirs (where present), then every figure and the table from the CSVs."""
    study_dir = Path(study_dir)
    out: dict[str, Path] = {}
    if (study_dir / "runs").is_dir():
        out.update(reduce_runs(study_dir))
    res = study_dir / "results"
    r = Results(res)
    spec_path = study_dir / "study.yaml"
    meta_path = res / "study.json"
    if spec_path.is_file():  # the table's steps travel with the CSVs
        spec = yaml.safe_load(spec_path.read_text())
        meta_path.write_text(json.dumps({"name": spec.get("name"),
                                         "table_steps": spec.get("table_steps") or DEFAULT_TABLE_STEPS}, indent=2))
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    steps = [int(s) for s in meta.get("table_steps") or DEFAULT_TABLE_STEPS]
    ylabel = "normalized score" if r.score_col == "normalized_score" else "return"
    for task in r.tasks:
        curves = {m: _curve([r.binned_scores(task, m, s) for s in r.seeds(task, m)])
                  for m in r.methods if r.seeds(task, m)}
        path = res / f"score_{task}.png"
        _plot_scores(path, f"{task} ({meta.get('name', study_dir.name)})", ylabel, curves, _warmup_of(r, task))
        out[f"score_{task}"] = path
    agg, left_out = aggregate_curves(r)
    title = f"mean over {len(r.tasks)} task(s)" + (f"\nnot on every task, left out: {', '.join(left_out)}"
                                                   if left_out else "")
    path = res / "score_aggregate.png"
    _plot_scores(path, title, ylabel, agg, _warmup_of(r))
    out["score_aggregate"] = path
    path = res / "onset.png"
    _plot_onset(path, r)
    out["onset"] = path
    path = res / "table.md"
    path.write_text(f"# {meta.get('name', study_dir.name)}\n\n" + table_md(r, steps))
    out["table"] = path
    path = res / "windows.md"
    path.write_text(f"# {meta.get('name', study_dir.name)}: mean score per window\n\n" + windows_md(r))
    out["windows"] = path
    return out
