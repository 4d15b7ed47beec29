"""The behaviour run's checkpoint file: a killed dataset build resumes its SAC run from it.

`train_behaviour_policy` (data/builder.py) writes <run>.partial.pt every `checkpoint_every` env steps
with _save_build_partial and restores it with _load_build_partial (agent, optimizers, replay, history,
RNG states; tensors and plain types only, so it loads with weights_only=True). Apart from builder.py:
the file format and its checks are one concern, the training loop another.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from wsrl_dist.algo.agent import Agent
from wsrl_dist.data.buildspec import BuildSpec, TrainHistory, _run_hash
from wsrl_dist.data.ring import RingBuffer


def _save_build_partial(path: Path, spec: BuildSpec, agent: Agent, buf: RingBuffer, hist: TrainHistory,
                        rng: np.random.Generator, step: int, wall_s: float) -> None:
    """Atomically (temp file + rename): a kill while writing leaves the previous checkpoint. Tensors
    and plain types only, so it loads with torch.load(weights_only=True)."""
    ring = buf.state_dict()
    state = {
        "run_hash": _run_hash(spec), "step": step, "wall_s": wall_s, "agent": agent.state_dict(),
        "ring": {**{k: v for k, v in ring.items() if k != "arrays"},
                 "extra_fields": json.dumps(ring["extra_fields"]),
                 "arrays": {k: torch.from_numpy(v) for k, v in ring["arrays"].items()}},
        "history": json.dumps(hist.scalars()),
        "medium_weights": {k: torch.from_numpy(np.asarray(v)) for k, v in (hist.medium_weights or {}).items()},
        "rng": json.dumps(rng.bit_generator.state), "torch_cpu": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_build_partial(path: Path, spec: BuildSpec, agent: Agent, buf: RingBuffer, hist: TrainHistory,
                        rng: np.random.Generator) -> tuple[int, float]:
    """Restore a _save_build_partial checkpoint into fresh objects; returns (step, wall seconds so far)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: the dataset builder's checkpoint does not load ({type(e).__name__}: {e}); "
                         "remove it to train the behaviour policy from scratch") from e
    # the run's key, not the dataset's: medium and medium-replay resume the same interrupted run
    if state.get("run_hash") != _run_hash(spec):
        raise ValueError(f"{path}: written for behaviour run {state.get('run_hash')}, this build's is "
                         f"{_run_hash(spec)}; remove it to train the behaviour policy from scratch")
    step = int(state["step"])
    if not 0 < step < spec.train_steps:
        raise ValueError(f"{path}: step {step} is outside this build's 1..{spec.train_steps - 1}")
    ring = dict(state["ring"])
    ring["extra_fields"] = json.loads(ring["extra_fields"])
    ring["arrays"] = {k: v.numpy() for k, v in ring["arrays"].items()}
    cols = ring["arrays"]
    if len(cols["terminals"]) != step:
        raise ValueError(f"{path}: {len(cols['terminals'])} replay rows for step {step}")
    _end_last_episode(cols)  # the episode it was in cannot be continued (see train_behaviour_policy)
    buf.load_state_dict(ring)
    agent.load_state_dict(state["agent"])
    for k, v in json.loads(state["history"]).items():
        setattr(hist, k, v)
    hist.medium_weights = {k: v.numpy() for k, v in state["medium_weights"].items()} or None
    rng.bit_generator.state = json.loads(state["rng"])
    torch.set_rng_state(state["torch_cpu"])
    return step, float(state["wall_s"])


def _end_last_episode(cols: dict[str, np.ndarray]) -> None:
    """Mark the final row a timeout unless it terminated: the data stops mid-episode there (D4RL)."""
    if len(cols["terminals"]) and not cols["terminals"][-1]:
        cols["timeouts"][-1] = 1.0
