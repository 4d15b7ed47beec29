"""`wsrl-dist study STUDY.yaml`: a grid of tasks x methods x seeds run as Ray jobs, resumable.

A study YAML (configs/studies/*.yaml):

    name: locomotion
    tasks: [hopper-medium-replay-v2, ...]
    methods: [wsrl, wsrl_no_warmup, sac_scratch, rlpd, offline_continued]
    seeds: [0, 1, 2, 3]
    configs: [configs/runtime/local.yaml]   # optional: config YAMLs layered under every cell
    overrides: {finetune: {online_steps: 300000}}  # optional: shared by every cell (nested mapping)
    method_overrides: {rlpd: {...}}        # optional: per method, on top
    table_steps: [0, 5000, 25000, ...]     # optional: the report table's env steps

Study dir (default studies/<name>; `--dir`):

    study.yaml             the spec this dir was started with (a rerun with another spec is refused)
    manifest.json          every pre-training and cell: run dir, config hash, status, times
    pretrain/<task>-s<seed>/   ONE pre-training per (task, seed) (`wsrl-dist pretrain`'s run dir):
                           its checkpoints/pretrained.pt is `pretrain.checkpoint` of every method that
                           starts from a pre-trained agent (wsrl, wsrl_no_warmup, offline_*). Where the
                           step is a fused CQL / Cal-QL one (the GPU default) a task's seeds pre-train
                           in one process and loop (local.pretrain_seeds), each into its own dir
    runs/<task>/<method>/  a cell; seed-<s>/ holds each seed's single-seed run dir contents
    results/               CSVs, figures and table.md of `wsrl-dist report --study DIR`

The seeds of a cell train in one multi-seed learner (`run.seeds`, runtime/orchestration/stages.py): SAC bundles
for wsrl, wsrl_no_warmup, sac_scratch, rlpd, the pre-training loss kept online for offline_continued
and offline_retained; each seed's run dir is runs/<task>/<method>/seed-<s>/.

`--tasks T ...` / `--methods M ...` run part of the grid now; the rest can follow into the same dir.

Resuming: rerun the same command. Finished pre-trainings and cells (run.json `finished`) are skipped
untouched; a cell that was killed mid-run continues through `launch --resume` of its run dir
(driver.resume: from its newest online checkpoint, or a fresh start of its config when it had none;
metrics.jsonl then holds the killed attempt's rows before the resumed ones, and the report keeps the
later rows where the two overlap: ops/study_report.py). A killed pre-training continues from its
checkpoints/pretrain-partial.pt (`run --resume`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wsrl_dist import config
from wsrl_dist.plan import RunPlan
from wsrl_dist.study_sync import StudySync

DEFAULT_TABLE_STEPS = [0, 5_000, 25_000, 50_000, 100_000, 200_000, 300_000]
SPEC_KEYS = ("name", "tasks", "methods", "seeds", "configs", "overrides", "method_overrides", "table_steps")


@dataclass
class StudySpec:
    name: str
    tasks: list[str]
    methods: list[str]
    seeds: list[int]
    configs: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    table_steps: list[int] = field(default_factory=lambda: list(DEFAULT_TABLE_STEPS))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SPEC_KEYS}


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study YAML: every problem names its key."""
    path = Path(path)
    if not path.is_file():
        raise config.ConfigError(f"study file not found: {path}")
    data = config._read_yaml(path)
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise config.ConfigError(f"{path}: unknown study keys {unknown}; valid keys: {list(SPEC_KEYS)}")
    for key in ("name", "tasks", "methods", "seeds"):
        if key not in data:
            raise config.ConfigError(f"{path}: study key '{key}' is missing")
    spec = StudySpec(**{k: data[k] for k in SPEC_KEYS if k in data})
    if not isinstance(spec.name, str) or not spec.name.replace("-", "_").isidentifier():
        raise config.ConfigError(f"{path}: name must be a short identifier (letters, digits, - and _), got {spec.name!r}")
    for key in ("tasks", "methods", "seeds", "configs", "table_steps"):
        val = getattr(spec, key)
        if not isinstance(val, list) or (key in ("tasks", "methods", "seeds") and not val):
            raise config.ConfigError(f"{path}: {key} must be a non-empty list, got {val!r}")
        if len(set(map(str, val))) != len(val):
            raise config.ConfigError(f"{path}: {key} has repeated entries: {val}")
    for m in spec.methods:
        if m not in config.FINETUNE_METHODS:
            raise config.ConfigError(f"{path}: methods: {m!r} is not one of {list(config.FINETUNE_METHODS)}")
    config._check_seeds(spec.seeds)
    for key in ("overrides", "method_overrides"):
        if not isinstance(getattr(spec, key), dict):
            raise config.ConfigError(f"{path}: {key} must be a mapping")
    for m in spec.method_overrides:
        if m not in spec.methods:
            raise config.ConfigError(f"{path}: method_overrides: {m!r} is not one of the study's methods {spec.methods}")
    for f in spec.configs:
        if not Path(f).is_file():
            raise config.ConfigError(f"{path}: configs: file not found: {f}")
    return spec


