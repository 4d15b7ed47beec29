"""`wsrl-dist report --study DEST --merge SRC`: a study run in parts (here: hopper in DEST, as a committed
study dir holds it, CSVs only; walker2d run elsewhere, SRC, with its run dirs) becomes one study dir."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from wsrl_dist.cli import main

SPEC = {"name": "parts", "tasks": ["hopper-medium-replay-v2", "walker2d-medium-replay-v2"],
        "methods": ["wsrl"], "seeds": [0, 1], "table_steps": [0, 10000, 20000]}
FT = {"warmup_steps": 5000, "online_steps": 20000, "eval_every": 10000, "q_probe_every": 0, "q_probe_until": 0}
RUN_COLS = ["task", "method", "seed", "run_dir", "warmup_steps", "online_steps", "eval_every", "q_probe_every",
            "q_probe_until", "finished"]
EVAL_COLS = ["task", "method", "seed", "env_steps", "phase", "normalized_score", "return_mean"]


def _csv(path: Path, cols: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _manifest(units: dict[str, str]) -> dict:
    return {"name": "parts", "extra_overrides": ["finetune.online_steps=20000"], "pretrain": {},
            "cells": {uid: {"kind": "cell", "config_hash": h, "status": "done"} for uid, h in units.items()}}


def _dest(root: Path) -> Path:
    """A committed study dir: study.yaml, manifest, CSVs of hopper's wsrl (its run dirs are gone)."""
    d = root / "dest"
    d.mkdir()
    (d / "study.yaml").write_text(yaml.safe_dump(SPEC))
    (d / "manifest.json").write_text(json.dumps(_manifest({"hopper-medium-replay-v2/wsrl": "aaa"})))
    task = "hopper-medium-replay-v2"
    _csv(d / "results" / "runs.csv", RUN_COLS, [
        {"task": task, "method": "wsrl", "seed": s, "run_dir": f"runs/{task}/wsrl/seed-{s}", **FT, "finished": 1}
        for s in (0, 1)])
    _csv(d / "results" / "evals.csv", EVAL_COLS, [
        {"task": task, "method": "wsrl", "seed": s, "env_steps": x, "phase": "online",
         "normalized_score": 40 + s + x / 1000, "return_mean": 0} for s in (0, 1) for x in (0, 10000, 20000)])
    return d


def _src(root: Path, dest: Path) -> Path:
    """The machine that ran walker2d: seeded from DEST's copy, then its cell's run dirs and pre-training."""
    s = root / "src"
    shutil.copytree(dest, s)
    m = json.loads((s / "manifest.json").read_text())
    m["cells"]["walker2d-medium-replay-v2/wsrl"] = {"kind": "cell", "config_hash": "bbb", "status": "done"}
    m["pretrain"]["walker2d-medium-replay-v2/s0+1"] = {"kind": "pretrain", "config_hash": "ccc", "status": "done"}
    (s / "manifest.json").write_text(json.dumps(m))
    for seed in (0, 1):
        run = s / "runs" / "walker2d-medium-replay-v2" / "wsrl" / f"seed-{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"finetune": FT}))
        (run / "run.json").write_text(json.dumps({"finished": "2026-12-06T22:50:05", "warmup_steps": 5000}))
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"kind": "eval", "env_steps": x, "phase": "online", "normalized_score": 30 + seed + x / 500,
                        "return_mean": 1.0}) + "\n" for x in (0, 10000, 20000)))
        pre = s / "pretrain" / f"walker2d-medium-replay-v2-s{seed}"
        (pre / "checkpoints").mkdir(parents=True)
        (pre / "checkpoints" / "pretrained.pt").write_bytes(b"\0" * 1024)
        for f in ("run.json", "config.yaml", "results.md"):
            (pre / f).write_text(f"{f} of seed {seed}\n")
    return s


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_a_part_run_elsewhere_merges_into_the_study_dir(tmp_path, capsys):
    dest = _dest(tmp_path)
    src = _src(tmp_path, dest)
    src_before = _digest(src)
    hopper_before = [r for r in _rows(dest / "results" / "evals.csv")]
    assert main(["report", "--study", str(dest), "--merge", str(src)]) == 0
    assert "merged from" in capsys.readouterr().out

    evals = _rows(dest / "results" / "evals.csv")
    walker = [r for r in evals if r["task"].startswith("walker2d")]
    assert [float(r["normalized_score"]) for r in walker] == [30, 50, 70, 31, 51, 71]  # from the metrics
    assert [r for r in evals if r["task"].startswith("hopper")] == hopper_before  # untouched
    assert len(_rows(dest / "results" / "runs.csv")) == 4
    table = (dest / "results" / "table.md").read_text()
    assert "| walker2d-medium-replay-v2 | wsrl | 2 | 30.5 ± 0.5 | 50.5 ± 0.5 | 70.5 ± 0.5 |" in table, table
    assert (dest / "results" / "score_walker2d-medium-replay-v2.png").is_file()
    m = json.loads((dest / "manifest.json").read_text())
    assert set(m["cells"]) == {"hopper-medium-replay-v2/wsrl", "walker2d-medium-replay-v2/wsrl"}
    assert "walker2d-medium-replay-v2/s0+1" in m["pretrain"]
    pre = dest / "pretrain" / "walker2d-medium-replay-v2-s1"
    assert (pre / "results.md").read_text() == "results.md of seed 1\n"
    assert not (pre / "checkpoints").exists() and not (dest / "runs").exists()  # small files only
    assert _digest(src) == src_before  # the source is only read

    merged = _digest(dest / "results")
    assert main(["report", "--study", str(dest), "--merge", str(src)]) == 0  # again: nothing changes
    assert {k: v for k, v in _digest(dest / "results").items() if k.endswith(".csv")} == \
        {k: v for k, v in merged.items() if k.endswith(".csv")}


