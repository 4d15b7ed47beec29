"""Job checkpoints: learner state + replay shard snapshots + counters under <run_dir>/checkpoints.

Layout: checkpoints/step_<env_steps>/{learner.pt, shard_<i>.npz, meta.json, DONE} and
checkpoints/LATEST naming the newest one (for people and older readers; resuming scans the step_*
directories itself). No pickle: the learner state (agent, Adam, temperature, limiter, weight
version, RNG) goes through torch.save and loads with weights_only=True; shard rows go through
np.savez and their counters through JSON.

Like Reverb's checkpointer, a checkpoint counts only once its DONE marker exists, written last:
every file is fsynced in a temporary directory, then DONE (the size of each file), then the
directory is renamed into place and the parent fsynced. Resuming (`load_newest`) takes the newest
complete checkpoint whose files load, and falls back to the one before with a one-line warning
naming what was wrong; pruning keeps the `keep` newest complete ones, so the last good checkpoint is
never removed for a broken newer one. Stale `.tmp-*` directories of killed saves are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsrl_dist.durable import fsync_dir as _fsync_dir
from wsrl_dist.durable import replace_durably, write_durably
from wsrl_dist.errors import CheckpointError

LATEST = "LATEST"
DONE = "DONE"
FORMAT = 2  # meta.json "format": 2 checkpoints have a DONE marker; older ones (no key) do not
log = logging.getLogger(__name__)


def remove_stale_temps(root: Path) -> None:
    """`.tmp-*` directories left by saves killed mid-write: never complete, never read."""
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save(run_dir: str | Path, learner_state: dict[str, Any], shard_states: list[dict[str, Any]],
         counters: dict[str, Any], keep: int = 2) -> Path:
    """Write one checkpoint named after counters["env_steps"]; returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    name = f"step_{int(counters['env_steps']):010d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    write_durably(tmp / "learner.pt", lambda f: torch.save(learner_state, f))
    shard_meta = []
    for i, st in enumerate(shard_states):
        ring = dict(st["ring"])
        arrays = ring.pop("arrays")
        write_durably(tmp / f"shard_{i}.npz", lambda f, a=arrays: np.savez(f, **a))
        shard_meta.append({"ring": ring, "meta": st["meta"]})
    meta = {"format": FORMAT, "counters": counters, "shards": shard_meta}
    write_durably(tmp / "meta.json", lambda f: f.write(json.dumps(meta).encode()))
    sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
    write_durably(tmp / DONE, lambda f: f.write(json.dumps({"files": sizes}).encode()))  # last
    _fsync_dir(tmp)
    final = root / name
    if final.exists():  # same env-step count saved twice (e.g. the last periodic one and the final)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    replace_durably(root / LATEST, lambda f: f.write(name.encode()))
    _prune(root, keep, keep_name=name)
    return final


def _prune(root: Path, keep: int, keep_name: str) -> None:
    """Keep the `keep` newest complete checkpoints (and `keep_name`); incomplete ones older than
    those go too. A broken newer checkpoint never pushes the last good one out."""
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    complete = [p for p in steps if problem(p) is None]
    kept = set(complete[-keep:]) | {root / keep_name}
    oldest_kept = min(kept)
    for old in steps:
        if old not in kept and (old in complete or old < oldest_kept):
            shutil.rmtree(old, ignore_errors=True)


def problem(path: Path) -> str | None:
    """Why checkpoint directory `path` is not complete (cheap: marker, sizes, meta.json), or None."""
    path = Path(path)
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError) as e:
        return f"meta.json is unreadable ({e})"
    if not isinstance(meta, dict) or not isinstance(meta.get("counters"), dict):
        return "meta.json has no counters"
    done = path / DONE
    if meta.get("format", 1) < FORMAT and not done.exists():
        return None  # written before the DONE marker existed: its files are checked when loaded
    try:
        sizes = json.loads(done.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"the {DONE} marker is missing (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"the {DONE} marker is unreadable ({e})"
    for fname, size in sizes.items():
        f = path / fname
        if not f.is_file():
            return f"{fname} is missing"
        if f.stat().st_size != size:
            return f"{fname} has {f.stat().st_size} bytes, {size} were written (truncated?)"
    return None


def latest(run_dir: str | Path) -> Path | None:
    """Newest complete checkpoint directory (marker and sizes checked, files not read), or None."""
    root = Path(run_dir) / "checkpoints"
    for path in sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True):
        if problem(path) is None:
            return path
    return None


