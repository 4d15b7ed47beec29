"""Small agents and batches shared by the algo tests (CPU, tiny nets: each test runs in milliseconds)."""

from __future__ import annotations

import torch

from wsrl_dist.algo.agent import Agent, make_agent
from wsrl_dist.algo.nets import NetConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch

OBS, ACT = 5, 3


def tiny_net(**kw) -> NetConfig:
    base = dict(actor_hidden=[16, 16], critic_hidden=[16, 16], layer_norm=True, kernel_scale_final=None)
    return NetConfig(**{**base, **kw})


def tiny_sac(**kw) -> SACConfig:
    base = dict(critic_ensemble_size=4, critic_subsample_size=2, batch_size=8, utd=3)
    return SACConfig(**{**base, **kw})


def tiny_agent(seed: int = 0, net: NetConfig | None = None, sac: SACConfig | None = None, **kw) -> Agent:
    torch.manual_seed(seed)
    return make_agent(OBS, ACT, net or tiny_net(), sac or tiny_sac(), **kw)


def random_batch(n: int, seed: int = 1, mc_returns: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        observations=torch.randn(n, OBS, generator=g),
        actions=torch.rand(n, ACT, generator=g) * 1.8 - 0.9,
        rewards=torch.randn(n, generator=g),
        next_observations=torch.randn(n, OBS, generator=g),
        masks=(torch.rand(n, generator=g) > 0.2).float(),
        mc_returns=torch.randn(n, generator=g) if mc_returns else None,
    )


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def adam_steps(opt: torch.optim.Optimizer) -> list[int]:
    """Adam's step count of every parameter (0 where Adam has not stepped it yet)."""
    return [int(opt.state[p]["step"]) if p in opt.state else 0 for g in opt.param_groups for p in g["params"]]
