"""`wsrl-dist report --study DEST --merge SRC [SRC ...]`: one study run in parts on several machines
(`wsrl-dist study ... --tasks` on each, or time-boxed calls on lent GPUs) brought into one study dir.

Each SRC is a study dir of the same study (its study.yaml must match DEST's). What moves:
- results: SRC's CSV rows of every (task, method, seed) whose run dir SRC holds with its metrics.jsonl
  (the work SRC did) replace DEST's rows of those keys, and SRC's rows of keys DEST lacks are added;
  a key DEST also holds a run dir with metrics for is refused (two runs of one seed: keep one);
- manifest.json: SRC's records of units DEST lacks or has not finished; a unit both ran with
  different config hashes is refused (not the same experiment);
- pretrain/<task>-s<seed>/: the small files (run.json, config.yaml, results.md), never checkpoints.
  Where DEST already holds a pre-training's files and SRC's differ, SRC pre-trained that (task, seed)
  again (its checkpoint lived on DEST's machine only): DEST's stay, since its earlier cells started
  from them, and SRC's go to pretrain-rebuilds/<SRC's name>/<task>-s<seed>/ beside them, each named
  in `notes`; the cells SRC brings started from those.
Run dirs themselves stay where they are: DEST keeps their metrics as CSV rows, as a committed study
dir does (ops/study_report.reduce_runs keeps CSV rows of runs whose dirs are gone). Everything is
checked before anything is written, and SRC is only read. DEST's figures and table are redrawn after.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from wsrl_dist.errors import ProjectError
from wsrl_dist.ops.study_report import reduced_tables, write_tables

TABLES = ("runs", "evals", "train", "q_probe")
PRETRAIN_FILES = ("run.json", "config.yaml", "results.md")


class StudyMergeError(ProjectError, ValueError):
    """A merge that would mix two studies, or two runs of one seed."""


def _key(r: dict[str, Any]) -> tuple[str, str, str]:
    return (r["task"], r["method"], str(r["seed"]))


def _manifest(d: Path) -> dict[str, Any]:
    path = d / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_same_study(dest: Path, src: Path) -> None:
    for d in (dest, src):
        if not (d / "study.yaml").is_file():
            raise StudyMergeError(f"{d}: no study.yaml: not a study dir (made by `wsrl-dist study`)")
    a, b = (yaml.safe_load((d / "study.yaml").read_text()) for d in (dest, src))
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise StudyMergeError(f"{src} is another study than {dest}: their study.yaml differ in {diff}")


def _merged_manifest(dest_m: dict[str, Any], src_m: dict[str, Any], src: Path) -> dict[str, Any]:
    extra = [m.get("extra_overrides") for m in (dest_m, src_m)]
    if all(e is not None for e in extra) and extra[0] != extra[1]:
        raise StudyMergeError(f"{src} ran the study with the overrides {extra[1]}, the study dir with {extra[0]}")
    out = copy.deepcopy(dest_m) if dest_m else {k: v for k, v in src_m.items()
                                                         if k not in ("pretrain", "cells")}
    for table in ("pretrain", "cells"):
        mine = out.setdefault(table, {})
        for uid, rec in src_m.get(table, {}).items():
            old = mine.get(uid)
            if old and old.get("config_hash") != rec.get("config_hash"):
                raise StudyMergeError(f"{uid}: {src} ran it with config {rec.get('config_hash')}, the study dir "
                                      f"with config {old.get('config_hash')}: not the same run")
            if old is None or (old.get("status") != "done" and rec.get("status") == "done"):
                mine[uid] = rec
    return out


def merge_studies(dest: str | Path, sources: list[str | Path],
                  notes: list[str] | None = None) -> dict[str, list[tuple[str, str, str]]]:
    """Bring each SRC into DEST (see the module doc). Returns {src: the keys whose rows it brought};
    `notes` gets a line for each pre-training put aside as a rebuild."""
    dest = Path(dest)
    tables, dest_measured = reduced_tables(dest)  # DEST's CSVs, and the rows of run dirs it holds
    manifest = _manifest(dest)
    brought: dict[str, list[tuple[str, str, str]]] = {}
    pretrain_copies: list[tuple[Path, Path]] = []
    for src in map(Path, sources):
        if src.resolve() == dest.resolve():
            raise StudyMergeError(f"{src}: merging a study dir into itself")
        _check_same_study(dest, src)
        src_tables, src_measured = reduced_tables(src)
        clash = sorted(src_measured & dest_measured)
        if clash:
            raise StudyMergeError(f"{src} and {dest} both hold run dirs with metrics for {clash}: "
                                  "two runs of one seed; remove one of them first")
        have = {_key(r) for r in tables["runs"]}
        take = src_measured | ({_key(r) for r in src_tables["runs"]} - have)
        for name in TABLES:
            tables[name] = ([r for r in tables[name] if _key(r) not in take]
                            + [r for r in src_tables[name] if _key(r) in take])
        dest_measured |= src_measured
        manifest = _merged_manifest(manifest, _manifest(src), src)
        for pre in sorted((src / "pretrain").glob("*/")):
            files = [f for f in PRETRAIN_FILES if (pre / f).is_file()]
            mine = dest / "pretrain" / pre.name
            if any((mine / f).is_file() and (mine / f).read_bytes() != (pre / f).read_bytes() for f in files):
                aside = dest / "pretrain-rebuilds" / src.name / pre.name
                if notes is not None:
                    notes.append(f"{src}: pre-trained {pre.name} again: kept the study's, this one in {aside}")
                mine = aside
            pretrain_copies += [(pre / f, mine / f) for f in files]
        brought[str(src)] = sorted(take)
    # everything checked: now write
    write_tables(dest / "results", tables)
    for a, b in pretrain_copies:
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, b)
    if manifest:
        tmp = dest / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, dest / "manifest.json")
    return brought
