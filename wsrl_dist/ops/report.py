"""Run-directory log and report (ops layer, after the data path): the training loops append
`metrics.jsonl` through `MetricsLog`; `write_report` turns a finished run dir into plots and results.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("eval", "train", "throughput")  # what the report reads; other kinds are kept, not plotted
# Eval `phase` values. The step-0 eval is "pretrained"/"pretrain" (pre-trained policy) or "initial"
# (no pre-training); "after_warmup" is the eval at the end of warmup, where online training starts.
PRETRAINED_PHASES = ("pretrain", "pretrained")
START_PHASES = (*PRETRAINED_PHASES, "initial")
ONLINE_PHASES = ("after_warmup", "online")


class MetricsLog:
    """Append-only JSONL log at `run_dir/metrics.jsonl`, one flushed line per record.

    `kind` is any short identifier; the report reads "eval", "train" and "throughput" (fields in
    `write_report`), other kinds ("episode", "pretrain", ...) are kept for other tools.

    `wall_time` (seconds since this log was opened) is filled in unless the caller passes it, so
    records from one process share a clock.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, kind: str, **fields: Any) -> None:
        if not isinstance(kind, str) or not kind.isidentifier():
            raise ValueError(f"kind must be a short identifier like 'eval', got {kind!r}")
        fields.setdefault("wall_time", time.monotonic() - self._t0)
        rec = {"kind": kind, **{k: _jsonable(v) for k, v in fields.items()}}
        self._f.write(json.dumps(rec, allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(v: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None (JSON has no NaN; the report reads None as missing)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse metrics.jsonl. A torn last line (run killed mid-write) is skipped; any other bad line raises."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                log.warning("%s: skipping torn last line %d", path, i + 1)
                continue
            raise ValueError(f"{path}:{i + 1}: not JSON: {e}") from e
    return out


def _score_series(evals: list[dict[str, Any]]) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Pick normalized score when every eval has one, else return. Returns (label, x, mean, std)."""
    x = np.array([e["env_steps"] for e in evals], dtype=np.float64)
    ret = np.array([e["return_mean"] for e in evals], dtype=np.float64)
    ret_std = np.array([e.get("return_std") or 0.0 for e in evals], dtype=np.float64)
    ns = [e.get("normalized_score") for e in evals]
    if evals and all(v is not None for v in ns):
        y = np.array(ns, dtype=np.float64)
        if all(e.get("normalized_score_std") is not None for e in evals):
            return "normalized score", x, y, np.array([e["normalized_score_std"] for e in evals])
        # Normalization is affine in the return (D4RL: 100 * (R - R_random) / (R_expert - R_random)),
        # so the return std maps through the fitted slope.
        slope = 0.0
        if np.ptp(ret) > 0:
            slope = float(np.polyfit(ret, y, 1)[0])
        return "normalized score", x, y, ret_std * abs(slope)
    return "return", x, ret, ret_std


def _phase_bounds(records: list[dict[str, Any]], warmup_steps: int | None) -> tuple[float | None, float]:
    """(online start env step or None, last env step). Online starts where warmup ends."""
    xs = [r["env_steps"] for r in records if r.get("env_steps") is not None]
    last = float(max(xs)) if xs else 0.0
    if warmup_steps is not None and last > warmup_steps:
        return float(warmup_steps), last
    online = [r["env_steps"] for r in records if r.get("phase") in ONLINE_PHASES]
    return (float(min(online)), last) if online else (None, last)


def _shade(ax: Any, records: list[dict[str, Any]], warmup: int | None, labels: bool) -> None:
    """Shade warmup (0 .. warmup end) and the online phase (online start .. last step)."""
    online_start, last = _phase_bounds(records, warmup)
    if warmup:
        ax.axvspan(0, warmup, color="tab:orange", alpha=0.07, label="warmup" if labels else None)
    if online_start is not None:
        ax.axvspan(online_start, max(last, online_start), color="tab:green", alpha=0.08,
                   label="online phase" if labels else None)


def _plot_learning_curve(path: Path, evals: list[dict[str, Any]], run: dict[str, Any],
                         records: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    warmup = run.get("warmup_steps")
    if evals:
        label, x, y, s = _score_series(evals)
        _shade(ax, records, warmup, labels=True)
        ax.fill_between(x, y - s, y + s, color="tab:blue", alpha=0.25, linewidth=0, label="mean ± std")
        ax.plot(x, y, "-o", color="tab:blue", markersize=3, label=label)
        pre = [i for i, e in enumerate(evals) if e.get("phase") in PRETRAINED_PHASES]
        init = [i for i, e in enumerate(evals) if e.get("phase") == "initial"]
        if pre:
            i = pre[-1]
            ax.plot([x[i]], [y[i]], marker="*", markersize=14, color="tab:orange", linestyle="none",
                    label=f"pre-trained ({y[i]:.1f})", zorder=5)
        elif init:
            i = init[-1]
            ax.plot([x[i]], [y[i]], marker="D", markersize=7, color="tab:gray", linestyle="none",
                    label=f"initial, no pre-training ({y[i]:.1f})", zorder=5)
        if warmup:
            ax.axvline(warmup, color="tab:red", linestyle="--", linewidth=1,
                       label=f"warmup end ({warmup:,} steps)")
        ax.set_ylabel(label)
    else:
        ax.text(0.5, 0.5, "no eval records", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("env steps")
    ax.set_title(f"{run.get('task', '?')} (seed {run.get('seed', '?')})")
    ax.grid(alpha=0.3)
    if evals:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _wall_spans(tps: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """(first, last) wall time of each phase's throughput records: warmup, online (and done)."""
    spans: dict[str, tuple[float, float]] = {}
    for t in tps:
        ph = "online" if t.get("phase") in ONLINE_PHASES or t.get("phase") == "done" else t.get("phase")
        lo, hi = spans.get(ph, (t["wall_time"], t["wall_time"]))
        spans[ph] = (min(lo, t["wall_time"]), max(hi, t["wall_time"]))
    return spans


def throughput_figure(tps: list[dict[str, Any]], run: dict[str, Any], records: list[dict[str, Any]]):
    """The throughput figure, on a WALL-TIME axis when the records carry wall_time (every runtime
    writes it), with cumulative env steps on a twin axis: on an env-step axis, learner work after
    the rollouts stopped (a drain) collapses into a vertical line at the last env step. Records
    without wall_time (older runs) fall back to the env-step axis. Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(7.5, 5.5), dpi=120)
    timed = bool(tps) and all(t.get("wall_time") is not None for t in tps)
    if timed:
        tps = sorted(tps, key=lambda t: t["wall_time"])
    if tps:
        x = np.array([t["wall_time" if timed else "env_steps"] for t in tps], dtype=np.float64)

        def col(k: str) -> np.ndarray:
            return np.array([np.nan if t.get(k) is None else t[k] for t in tps], dtype=np.float64)

        for ax in (ax1, ax2):
            if timed:
                spans = _wall_spans(tps)
                if "warmup" in spans:
                    ax.axvspan(*spans["warmup"], color="tab:orange", alpha=0.07)
                if "online" in spans:
                    ax.axvspan(*spans["online"], color="tab:green", alpha=0.08)
            else:
                _shade(ax, records, run.get("warmup_steps"), labels=False)
            ax.grid(alpha=0.3)
            ax.set_xlim(left=0)
        # Each record summarizes the window that ends at its x: draw it as a step back to the
        # previous record, not as a line interpolating between windows.
        ax1.plot(x, col("env_steps_per_second"), drawstyle="steps-pre", label="env steps / s")
        ax1.plot(x, col("critic_updates_per_second"), drawstyle="steps-pre", linestyle="--",
                 label="critic updates / s")
        ax1.set_ylabel("per second")
        ax1.set_ylim(bottom=0)
        ax1.legend(loc="upper left", fontsize=8)
        if timed:
            twin = ax1.twinx()
            twin.plot(x, col("env_steps"), color="tab:gray", linewidth=1, label="env steps (total)")
            twin.set_ylabel("env steps")
            twin.set_ylim(bottom=0)
            twin.legend(loc="upper right", fontsize=8)
        ax2.plot(x, col("utd_actual"), drawstyle="steps-pre", color="tab:purple", label="UTD actual")
        if any(t.get("utd_cumulative") is not None for t in tps):
            ax2.plot(x, col("utd_cumulative"), color="tab:brown", linewidth=1, label="UTD cumulative")
        if run.get("utd_target") is not None:
            ax2.axhline(run["utd_target"], color="k", linestyle=":", label="UTD target")
        ax2.set_ylabel("critic updates / env step")
        ax2.set_ylim(bottom=0)
        ax2.legend(loc="best", fontsize=8)
    else:
        ax1.text(0.5, 0.5, "no throughput records", ha="center", va="center", transform=ax1.transAxes)
    ax2.set_xlabel("wall time (s)" if timed else "env steps")
    ax1.set_title(f"throughput: {run.get('task', '?')} (orange: warmup, green: online phase)")
    fig.tight_layout()
    return fig


def _plot_throughput(path: Path, tps: list[dict[str, Any]], run: dict[str, Any],
                     records: list[dict[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    fig = throughput_figure(tps, run, records)
    fig.savefig(path)
    plt.close(fig)


def _fmt_score(e: dict[str, Any] | None, label: str) -> str:
    if e is None:
        return "n/a"
    if label == "normalized score":
        return f"{e['normalized_score']:.2f} (return {e['return_mean']:.1f})"
    std = e.get("return_std")
    return f"{e['return_mean']:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _fmt_duration(s: float | None) -> str:
    if s is None:
        return "n/a"
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{sec:02d} ({s:.0f} s)"


def summarize(records: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """The numbers in results.md: pretrained / after-warmup / final / best eval records and totals."""
    evals = sorted((r for r in records if r.get("kind") == "eval"), key=lambda r: r["env_steps"])
    label = _score_series(evals)[0] if evals else "return"
    key = "normalized_score" if label == "normalized score" else "return_mean"
    pre = [e for e in evals if e.get("phase") in PRETRAINED_PHASES]
    warmup = int(run.get("warmup_steps") or 0)
    # "After warmup": the eval logged as such, else the first one taken once the warmup data is in.
    after = [e for e in evals if e.get("phase") == "after_warmup"] or [
        e for e in evals if e.get("phase") not in START_PHASES and e["env_steps"] >= warmup]
    steps = [r["env_steps"] for r in records if r.get("env_steps") is not None]
    walls = [r["wall_time"] for r in records if r.get("wall_time") is not None]
    return {
        "label": label,
        "pretrained": pre[-1] if pre else None,
        "after_warmup": after[0] if after else None,
        "final": evals[-1] if evals else None,
        "best": max(evals, key=lambda e: e[key]) if evals else None,
        "env_steps": max(steps) if steps else 0,
        "wall_time": max(walls) if walls else None,
    }


def _results_md(summary: dict[str, Any], run: dict[str, Any], run_dir: Path) -> str:
    label = summary["label"]

    def at(e: dict[str, Any] | None) -> str:
        return "" if e is None else f"{e['env_steps']:,}"

    rows = [
        ("Pre-trained score", _fmt_score(summary["pretrained"], label), at(summary["pretrained"])),
        ("Score after warmup", _fmt_score(summary["after_warmup"], label), at(summary["after_warmup"])),
        ("Final score", _fmt_score(summary["final"], label), at(summary["final"])),
        ("Best score", _fmt_score(summary["best"], label), at(summary["best"])),
        ("Env steps", f"{summary['env_steps']:,}", ""),
        ("Wall time", _fmt_duration(summary["wall_time"]), ""),
    ]
    lines = [
        f"# Results: {run.get('task', run_dir.name)}",
        "",
        f"Score is the **{label}** of the evaluation policy; warmup steps: "
        f"{run.get('warmup_steps', 'n/a')}; seed: {run.get('seed', 'n/a')}.",
        "",
        "| Metric | Value | At env steps |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "![learning curve](learning_curve.png)",
        "",
        "![throughput](throughput.png)",
        "",
        "## Reproduce",
        "",
        "```",
        str(run.get("command", "n/a")),
        "```",
        "",
        f"Config hash: `{run.get('config_hash', 'n/a')}`",
    ]
    if run.get("dataset_note"):
        lines += ["", f"Dataset source: {run['dataset_note']}"]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write learning_curve.png, throughput.png and results.md into `run_dir`.

    Returns their paths under keys "learning_curve", "throughput", "results". Besides the required
    run.json keys (command, config_hash, task, warmup_steps, seed) it uses `dataset_note` and
    `utd_target` when present.
    """
    run_dir = Path(run_dir)
    for name in ("run.json", "metrics.jsonl"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} missing: not a run directory")
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    records = read_metrics(run_dir / "metrics.jsonl")
    unknown = {r.get("kind") for r in records} - set(KINDS)
    if unknown:
        log.debug("%s: report ignores records of kind %s", run_dir, sorted(map(str, unknown)))
    evals = sorted((r for r in records if r.get("kind") == "eval"), key=lambda r: r["env_steps"])
    tps = sorted((r for r in records if r.get("kind") == "throughput"), key=lambda r: r["env_steps"])
    paths = {
        "learning_curve": run_dir / "learning_curve.png",
        "throughput": run_dir / "throughput.png",
        "results": run_dir / "results.md",
    }
    _plot_learning_curve(paths["learning_curve"], evals, run, records)
    _plot_throughput(paths["throughput"], tps, run, records)
    paths["results"].write_text(_results_md(summarize(records, run), run, run_dir), encoding="utf-8")
    return paths
