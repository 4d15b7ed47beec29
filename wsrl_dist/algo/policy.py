"""CPU policy for acting (rollout side of the data path: exported weights -> actions).

Rollout workers and evaluators hold only this: the actor network rebuilt from exported numpy weights.
"""

from __future__ import annotations

import numpy as np
import torch

from wsrl_dist.algo.nets import NetConfig, TanhGaussianActor


class Policy:
    def __init__(self, obs_dim: int, act_dim: int, net: NetConfig, seed: int = 0):
        self.actor = TanhGaussianActor(obs_dim, act_dim, net)
        self.actor.requires_grad_(False)
        self.version = -1
        self._gen = torch.Generator().manual_seed(seed)

    def load(self, weights: dict[str, np.ndarray], version: int) -> None:
        """Load exported actor weights (Agent.export_policy) stamped with their version."""
        self.actor.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})  # copies: Ray arrays are read-only
        self.version = int(version)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """obs [N, O] -> actions [N, A] in [-1, 1]: a tanh-Gaussian sample, or tanh(mean)."""
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        mean, log_std = self.actor.dist_params(o)
        if deterministic:
            return torch.tanh(mean).numpy()
        eps = torch.randn(mean.shape, generator=self._gen)
        return torch.tanh(mean + log_std.exp() * eps).numpy()
