"""`wsrl-dist status --study DIR` (ops/study_status.py), on a study dir written by hand: a finished
pre-training, a cell stopped mid-online, a pre-training stopped mid-way, a cell that ran elsewhere, and
cells not started yet; the study dir has moved since (its manifest names the old paths)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from wsrl_dist.cli import main
from wsrl_dist.ops.study_status import format_study_status, last_row, study_status


def _metrics(d: Path, rows: list[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "throughput", "env_')


def _study(root: Path) -> Path:
    study, old = root / "moved" / "study", "/gone/study"
    spec = {"name": "s", "tasks": ["hopper", "walker"], "methods": ["wsrl", "rlpd"], "seeds": [0, 1]}
    manifest = {"pretrain": {
        "hopper/s0+1": {"task": "hopper", "seeds": [0, 1], "run_dir": f"{old}/pretrain/hopper-s0", "status": "done",
                        "attempts": 1, "wall_s": 120.0},
        "walker/s0+1": {"task": "walker", "seeds": [0, 1], "run_dir": f"{old}/pretrain/walker-s0",
                        "status": "running", "attempts": 1}},
        "cells": {
        "hopper/wsrl": {"task": "hopper", "method": "wsrl", "seeds": [0, 1], "multiseed": True,
                        "run_dir": f"{old}/runs/hopper/wsrl", "status": "running", "attempts": 2},
        "hopper/rlpd": {"task": "hopper", "method": "rlpd", "seeds": [0, 1], "multiseed": True,
                        "run_dir": f"{old}/runs/hopper/rlpd", "status": "running", "attempts": 1}}}
    study.mkdir(parents=True)
    (study / "study.yaml").write_text(yaml.safe_dump(spec))
    (study / "manifest.json").write_text(json.dumps(manifest))
    cell = study / "runs" / "hopper" / "wsrl"
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_text(yaml.safe_dump({"finetune": {"online_steps": 100_000}}))
    for seed, steps in ((0, 61_000), (1, 60_250)):  # lock-step seeds: the least advanced one counts
        _metrics(cell / f"seed-{seed}", [{"kind": "throughput", "stage": "online", "env_steps": steps - 9000},
                                         {"kind": "eval", "env_steps": steps},
                                         {"kind": "throughput", "stage": "online", "env_steps": steps}])
    for seed, step in ((0, 187_000), (1, 186_000)):
        d = study / "pretrain" / f"walker-s{seed}"
        _metrics(d, [{"kind": "pretrain", "step": step - 1000}, {"kind": "pretrain", "step": step}])
        (d / "config.yaml").write_text(yaml.safe_dump({"pretrain": {"steps": 250_000}}))
    return study


def test_study_status_says_how_far_each_unit_got_from_the_files_alone(tmp_path, capsys):
    study = _study(tmp_path)
    rows = {r["unit"]: r for r in study_status(study)}
    assert rows["hopper/s0+1"]["progress"] == "done" and rows["hopper/s0+1"]["status"] == "done"
    assert rows["walker/s0+1"]["progress"] == "pretrain 186,000 / 250,000 steps (74%)"
    assert rows["hopper/wsrl"]["status"] == "started" and rows["hopper/wsrl"]["attempts"] == 2
    assert rows["hopper/wsrl"]["progress"] == "online: 60,250 / 100,000 env steps (60%)"
    assert rows["hopper/rlpd"]["progress"] == "no run dir here (it ran elsewhere; a rerun here starts it over)"
    assert [u for u, r in rows.items() if r["status"] == "not started"] == ["walker/wsrl", "walker/rlpd"]

    assert main(["status", "--study", str(study)]) == 0
    out = capsys.readouterr().out
    assert out == format_study_status(study_status(study))
    assert out.splitlines()[0].split() == ["unit", "status", "attempts", "wall", "progress"]
    assert "2.0 min" in out and out.splitlines()[-1].startswith("1 done, 3 started")
    assert main(["status", "--study", str(study), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == study_status(study)


def test_last_row_reads_the_tail_and_skips_a_line_being_written(tmp_path):
    _metrics(tmp_path, [{"kind": "throughput", "env_steps": i} for i in range(20_000)])  # > the tail read
    assert last_row(tmp_path / "metrics.jsonl", "throughput") == {"kind": "throughput", "env_steps": 19_999}
    assert last_row(tmp_path / "metrics.jsonl", "eval") is None and last_row(tmp_path / "none.jsonl", "x") is None


def test_study_status_of_a_dir_that_is_no_study_is_one_line(tmp_path, capsys):
    assert main(["status", "--study", str(tmp_path)]) == 1
    assert "no manifest.json: not a study dir" in capsys.readouterr().err  # no traceback