class Study:
    def __init__(self, spec: StudySpec, study_dir: str | Path, extra: list[str] | None = None,
                 tasks: list[str] | None = None, methods: list[str] | None = None,
                 sync_to: str | None = None, sync_every: float = 60.0):
        self.spec, self.dir, self.extra = spec, Path(study_dir), list(extra or [])
        self.sync = StudySync(self.dir, sync_to, sync_every)  # --sync-to (study_sync.py); idle without
        # --tasks / --methods: run only part of the grid now (the rest later, into the same dir)
        for name, sub, full in (("--tasks", tasks, spec.tasks), ("--methods", methods, spec.methods)):
            if sub and not set(sub) <= set(full):
                raise config.ConfigError(f"study {name}: {sorted(set(sub) - set(full))} not in the study's {full}")
        self.only_tasks, self.only_methods = tasks or spec.tasks, methods or spec.methods
        self.manifest_path = self.dir / "manifest.json"

    # ------------------------------------------------------------------ configs
    def cell_config(self, task: str, method: str, seeds: list[int], run_dir: Path,
                    pretrained: str | None) -> config.RunConfig:
        """The config of one run: defaults -> wsrl.yaml -> family -> spec.configs -> overrides ->
        method_overrides -> command-line k=v -> the cell's own task, method, seeds, run dir."""
        sets = [f"task.name={task}", f"finetune.method={method}", f"run.run_dir={run_dir}",
                f"run.seeds={json.dumps(seeds)}"]
        if pretrained:
            sets.append(f"pretrain.checkpoint={pretrained}")
        cfg = config.load(self.spec.configs, [f"task.name={task}"])  # family YAML picked from the task
        config.merge(cfg, self.spec.overrides)
        config.merge(cfg, self.spec.method_overrides.get(method, {}))
        for o in [*self.extra, *sets]:
            config.merge(cfg, config.parse_override(o))
        return cfg.validate()

    def pretrain_dir(self, task: str, seed: int) -> Path:
        return self.dir / "pretrain" / f"{task}-s{seed}"

    def cell_dir(self, task: str, method: str) -> Path:
        return self.dir / "runs" / task / method

    # ------------------------------------------------------------------ manifest
    def _load_manifest(self) -> dict[str, Any]:
        spec_path = self.dir / "study.yaml"
        if spec_path.is_file():
            old = yaml.safe_load(spec_path.read_text())
            if old != self.spec.to_dict():
                raise config.ConfigError(
                    f"{self.dir} was started with another study spec ({spec_path}); use a new --dir, or "
                    f"the same spec to resume it")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(yaml.safe_dump(self.spec.to_dict(), sort_keys=False))
        if self.manifest_path.is_file():
            return json.loads(self.manifest_path.read_text())
        return {"name": self.spec.name, "extra_overrides": self.extra, "pretrain": {}, "cells": {}}

    def _save_manifest(self, m: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(m, indent=2))
        os.replace(tmp, self.manifest_path)

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[dict[str, Any]]:
        """Every unit of work in order: pre-trainings first (each (task, seed) the methods need),
        then per task the cells, each one multi-seed job or one job per seed."""
        units = []
        for task in [t for t in self.spec.tasks if t in self.only_tasks]:
            need_pre = [m for m in self.only_methods
                        if RunPlan.of(self.cell_config(task, m, [], Path("x"), None)).pretrained]
            if need_pre and self.pretrain_together(task):
                seeds = list(self.spec.seeds)
                units.append({"kind": "pretrain", "id": f"{task}/s{'+'.join(map(str, seeds))}", "task": task,
                              "seeds": seeds})
            elif need_pre:
                for seed in self.spec.seeds:
                    units.append({"kind": "pretrain", "id": f"{task}/s{seed}", "task": task, "seed": seed})
            for method in [m for m in self.spec.methods if m in self.only_methods]:
                probe = self.cell_config(task, method, [], Path("x"), None)
                pre = RunPlan.of(probe).pretrained
                multi = len(self.spec.seeds) > 1  # every method runs in the multi-seed learner
                groups = [list(self.spec.seeds)] if multi else [[s] for s in self.spec.seeds]
                for seeds in groups:
                    uid = f"{task}/{method}" + ("" if multi else f"/s{seeds[0]}")
                    units.append({"kind": "cell", "id": uid, "task": task, "method": method, "seeds": seeds,
                                  "multiseed": multi, "pretrained": pre})
        return units

    def pretrain_together(self, task: str) -> bool:
        """Pre-train a task's seeds in one process and one loop (local.pretrain_seeds) where its step
        is one S-seed fused step: CQL / Cal-QL on a fused fast path (the GPU default), as the
        multi-seed learner does (runtime/datapath/learneractor.py). Elsewhere each seed runs alone, exactly as
        `wsrl-dist pretrain` of that seed (no gain from one loop, and its own noise stream)."""
        import torch

        from wsrl_dist import job
        from wsrl_dist.algo.fast import resolve_mode
        from wsrl_dist.algo.fused_offline import FUSED_OFFLINE_ALGOS

        cfg = self.cell_config(task, "wsrl", [], Path("x"), None)
        device = job.resolve_device(cfg.run.device)
        dtype = torch.bfloat16 if cfg.run.matmul_precision == "bf16" else torch.float32
        return (len(self.spec.seeds) > 1 and cfg.pretrain.algo in FUSED_OFFLINE_ALGOS
                and resolve_mode(cfg.run.fast_path, device, dtype).startswith("fused"))

    def _pretrain_cfg(self, task: str, seed: int) -> config.RunConfig:
        """What `wsrl-dist pretrain` runs for (task, seed): the stage alone, no online steps."""
        cfg = self.cell_config(task, "wsrl", [seed], self.pretrain_dir(task, seed), None)
        config.merge(cfg, {"finetune": {"online_steps": 0}})
        return cfg.validate()

    def _unit_finished(self, u: dict[str, Any], run_dir: Path) -> bool:
        """A pre-training of several seeds is done when every seed's is (each its own dir)."""
        if u["kind"] == "pretrain" and "seeds" in u:
            return all(_finished(self.pretrain_dir(u["task"], s), u) for s in u["seeds"])
        return _finished(run_dir, u)

    def _cfg_for(self, u: dict[str, Any]) -> config.RunConfig:
        if u["kind"] == "pretrain":  # (the first seed's, for a unit of several: they differ in run.* only)
            return self._pretrain_cfg(u["task"], u.get("seed", (u.get("seeds") or [None])[0]))
        cell = self.cell_dir(u["task"], u["method"])
        run_dir = cell if u["multiseed"] else cell / f"seed-{u['seeds'][0]}"
        pre = None
        if u["pretrained"]:
            seed = "{seed}" if u["multiseed"] else str(u["seeds"][0])  # seedgroup.seed_configs fills it
            pre = str(self.dir / "pretrain" / f"{u['task']}-s{seed}" / "checkpoints" / "pretrained.pt")
        return self.cell_config(u["task"], u["method"], u["seeds"], run_dir, pre)

    # ------------------------------------------------------------------ run
    def run(self, command: str = "") -> dict[str, Any]:
        self.sync.start()
        try:
            return self._run_units(command)
        finally:
            self.sync.stop()

    def _run_units(self, command: str) -> dict[str, Any]:
        from tqdm import tqdm

        from wsrl_dist.ops.bars import bar_options, restart_rate

        m = self._load_manifest()
        units = self.plan()
        bar = tqdm(total=len(units), desc=f"study {self.spec.name}", unit="job", **bar_options())
        skipped = False
        for u in units:
            table = m["pretrain" if u["kind"] == "pretrain" else "cells"]
            cfg = self._cfg_for(u)
            run_dir = Path(cfg.run.run_dir)
            rec = table.get(u["id"])
            if rec and rec.get("config_hash") != cfg.hash():
                raise config.ConfigError(
                    f"{u['id']} in {self.dir} was run with config {rec.get('config_hash')}, this study now "
                    f"makes {cfg.hash()} (changed overrides?): use a new --dir")
            if self._unit_finished(u, run_dir):
                if not rec or rec.get("status") != "done":  # finished, but the manifest missed it
                    table[u["id"]] = {**(rec or {}), **_record(u, run_dir, cfg), "status": "done"}
                    self._save_manifest(m)
                bar.update(1)
                skipped = True
                continue
            if skipped:  # jobs/s and the ETA count the jobs that run, not the skipped ones
                restart_rate(bar)
                skipped = False
            bar.set_postfix_str(u["id"])
            started = time.time()
            table[u["id"]] = {**_record(u, run_dir, cfg), "status": "running",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "attempts": (rec or {}).get("attempts", 0) + 1}
            self._save_manifest(m)
            if u["kind"] == "pretrain":
                from wsrl_dist import local

                what = command or f"study {self.spec.name}: pretrain {u['id']}"
                if "seeds" in u:  # the seeds not finished yet, in one loop
                    todo = [s for s in u["seeds"] if not _finished(self.pretrain_dir(u["task"], s), u)]
                    cfgs = [self._pretrain_cfg(u["task"], s) for s in todo]
                    local.pretrain_seeds(cfgs, what, resume=all((Path(c.run.run_dir) / "config.yaml").is_file()
                                                                  for c in cfgs))
                else:
                    local.run(cfg, what, resume=(run_dir / "config.yaml").is_file())
            else:
                from wsrl_dist.runtime.orchestration import driver

                if (run_dir / "config.yaml").is_file():  # killed mid-run: continue it
                    driver.resume(run_dir, command or f"study {self.spec.name}: resume {u['id']}")
                else:
                    driver.launch(cfg, command or f"study {self.spec.name}: {u['id']}")
            table[u["id"]].update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                                  wall_s=round(time.time() - started, 1))
            self._save_manifest(m)
            self.sync.now()
            bar.update(1)
        bar.close()
        return m


