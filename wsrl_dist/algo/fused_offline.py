"""The fused offline pre-training step: `update.cql_step`'s math (CQL / Cal-QL, fixed alpha or the
Lagrange multiplier) written for speed, for S seeds at once.

Same tricks as the online bundle (algo/fused.py, whose building blocks it reuses): every network's
parameters, Adam moments and step count live in one flat buffer per role ([S, ...]; the agents'
modules and optimizer states are views into them, so checkpoints and `agent.state_dict()` see the
same numbers), gradients come from torch.func.grad of a pure loss, one Adam / Polyak update is a few
elementwise ops on one tensor, and seeds are a leading batch dim of every matmul. Specific to the
offline step:
- Every policy sample of the pre-update actor (the TD target's next actions, CQL's current- and
  next-state actions, the temperature loss's entropy samples) comes from ONE actor forward where
  their sample counts agree (cql_max_target_backup, the default): the official step evaluates all
  losses at the parameters before the update, so they all see the same actor.
- Only the k sampled members are evaluated on the 3n CQL actions (as update.cql_step).
All randomness is drawn in `draw_noise` and passed in, so the step is a pure function of
(state, batch, noise): testable against the eager step with pinned noise, compilable and capturable
in one CUDA graph whole. IQL has no fused step (it keeps the CUDA-graphed eager step, algo/fast.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsrl_dist.algo import fused as fused_lib
from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.cql import CQLConfig
from wsrl_dist.algo.fused import FlatLayout, FusedState, Spec, Tensors
from wsrl_dist.algo.fused_nets import row_split
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch

FUSED_OFFLINE_ALGOS = ("cql", "calql")


# Local wrappers: the only two places that call fused.py's networks (their signatures may change
# with the shared Q head; adapting is these two functions).
def _pi(spec: Spec, p: Tensors, obs: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return fused_lib.actor_sample(spec.actor, p, obs, eps, spec.matmul_dtype)


def _q(spec: Spec, p: Tensors, obs: torch.Tensor, act: torch.Tensor, split: int = 1) -> torch.Tensor:
    return fused_lib.critic_q(p, spec.critic_layers, spec.layer_norm, obs, act, spec.matmul_dtype, split)


class OfflineNoise(NamedTuple):
    next_eps: torch.Tensor  # [S, B, (n,) A] TD target's next actions (n with cql_max_target_backup)
    target_members: torch.Tensor  # [S, k] target members, drawn with replacement
    cql_members: torch.Tensor  # [S, k] members that get the CQL penalty
    random_actions: torch.Tensor  # [S, B, n, A] U[-1, 1]
    cur_eps: torch.Tensor  # [S, B, n, A] CQL's policy actions at s
    next_cql_eps: torch.Tensor  # [S, B, n, A] CQL's policy actions at s'
    actor_eps: torch.Tensor  # [S, B, A] actor-loss samples at s
    entropy_eps: torch.Tensor  # [S, B, (n,) A] temperature-loss samples at s'


@dataclass(frozen=True)
class OfflineSpec:
    """Static shapes and hyperparameters of one fused offline step."""

    net: Spec  # layouts, actor plan, critic shape, target entropy (fused.make_spec)
    cql: CQLConfig  # use_calql already set from the algorithm
    lagrange_lr: float

    @property
    def sac(self) -> SACConfig:
        return self.net.sac


def make_offline_spec(agent: Agent, algo: str, sac: SACConfig, cql: CQLConfig) -> OfflineSpec:
    if algo not in FUSED_OFFLINE_ALGOS:
        raise ValueError(f"the fused offline step runs {FUSED_OFFLINE_ALGOS}, not {algo!r} "
                         "(IQL keeps the eager step, CUDA-graphed on a GPU)")
    cql = replace(cql, use_calql=algo == "calql")
    if cql.cql_autotune_alpha and agent.lagrange is None:
        raise ValueError("cql_autotune_alpha needs an agent made with lagrange_init")
    return OfflineSpec(fused_lib.make_spec(agent, sac), cql, float(cql.cql_alpha_lagrange_lr))


def draw_noise(spec: OfflineSpec, seeds: int, rows: int, device: torch.device) -> OfflineNoise:
    c, n, a = spec.sac, spec.cql.cql_n_actions, spec.net.act_dim
    extra = (n,) if spec.cql.cql_max_target_backup else ()
    k = (seeds, c.critic_subsample_size)
    return OfflineNoise(
        torch.randn(seeds, rows, *extra, a, device=device),
        torch.randint(c.critic_ensemble_size, k, device=device),
        torch.randint(c.critic_ensemble_size, k, device=device),
        torch.empty(seeds, rows, n, a, device=device).uniform_(-1.0, 1.0),
        torch.randn(seeds, rows, n, a, device=device),
        torch.randn(seeds, rows, n, a, device=device),
        torch.randn(seeds, rows, a, device=device),
        torch.randn(seeds, rows, *extra, a, device=device),
    )


def _sample_together(spec: Spec, p: Tensors, parts: list[tuple[torch.Tensor, torch.Tensor]]
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """actor_sample of several (obs [S, R_i, O], eps [S, R_i, ...]) with ONE forward per group of
    equally shaped noise (rows concatenated): one actor's samples for different losses."""
    out: list = [None] * len(parts)
    groups: dict[tuple, list[int]] = {}
    for i, (_, eps) in enumerate(parts):
        groups.setdefault(tuple(eps.shape[2:]), []).append(i)
    for idx in groups.values():
        obs = torch.cat([parts[i][0] for i in idx], 1)
        eps = torch.cat([parts[i][1] for i in idx], 1)
        acts, logps = _pi(spec, p, obs, eps)
        sizes = [parts[i][0].shape[1] for i in idx]
        for i, a, lp in zip(idx, acts.split(sizes, 1), logps.split(sizes, 1)):
            out[i] = (a, lp)
    return out


