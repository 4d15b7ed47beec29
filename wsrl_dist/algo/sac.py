"""SAC losses of the online phase (wsrl-reference 1.4): ensemble TD target, actor, temperature.

Pure functions over modules and tensors; optimizer steps live in update.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wsrl_dist.algo.nets import EnsembleCritic, Scalar, TanhGaussianActor
from wsrl_dist.algo.types import Batch


@dataclass
class SACConfig:
    """Online SAC hyperparameters, official WSRL names (wsrl-reference 2.1)."""

    discount: float = 0.99
    soft_target_update_rate: float = 0.005
    critic_ensemble_size: int = 10
    critic_subsample_size: int = 2
    backup_entropy: bool = False
    max_target_backup: bool = False  # antmaze: max over n sampled next actions
    n_backup_actions: int = 10
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 1e-4
    temperature_init: float = 1.0
    target_entropy: float | None = None  # None -> -action_dim
    batch_size: int = 256  # per critic update
    utd: int = 4  # critic updates per env step; one actor+temperature update on utd*batch_size rows
    # The official code steps every Adam on every sub-update (zero grads for the idle networks), so
    # idle networks still move by momentum (wsrl-reference-full gotcha 2). True reproduces it.
    ghost_adam_steps: bool = True

    def validate(self) -> None:
        if not 1 <= self.critic_subsample_size <= self.critic_ensemble_size:
            raise ValueError(
                "sac.critic_subsample_size must be in [1, sac.critic_ensemble_size], got "
                f"{self.critic_subsample_size} with ensemble {self.critic_ensemble_size}"
            )
        for name in ("actor_lr", "critic_lr", "temperature_lr", "batch_size", "utd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sac.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"sac.discount must be in (0, 1], got {self.discount}")


def sample_members(ensemble: int, k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """k member indices drawn uniformly WITH replacement (the reference's randint) [k]."""
    return torch.randint(ensemble, (k,), device=device)


def subsampled_min(q: torch.Tensor, k: int) -> torch.Tensor:
    """q [E, ...] -> min over k members drawn uniformly WITH replacement (reference: randint) [...]."""
    return q.index_select(0, sample_members(q.shape[0], k, q.device)).min(0).values


def td_target(
    batch: Batch,
    actor: TanhGaussianActor,
    target_critic: EnsembleCritic,
    temperature: Scalar,
    cfg: SACConfig,
    max_target_backup: bool | None = None,
    n_backup: int | None = None,
) -> torch.Tensor:
    """y = r + gamma * mask * Qbar(s', a') [B]; no gradient flows through it.
    `max_target_backup` and `n_backup` override cfg's max_target_backup and n_backup_actions (CQL
    pre-training sets its own: cql_max_target_backup over cql_n_actions, as the official CQL agent)."""
    mtb = cfg.max_target_backup if max_target_backup is None else max_target_backup
    with torch.no_grad():
        s2 = batch.next_observations
        # only the k sampled target members are evaluated (the min never looks at the others); the
        # draws happen in the same order as before: next actions first, then members
        if mtb:
            n = cfg.n_backup_actions if n_backup is None else n_backup
            a2, logp2 = actor(s2, n)  # [B, n, A], [B, n]
            members = sample_members(cfg.critic_ensemble_size, cfg.critic_subsample_size, s2.device)
            s2n = s2.unsqueeze(1).expand(-1, n, -1).reshape(-1, s2.shape[-1])
            tq = target_critic(s2n, a2.reshape(-1, a2.shape[-1]), members)  # [k, B*n]
            tmin = tq.min(0).values.view(-1, n)  # [B, n]
            tmin, best = tmin.max(-1)
            logp2 = logp2.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        else:
            a2, logp2 = actor(s2)
            members = sample_members(cfg.critic_ensemble_size, cfg.critic_subsample_size, s2.device)
            tmin = target_critic(s2, a2, members).min(0).values
        if cfg.backup_entropy:
            tmin = tmin - temperature() * logp2
        return batch.rewards + cfg.discount * batch.masks * tmin


def critic_td_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain MSE averaged over members and batch: q [E, B], target [B] -> scalar (no 1/2, no Huber)."""
    return (q - target.unsqueeze(0)).pow(2).mean()


def actor_loss(
    batch: Batch, actor: TanhGaussianActor, critic: EnsembleCritic, temperature: Scalar
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha * log pi(a~|s) - min_i Q_i(s, a~) over ALL members; returns (loss, log_prob [B])."""
    a, logp = actor(batch.observations)
    q = critic(batch.observations, a).min(0).values
    return (temperature().detach() * logp - q).mean(), logp


def next_entropy(batch: Batch, actor: TanhGaussianActor, n: int | None = None) -> torch.Tensor:
    """H_hat = -mean log pi(a'|s') at the NEXT observations (reference gotcha 6); no gradient.
    `n` samples per state where the target uses n backup actions (antmaze: 10, reference 1.4)."""
    with torch.no_grad():
        _, logp2 = actor(batch.next_observations, n)
    return -logp2.mean()


def temperature_loss(
    batch: Batch, actor: TanhGaussianActor, temperature: Scalar, target_entropy: float,
    entropy: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha * (H_hat - H_target); `entropy` passes an H_hat estimated earlier (next_entropy)."""
    if entropy is None:
        entropy = next_entropy(batch, actor)
    return temperature() * (entropy - target_entropy)
