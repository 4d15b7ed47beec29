"""Tensor containers passed into the update bundles (algo layer: replay batches -> update.py).

Shapes: B = batch rows, O = obs dim, A = action dim, E = ensemble members.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """One training batch. `mc_returns` is only needed by Cal-QL."""

    observations: torch.Tensor  # [B, O]
    actions: torch.Tensor  # [B, A]
    rewards: torch.Tensor  # [B] scaled rewards r' = scale * r + bias
    next_observations: torch.Tensor  # [B, O]
    masks: torch.Tensor  # [B] 1 - terminated (bootstrap unless the episode terminated)
    mc_returns: torch.Tensor | None = None  # [B]

    def split(self, n: int) -> list[Batch]:
        """Split in order into n equal minibatches (the reference's UTD split)."""
        parts = [t.chunk(n) if t is not None else [None] * n for t in self]
        return [Batch(*cols) for cols in zip(*parts)]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) if t is not None else None for t in self))


def batch_from_numpy(arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> Batch:
    """Build a Batch from replay columns (see docs/CONVENTIONS.md); `masks` derived if absent."""
    masks = arrays.get("masks")
    if masks is None:
        masks = 1.0 - arrays["terminals"]

    def t(x: np.ndarray | None) -> torch.Tensor | None:
        if x is None:
            return None
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)

    return Batch(
        t(arrays["observations"]),
        t(arrays["actions"]),
        t(arrays["rewards"]),
        t(arrays["next_observations"]),
        t(masks),
        t(arrays.get("mc_returns")),
    )
