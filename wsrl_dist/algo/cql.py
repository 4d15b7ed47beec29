"""CQL regulariser with the Cal-QL calibration as a flag (offline pre-training, wsrl-reference 2.3).

The penalty is added to the ensemble TD loss by update.py; Cal-QL lower-bounds the policy-action
Q-values inside the logsumexp by the Monte-Carlo return-to-go of the dataset transition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wsrl_dist.algo.nets import EnsembleCritic, TanhGaussianActor
from wsrl_dist.algo.types import Batch


@dataclass
class CQLConfig:
    """CQL / Cal-QL settings (official names); `use_calql` turns CQL into Cal-QL."""

    use_calql: bool = True
    cql_n_actions: int = 10
    cql_importance_sample: bool = True
    cql_temp: float = 1.0
    cql_alpha: float = 5.0  # fixed multiplier, unless cql_autotune_alpha
    cql_autotune_alpha: bool = False  # Lagrange: antmaze
    cql_target_action_gap: float = 0.8
    cql_alpha_lagrange_init: float = 1.0
    cql_alpha_lagrange_lr: float = 3e-4
    cql_max_target_backup: bool = True
    calql_bound_random_actions: bool = False
    # Speed only, no change to the math (left out of Config.hash): the fused step splits the CQL rows
    # (B * 3n per member) into this many chunks per member, so the critics' weight gradients over
    # those rows are a batch of shorter-K GEMMs summed afterwards ("split-K"). 0 = automatic
    # (fused_nets.row_split); 1 = no split. The rows are the largest GEMMs of a CQL step.
    fused_row_split: int = 0

    def validate(self) -> None:
        if self.cql_n_actions < 1:
            raise ValueError(f"cql.cql_n_actions must be >= 1, got {self.cql_n_actions}")
        if self.fused_row_split < 0:
            raise ValueError(f"cql.fused_row_split must be >= 0 (0 = automatic), got {self.fused_row_split}")
        if self.cql_alpha < 0:
            raise ValueError(f"cql.cql_alpha must be >= 0, got {self.cql_alpha}")


def cql_gap(
    batch: Batch,
    actor: TanhGaussianActor,
    critic: EnsembleCritic,
    q_data: torch.Tensor,
    cfg: CQLConfig,
    members: torch.Tensor | None = None,
) -> torch.Tensor:
    """Delta = logsumexp_a Q(s, a) - Q(s, a_data) per member: [E', B].

    q_data [E, B] is Q(s, a_data); `members` (indices) restricts the penalty to a subset, as the
    reference does with the ensemble on (only the sampled subset gets the CQL term). Only those
    members are evaluated on the 3n sampled actions: the others' values would be thrown away, and
    this is the largest forward/backward of a CQL step (B * 3n rows).
    """
    s, s2 = batch.observations, batch.next_observations
    n, bsz, act_dim = cfg.cql_n_actions, s.shape[0], batch.actions.shape[-1]
    with torch.no_grad():  # sampled actions and their log-probs are constants for the critic loss
        a_rand = torch.empty(bsz, n, act_dim, device=s.device).uniform_(-1.0, 1.0)
        a_cur, logp_cur = actor(s, n)
        a_next, logp_next = actor(s2, n)
    s_rep = s.unsqueeze(1).expand(-1, n, -1).reshape(bsz * n, -1)
    a_all = torch.cat([a_rand, a_cur, a_next], 1).reshape(bsz, 3, n, act_dim)
    # Q(s, .) for all 3n sampled actions in one ensemble call: [E, B, 3, n]
    q = torch.stack([critic(s_rep, a_all[:, k].reshape(bsz * n, act_dim), members) for k in range(3)], 0)
    q = q.view(3, q.shape[1], bsz, n).permute(1, 2, 0, 3)  # [E', B, 3, n]
    if members is not None:
        q_data = q_data.index_select(0, members)
    q_rand, q_cur, q_next = q.unbind(2)  # each [E', B, n]
    if cfg.use_calql:
        bound = batch.mc_returns
        if bound is None:
            raise ValueError("Cal-QL needs batch.mc_returns (Monte-Carlo returns-to-go)")
        bound = bound.view(1, bsz, 1)
        q_cur, q_next = torch.maximum(q_cur, bound), torch.maximum(q_next, bound)
        if cfg.calql_bound_random_actions:
            q_rand = torch.maximum(q_rand, bound)
    if cfg.cql_importance_sample:
        log_uniform = act_dim * math.log(0.5)  # density of U[-1,1]^d
        cat = torch.cat(
            [q_rand - log_uniform, q_cur - logp_cur.unsqueeze(0), q_next - logp_next.unsqueeze(0)], -1
        )
        lse = torch.logsumexp(cat / cfg.cql_temp, -1) * cfg.cql_temp
    else:
        # the official code subtracts temp * log N (wsrl/agents/cql.py, `cql_q_samples -= log(N) * temp`
        # before the tempered logsumexp): a mean over the N values at cql_temp = 1
        cat = torch.cat([q_rand, q_cur, q_next, q_data.unsqueeze(-1)], -1)
        lse = (torch.logsumexp(cat / cfg.cql_temp, -1) - math.log(cat.shape[-1])) * cfg.cql_temp
    return lse - q_data
