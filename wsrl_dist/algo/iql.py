"""IQL losses (a pre-training baseline, wsrl-reference 2.4): expectile value, TD to V, AWR actor.

Deviation: the reference IQL actor is an untanhed Gaussian; we reuse the tanh-Gaussian actor (log-prob
of dataset actions clipped to +-0.99999) so the pre-trained policy plugs straight into WSRL's SAC.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wsrl_dist.algo.nets import EnsembleCritic, TanhGaussianActor, ValueNet
from wsrl_dist.algo.types import Batch


@dataclass
class IQLConfig:
    expectile: float = 0.7
    temperature: float = 3.0  # AWR inverse temperature beta
    max_weight: float = 100.0

    def validate(self) -> None:
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"iql.expectile must be in (0, 1), got {self.expectile}")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """|tau - 1(diff < 0)| * diff^2, averaged; diff = Q - V."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean()


def value_loss(batch: Batch, value: ValueNet, target_critic: EnsembleCritic, cfg: IQLConfig) -> torch.Tensor:
    with torch.no_grad():
        q = target_critic(batch.observations, batch.actions).min(0).values
    return expectile_loss(q - value(batch.observations), cfg.expectile)


def critic_target(batch: Batch, value: ValueNet, discount: float) -> torch.Tensor:
    """y = r + gamma * mask * V(s') [B]."""
    with torch.no_grad():
        return batch.rewards + discount * batch.masks * value(batch.next_observations)


def awr_actor_loss(
    batch: Batch, actor: TanhGaussianActor, value: ValueNet, target_critic: EnsembleCritic, cfg: IQLConfig
) -> torch.Tensor:
    """-exp(beta * (Q - V)) clipped at max_weight, times log pi(a_data|s)."""
    with torch.no_grad():
        adv = target_critic(batch.observations, batch.actions).min(0).values - value(batch.observations)
        weight = torch.exp(cfg.temperature * adv).clamp(max=cfg.max_weight)
    return -(weight * actor.log_prob(batch.observations, batch.actions)).mean()