def fused_offline_step(spec: OfflineSpec, st: Tensors, batch: Batch, noise: OfflineNoise
                       ) -> tuple[Tensors, Tensors]:
    """Pure: state [S, ...] + batch [S, B, ...] + noise -> (new state, info [S]). Same math as
    update.cql_step: every loss at the pre-update parameters, then all Adam steps, then Polyak."""
    net, c, q_cfg = spec.net, spec.sac, spec.cql
    obs, act, rew, obs2, mask, mc = batch
    s_dim, bsz = obs.shape[:2]
    n = q_cfg.cql_n_actions
    clay, alay = net.critic_layout, net.actor_layout
    actor_p = alay.views(st["actor"])
    temp = st["temp"]  # [S, 1] raw
    with torch.no_grad():
        (a2, logp2), (a_cur, lp_cur), (a_nxt, lp_nxt), (_, lp_ent) = _sample_together(net, actor_p, [
            (obs2, noise.next_eps), (obs, noise.cur_eps), (obs2, noise.next_cql_eps), (obs2, noise.entropy_eps)])
        # TD target from the k sampled target members (max over n next actions: cql_max_target_backup)
        chosen = clay.gather(st["target"], noise.target_members)  # k trunks + the shared head
        if q_cfg.cql_max_target_backup:
            s2 = obs2.unsqueeze(2).expand(-1, -1, n, -1).reshape(s_dim, bsz * n, -1)
            tq = _q(net, chosen, s2, a2.reshape(s_dim, bsz * n, -1))
            tmin, best = tq.min(1).values.view(s_dim, bsz, n).max(-1)
            logp2 = logp2.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        else:
            tmin = _q(net, chosen, obs2, a2).min(1).values
        if c.backup_entropy:
            tmin = tmin - F.softplus(temp) * logp2
        y = rew + c.discount * mask * tmin  # [S, B]
        a_all = torch.cat([noise.random_actions, a_cur, a_nxt], 2)  # [S, B, 3n, A]: rand | cur | next
        s_rep = obs.unsqueeze(2).expand(-1, -1, 3 * n, -1).reshape(s_dim, bsz * 3 * n, -1)
        a_all = a_all.reshape(s_dim, bsz * 3 * n, -1)
        lag_alpha = F.softplus(st["lag"]).squeeze(-1) if q_cfg.cql_autotune_alpha else None  # [S]
    k_idx = noise.cql_members  # [S, k]

    def critic_loss(flat: torch.Tensor):  # flat [S, E * P + head]: its gradient is the buffer's
        q_data = _q(net, clay.views(flat), obs, act)  # [S, E, B]
        td = (q_data - y.unsqueeze(1)).pow(2).mean((1, 2))
        # the k penalised members' trunks (repeats allowed, each counted) and the shared Q head
        # split-K of these rows' weight gradients (fused_nets.row_split): the step's largest GEMMs
        split = row_split(s_dim * k_idx.shape[1], bsz * 3 * n, q_cfg.fused_row_split)
        qs = _q(net, clay.gather(flat, k_idx), s_rep, a_all, split)  # [S, k, B * 3n]
        q_rand, q_cur, q_next = qs.view(s_dim, -1, bsz, 3 * n).split(n, -1)  # each [S, k, B, n]
        qd = torch.gather(q_data, 1, k_idx.unsqueeze(-1).expand(-1, -1, bsz))  # [S, k, B]
        if q_cfg.use_calql:
            bound = mc.view(s_dim, 1, bsz, 1)
            q_cur, q_next = torch.maximum(q_cur, bound), torch.maximum(q_next, bound)
            if q_cfg.calql_bound_random_actions:
                q_rand = torch.maximum(q_rand, bound)
        temp_c = q_cfg.cql_temp
        if q_cfg.cql_importance_sample:
            log_uniform = net.act_dim * math.log(0.5)
            cat = torch.cat([q_rand - log_uniform, q_cur - lp_cur.unsqueeze(1), q_next - lp_nxt.unsqueeze(1)], -1)
            lse = torch.logsumexp(cat / temp_c, -1) * temp_c
        else:
            cat = torch.cat([q_rand, q_cur, q_next, qd.unsqueeze(-1)], -1)
            lse = (torch.logsumexp(cat / temp_c, -1) - math.log(cat.shape[-1])) * temp_c
        gap = (lse - qd).mean((1, 2))  # [S]
        if lag_alpha is not None:
            penalty = lag_alpha * (gap - q_cfg.cql_target_action_gap)
        else:
            penalty = q_cfg.cql_alpha * gap
        return (td + penalty).sum(), (td.detach(), gap.detach(), q_data.detach().mean((1, 2)))

    alpha = F.softplus(temp)  # [S, 1]
    critic_now = clay.views(st["critic"])

    def actor_loss(flat: torch.Tensor):
        a_new, logp = _pi(net, alay.views(flat), obs, noise.actor_eps)
        qmin = _q(net, critic_now, obs, a_new).min(1).values
        per_seed = (alpha * logp - qmin).mean(1)
        return per_seed.sum(), (per_seed.detach(), logp.detach())

    g_q, (td, gap, q_mean) = torch.func.grad(critic_loss, has_aux=True)(st["critic"])
    g_a, (loss_pi, logp) = torch.func.grad(actor_loss, has_aux=True)(st["actor"])
    with torch.no_grad():
        entropy = -lp_ent.reshape(s_dim, -1).mean(1, keepdim=True)  # [S, 1]
        g_t = torch.sigmoid(temp) * (entropy - net.target_entropy)  # d/d raw of softplus(raw) * (H - H*)
    new: Tensors = {}
    new["critic"], new["critic_m"], new["critic_v"], new["critic_t"] = fused_lib.adam(
        st["critic"], g_q, st["critic_m"], st["critic_v"], st["critic_t"], c.critic_lr)
    new["actor"], new["actor_m"], new["actor_v"], new["actor_t"] = fused_lib.adam(
        st["actor"], g_a, st["actor_m"], st["actor_v"], st["actor_t"], c.actor_lr)
    new["temp"], new["temp_m"], new["temp_v"], new["temp_t"] = fused_lib.adam(
        temp, g_t, st["temp_m"], st["temp_v"], st["temp_t"], c.temperature_lr)
    info = {"actor_loss": loss_pi, "entropy": -logp.mean(1), "temperature": F.softplus(new["temp"]).squeeze(-1),
            "critic_loss": td, "cql_gap": gap, "q_mean": q_mean}
    if lag_alpha is not None:
        # d/d raw of -softplus(raw) * (gap - target) at the pre-update gap (update.cql_step)
        g_l = -torch.sigmoid(st["lag"]) * (gap - q_cfg.cql_target_action_gap).unsqueeze(-1)
        new["lag"], new["lag_m"], new["lag_v"], new["lag_t"] = fused_lib.adam(
            st["lag"], g_l, st["lag_m"], st["lag_v"], st["lag_t"], spec.lagrange_lr)
        info["cql_alpha"] = lag_alpha
    new["target"] = torch.lerp(st["target"], new["critic"], c.soft_target_update_rate)
    return new, info


class OfflineState(FusedState):
    """fused.FusedState plus, when the agents have one, the CQL Lagrange multiplier's flat buffers
    (`lag`, [S, 1], with its Adam moments and step count), bound like the temperature."""

    def _roles(self, ag: Agent) -> list[tuple[nn.Module, torch.optim.Optimizer, str, FlatLayout]]:
        roles = super()._roles(ag)
        if ag.lagrange is not None:
            if "lag" not in self.t:
                s, dev = len(self.agents), ag.device
                self.t.update(lag=torch.zeros(s, 1, device=dev), lag_m=torch.zeros(s, 1, device=dev),
                              lag_v=torch.zeros(s, 1, device=dev), lag_t=torch.zeros(s, device=dev))
            roles.append((ag.lagrange, ag.lagrange_opt, "lag", FlatLayout({"raw": ()})))
        return roles
