"""Job checkpoints: learner state + replay shard snapshots + counters under <run_dir>/checkpoints.

Layout: checkpoints/step_<env_steps>/{learner.pt, shard_<i>.npz, meta.json} and checkpoints/LATEST
naming the newest complete one. No pickle: the learner state (agent, Adam, temperature, limiter,
weight version, RNG) goes through torch.save and loads with weights_only=True; shard rows go through
np.savez and their counters through JSON. A checkpoint is written into a temporary directory and
renamed into place, then LATEST is replaced atomically, so a kill at any moment leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "LATEST"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run_dir: str | Path, learner_state: dict[str, Any], shard_states: list[dict[str, Any]],
         counters: dict[str, Any], keep: int = 2) -> Path:
    """Write one checkpoint named after counters["env_steps"]; returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{int(counters['env_steps']):010d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(learner_state, tmp / "learner.pt")
    shard_meta = []
    for i, st in enumerate(shard_states):
        ring = dict(st["ring"])
        arrays = ring.pop("arrays")
        with open(tmp / f"shard_{i}.npz", "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        shard_meta.append({"ring": ring, "meta": st["meta"]})
    meta = {"counters": counters, "shards": shard_meta}
    with open(tmp / "meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    final = root / name
    if final.exists():  # same env-step count saved twice (e.g. the last periodic one and the final)
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    _prune(root, keep, keep_name=name)
    return final


def _prune(root: Path, keep: int, keep_name: str) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != keep_name:
            shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: str | Path) -> Path | None:
    """Newest complete checkpoint directory, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "meta.json").is_file() else None


def load(path: str | Path, map_location: str = "cpu") -> tuple[dict, list[dict], dict]:
    """(learner_state, shard_states, counters) as `save` got them."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    learner_state = torch.load(path / "learner.pt", map_location=map_location, weights_only=True)
    shards = []
    for i, sm in enumerate(meta["shards"]):
        with np.load(path / f"shard_{i}.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        ring = dict(sm["ring"])
        ring["extra_fields"] = {k: (tuple(s), d) for k, (s, d) in ring["extra_fields"].items()}
        ring["arrays"] = arrays
        shards.append({"ring": ring, "meta": sm["meta"]})
    return learner_state, shards, meta["counters"]