def load(path: str | Path, map_location: str = "cpu") -> tuple[dict, list[dict], dict]:
    """(learner_state, shard_states, counters) as `save` got them. CheckpointError naming the
    checkpoint and the file when it is incomplete or a file does not load."""
    path = Path(path)
    why = problem(path)
    if why is not None:
        raise CheckpointError(f"{path}: {why}")
    meta, learner_state = _meta_and_learner(path, map_location)
    shards = []
    for i, sm in enumerate(meta["shards"]):
        f = path / f"shard_{i}.npz"
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError
            raise CheckpointError(f"{f}: does not load ({type(e).__name__}: {e})") from e
        ring = dict(sm["ring"])
        ring["extra_fields"] = {k: (tuple(s), d) for k, (s, d) in ring["extra_fields"].items()}
        ring["arrays"] = arrays
        shards.append({"ring": ring, "meta": sm["meta"]})
    return learner_state, shards, meta["counters"]


def _meta_and_learner(path: Path, map_location: str) -> tuple[dict, dict]:
    """meta.json and the loaded learner state of complete checkpoint `path`; CheckpointError naming
    the file that does not load."""
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if not isinstance(meta.get("shards"), list):
        raise CheckpointError(f"{path / 'meta.json'}: has no shard list")
    try:
        learner_state = torch.load(path / "learner.pt", map_location=map_location, weights_only=True)
    except Exception as e:  # PytorchStreamReader, EOFError, pickle errors: one line naming the file
        raise CheckpointError(f"{path / 'learner.pt'}: does not load ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from e
    return meta, learner_state


def verify(path: str | Path) -> None:
    """CheckpointError (as `load` words it) unless checkpoint `path` would load, without holding its
    replay: problem(), the learner state loaded, and each shard_<i>.npz's CRC-32s checked while its
    bytes stream through (zipfile.testzip; np.savez stores a CRC per array), not built into arrays.
    What a multi-seed resume checks of every seed before it picks a step (seedgroup.resume_points)."""
    path = Path(path)
    why = problem(path)
    if why is not None:
        raise CheckpointError(f"{path}: {why}")
    meta, _ = _meta_and_learner(path, "cpu")
    for i in range(len(meta["shards"])):
        f = path / f"shard_{i}.npz"
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except Exception as e:  # zipfile.BadZipFile, EOFError, OSError
            raise CheckpointError(f"{f}: does not load ({type(e).__name__}: {e})") from e
        if bad is not None:
            raise CheckpointError(f"{f}: does not load ({bad} fails its CRC check)")


@dataclass
class Loaded:
    path: Path
    learner_state: dict
    shard_states: list[dict]
    counters: dict

    @property
    def states(self) -> tuple[dict, list[dict], dict]:
        return self.learner_state, self.shard_states, self.counters


def check_config(path: Path, counters: dict, config_hash: str | None, force_config: bool) -> None:
    """CheckpointError unless the checkpoint at `path` (its `counters`) was written by a config
    hashing to `config_hash` (None, or `force_config`: any; checkpoints without a hash pass)."""
    saved = counters.get("config_hash")
    if config_hash is not None and saved is not None and saved != config_hash and not force_config:
        raise CheckpointError(
            f"{path}: written by config {saved}, this config hashes to {config_hash} "
            "(config.yaml or the code's defaults changed); resume with --force-config to use it anyway")


def load_newest(run_dir: str | Path, config_hash: str | None = None, force_config: bool = False,
                map_location: str = "cpu") -> Loaded | None:
    """The newest checkpoint of `run_dir` that loads; a broken newer one is skipped with a one-line
    warning naming what is wrong. None when there is no checkpoint at all. CheckpointError when
    checkpoints exist but none loads (starting over would later prune them), or when the one found
    was written by a config whose hash differs from `config_hash` (unless `force_config`)."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        remove_stale_temps(root)
    candidates = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    errors = []
    for path in candidates:
        try:
            found = Loaded(path, *load(path, map_location))
        except CheckpointError as e:
            errors.append(str(e))
            log.warning("checkpoint skipped: %s; trying the one before", e)
            continue
        check_config(path, found.counters, config_hash, force_config)
        return found
    if errors:
        raise CheckpointError(f"{root}: no checkpoint loads ({'; '.join(errors)})")
    return None
