"""Offline pre-training stage (dataset -> CQL / Cal-QL / IQL updates -> agent to fine-tune).

Shared by the single-process pipeline (local.py) and the Ray learner (runtime/learner.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.fast import make_offline_step_fn
from wsrl_dist.algo.types import Batch
from wsrl_dist.config import RunConfig
from wsrl_dist.data.returns import mc_returns_to_go
from wsrl_dist.data.schema import OfflineDataset

ACTION_CLIP = 0.99999  # dataset actions kept off +-1 so log pi stays finite (reference gotcha 8)


def training_arrays(dataset: OfflineDataset, task, discount: float) -> dict[str, np.ndarray]:
    """Offline columns as the learner sees them: scaled rewards, clipped actions, masks, MC returns."""
    rewards = task.scale_reward(dataset.rewards).astype(np.float32)
    return {
        "observations": dataset.observations.astype(np.float32, copy=False),
        "actions": np.clip(dataset.actions, -ACTION_CLIP, ACTION_CLIP).astype(np.float32),
        "rewards": rewards,
        "next_observations": dataset.next_observations.astype(np.float32, copy=False),
        "terminals": dataset.terminals.astype(np.float32, copy=False),
        "masks": (1.0 - dataset.terminals).astype(np.float32),
        "mc_returns": mc_returns_to_go(
            rewards, dataset.terminals, dataset.timeouts, discount,
            sparse_negative_reward=task.sparse_negative_reward if task.sparse_reward else None,
        ).astype(np.float32),
    }


class DeviceSampler:
    """Uniform sampling with replacement from arrays kept on the learner's device (no host copies)."""

    def __init__(self, arrays: dict[str, np.ndarray], device: torch.device, seed: int):
        self.cols = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
        self.n = int(self.cols["rewards"].shape[0])
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(self.n, (batch_size,), device=self.gen.device, generator=self.gen)
        c = {k: v.index_select(0, idx) for k, v in self.cols.items()}
        return Batch(c["observations"], c["actions"], c["rewards"], c["next_observations"],
                     c["masks"], c.get("mc_returns"))


def pretrain_agent(
    agent: Agent,
    sampler: DeviceSampler,
    cfg: RunConfig,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    mode: str = "eager",
) -> None:
    """Run cfg.pretrain.steps offline updates (UTD 1, batch pretrain.batch_size) in place. `mode`:
    the resolved run.fast_path; a graph mode (the GPU default) replays each step as one CUDA graph
    (algo.fast.make_offline_step_fn; the agent must have capturable optimizers)."""
    pcfg = cfg.pretrain
    if pcfg.algo == "none" or pcfg.steps <= 0:
        return
    step_fn = None
    for step in range(1, pcfg.steps + 1):
        batch = sampler.sample(pcfg.batch_size)
        if step_fn is None:  # built on the first batch: a CUDA graph captures with a real one
            step_fn = make_offline_step_fn(agent, pcfg.algo, cfg.sac, pcfg.cql, pcfg.iql, mode, batch)
        info = step_fn(batch)
        if on_log is not None and (step % cfg.run.log_every == 0 or step == pcfg.steps):
            on_log(step, {k: float(v) for k, v in info.items()})  # CPU-GPU sync, once per log interval
        if progress is not None:
            progress(1)