def _record(u: dict[str, Any], run_dir: Path, cfg: config.RunConfig) -> dict[str, Any]:
    out = {k: v for k, v in u.items() if k not in ("id",)}
    return {**out, "run_dir": str(run_dir), "config_hash": cfg.hash()}


def _finished(run_dir: Path, u: dict[str, Any]) -> bool:
    """A pre-training is done when its pretrained.pt and run.json `finished` exist; a cell when its
    run.json and (multi-seed) every seed-<s>/run.json say `finished`."""
    if u["kind"] == "pretrain":  # one seed's dir (Study._unit_finished asks for each seed of a unit)
        dirs = [run_dir]
        if not (run_dir / "checkpoints" / "pretrained.pt").is_file():
            return False
    else:
        # a multi-seed job marks its top dir last, after every seed-<s>/
        dirs = [run_dir, *(run_dir / f"seed-{s}" for s in u["seeds"])] if u["multiseed"] else [run_dir]
    for d in dirs:
        path = d / "run.json"
        if not path.is_file() or "finished" not in json.loads(path.read_text()):
            return False
    return True


def main(argv: list[str]) -> int:
    """`wsrl-dist study STUDY.yaml [--dir DIR] [k=v ...]` (k=v: config overrides for every run)."""
    p = argparse.ArgumentParser(prog="wsrl-dist study")
    p.add_argument("spec", help="configs/studies/<name>.yaml")
    p.add_argument("items", nargs="*", help="key.sub=value overrides for every run of the study")
    p.add_argument("--dir", help="study directory (default studies/<name>)")
    p.add_argument("--tasks", nargs="+", help="run only these of the study's tasks now")
    p.add_argument("--methods", nargs="+", help="run only these of the study's methods now")
    p.add_argument("--sync-to", metavar="URI", help="mirror the study dir to this URI (file://, s3://, gs://, "
                   "any fsspec protocol) as it runs; a rerun on a fresh machine with the same --dir pulls it first")
    p.add_argument("--sync-every", type=float, default=60.0, metavar="S", help="seconds between mirror passes (60)")
    args = p.parse_args(argv)
    if args.sync_every <= 0:
        raise config.ConfigError(f"study: --sync-every must be > 0 seconds, got {args.sync_every}")
    # `--tasks T k=v`: argparse hands the k=v to --tasks (nargs="+"); a task name never has "="
    for name in ("tasks", "methods"):
        vals = getattr(args, name)
        if vals:
            args.items += [v for v in vals if "=" in v]
            setattr(args, name, [v for v in vals if "=" not in v] or None)
    bad = [a for a in args.items if "=" not in a]
    if bad:
        raise config.ConfigError(f"study: expected key.sub=value overrides, got {bad}")
    spec = load_spec(args.spec)
    study = Study(spec, args.dir or f"studies/{spec.name}", args.items, args.tasks, args.methods,
                  args.sync_to, args.sync_every)
    study.run()
    from wsrl_dist.ops.study_report import write_study_report

    for name, path in write_study_report(study.dir).items():
        print(f"{name}: {path}")
    study.sync.now()  # the report's files too
    print(f"study dir: {study.dir}")
    return 0
