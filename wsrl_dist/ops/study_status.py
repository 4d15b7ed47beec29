"""`wsrl-dist status --study DIR`: where a study stands, read from its files alone (no Ray, no running
job needed): every pre-training and cell of its manifest with its status, attempts, wall time and how
far it got (pre-training steps, or the stage and env steps of the online job, the least advanced
seed's), then the cells of its study.yaml not started yet. For a study running under `ray job
submit` or on a node you are not logged in to, or one that was stopped: what a rerun would redo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

TAIL_BYTES = 256 * 1024  # the last rows of a metrics.jsonl: enough for a few throughput records


def last_row(metrics: Path, kind: str) -> dict[str, Any] | None:
    """The newest row of `kind` in a metrics.jsonl (read from its tail), or None."""
    if not metrics.is_file():
        return None
    with open(metrics, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - TAIL_BYTES))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:  # the first (cut) line of the tail, or one being written
            continue
        if row.get("kind") == kind:
            return row
    return None


def _config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _local(study_dir: Path, rec: dict[str, Any]) -> Path:
    """The unit's run dir here: as recorded, or (a study dir copied or pulled elsewhere) the same
    place under this study dir."""
    recorded = Path(rec.get("run_dir", ""))
    if recorded.exists():
        return recorded
    parts = recorded.parts
    for anchor in ("runs", "pretrain"):
        if anchor in parts:
            return study_dir.joinpath(*parts[len(parts) - parts[::-1].index(anchor) - 1:])
    return recorded


def _progress(study_dir: Path, kind: str, rec: dict[str, Any]) -> str:
    if rec.get("status") == "done":
        return "done"
    run_dir = _local(study_dir, rec)
    if not run_dir.exists():
        return "no run dir here (it ran elsewhere; a rerun here starts it over)"
    seeds = rec.get("seeds") or [rec.get("seed")]
    if kind == "pretrain":
        dirs = [run_dir.parent / f"{rec['task']}-s{s}" for s in seeds]
        total = int((_config(dirs[0]).get("pretrain") or {}).get("steps") or 0)
        steps = [(last_row(d / "metrics.jsonl", "pretrain") or {}).get("step", 0) for d in dirs]
        done = min(steps)
        return f"pretrain {done:,} / {total:,} steps" + (f" ({done / total:.0%})" if total else "")
    dirs = [run_dir / f"seed-{s}" for s in seeds] if rec.get("multiseed") else [run_dir]
    rows = [last_row(d / "metrics.jsonl", "throughput") for d in dirs]
    if not all(rows):
        return "not started" if not any(rows) else "starting"
    least = min(rows, key=lambda r: r.get("env_steps") or 0)
    total = int((_config(run_dir).get("finetune") or {}).get("online_steps") or 0)
    steps = int(least.get("env_steps") or 0)
    stage = least.get("stage") or "?"
    if stage in ("build", "pretrain", "prepare"):
        return f"{stage} {least.get('stage_done') or 0:,} / {least.get('stage_total') or 0:,}"
    return f"{stage}: {steps:,} / {total:,} env steps" + (f" ({steps / total:.0%})" if total else "")


def study_status(study_dir: str | Path) -> list[dict[str, Any]]:
    """One row per unit of the manifest (pre-trainings first), then one per cell not started."""
    study_dir = Path(study_dir)
    path = study_dir / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{study_dir}: no manifest.json: not a study dir (run `wsrl-dist study` first)")
    m = json.loads(path.read_text())
    rows = []
    for kind, table in (("pretrain", m.get("pretrain", {})), ("cell", m.get("cells", {}))):
        for uid, rec in table.items():
            status = {"running": "started"}.get(rec.get("status"), rec.get("status", "?"))  # or stopped
            rows.append({"unit": uid, "kind": kind, "status": status,
                         "attempts": rec.get("attempts", 0), "wall_s": rec.get("wall_s"),
                         "progress": _progress(study_dir, kind, rec)})
    spec_path = study_dir / "study.yaml"
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else {}
    cells = m.get("cells", {})
    for task in spec.get("tasks", []):
        for method in spec.get("methods", []):
            cell = f"{task}/{method}"
            if not any(k == cell or k.startswith(cell + "/") for k in cells):
                rows.append({"unit": cell, "kind": "cell", "status": "not started", "attempts": 0,
                             "wall_s": None, "progress": ""})
    return rows


def format_study_status(rows: list[dict[str, Any]]) -> str:
    head = ("unit", "status", "attempts", "wall", "progress")
    table = [head] + [(r["unit"], r["status"], str(r["attempts"]),
                       f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] else "", r["progress"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "started", "not started")}
    lines.append(f"{counts['done']} done, {counts['started']} started (running now, or stopped: the study's "
                 f"command resumes it), {counts['not started']} not started")
    return "\n".join(lines) + "\n"