def test_a_merge_that_would_mix_studies_or_runs_is_refused_and_writes_nothing(tmp_path, capsys):
    dest = _dest(tmp_path)
    src = _src(tmp_path, dest)
    before = _digest(dest)

    other = tmp_path / "other"
    shutil.copytree(src, other)
    (other / "study.yaml").write_text(yaml.safe_dump({**SPEC, "seeds": [0, 1, 2]}))
    assert main(["report", "--study", str(dest), "--merge", str(src), str(other)]) == 1
    err = capsys.readouterr().err
    assert "StudyMergeError" in err and "another study" in err and "['seeds']" in err, err

    rerun = tmp_path / "rerun"  # the same cell run with other settings
    shutil.copytree(src, rerun)
    m = json.loads((rerun / "manifest.json").read_text())
    m["cells"]["hopper-medium-replay-v2/wsrl"]["config_hash"] = "zzz"
    (rerun / "manifest.json").write_text(json.dumps(m))
    assert main(["report", "--study", str(dest), "--merge", str(rerun)]) == 1
    assert "hopper-medium-replay-v2/wsrl" in capsys.readouterr().err

    twice = tmp_path / "twice"  # DEST holds run dirs with metrics for the same seeds as SRC
    shutil.copytree(src, twice)
    shutil.copytree(src / "runs", dest / "runs")
    assert main(["report", "--study", str(dest), "--merge", str(twice)]) == 1
    assert "two runs of one seed" in capsys.readouterr().err
    shutil.rmtree(dest / "runs")

    assert _digest(dest) == before  # every refusal came before any write (src, valid, was first)


def test_merge_without_a_study_dir_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="--merge SRC needs --study DIR"):
        main(["report", "--merge", str(tmp_path)])


def test_a_pretraining_done_again_elsewhere_is_kept_beside_the_studys_own(tmp_path, capsys):
    """SRC pre-trained walker2d again (the first pre-training's checkpoint lived on another machine):
    DEST's records of the first stay, the cells merged earlier started from them, and SRC's go to
    pretrain-rebuilds/<src>/, named in the output. Files that are equal are not put aside."""
    dest = _dest(tmp_path)
    src = _src(tmp_path, dest)
    for seed in (0, 1):  # the study's own walker2d pre-training, merged before
        pre = dest / "pretrain" / f"walker2d-medium-replay-v2-s{seed}"
        pre.mkdir(parents=True)
        for f in ("run.json", "config.yaml"):
            (pre / f).write_text(f"{f} of seed {seed}\n")  # the same as SRC's
        (pre / "results.md").write_text(f"first pre-training of seed {seed}\n")  # SRC's differs
    for d in (dest, src):  # hopper's pre-training, the same on both sides: merged as it is
        (d / "pretrain" / "hopper-medium-replay-v2-s0").mkdir(parents=True)
        (d / "pretrain" / "hopper-medium-replay-v2-s0" / "run.json").write_text("{}\n")
    assert main(["report", "--study", str(dest), "--merge", str(src)]) == 0
    out = capsys.readouterr().out
    for seed in (0, 1):
        name = f"walker2d-medium-replay-v2-s{seed}"
        assert (dest / "pretrain" / name / "results.md").read_text() == f"first pre-training of seed {seed}\n"
        aside = dest / "pretrain-rebuilds" / "src" / name
        assert (aside / "results.md").read_text() == f"results.md of seed {seed}\n"
        assert sorted(p.name for p in aside.iterdir()) == ["config.yaml", "results.md", "run.json"]
        assert f"pre-trained {name} again: kept the study's, this one in {aside}" in out
    assert not (dest / "pretrain-rebuilds" / "src" / "hopper-medium-replay-v2-s0").exists()
    assert (dest / "pretrain" / "hopper-medium-replay-v2-s0" / "run.json").read_text() == "{}\n"
