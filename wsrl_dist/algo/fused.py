"""The fused online bundle: `update.sac_bundle`'s math written for speed, for S seeds at once.

Why a second formulation (STYLE: speed tricks live beside, not inside, the readable update):
a bundle is ~4 critic steps of tiny matmuls, so its cost is the number of kernels, not FLOPs.
This version cuts kernels without changing the math:
- Each network's parameters, Adam moments and step count live in ONE flat buffer per role
  (critic [S, E * P + shared Q head], actor [S, P], temperature [S, 1]); the agents' modules and
  optimizer states are re-pointed as views into them, so checkpoints, weight export and eager code see the same
  numbers. One Adam or one Polyak update is then a few elementwise ops on one tensor, not a
  multi-tensor loop per parameter.
- The official code steps the actor's and temperature's Adam with zero gradients during the UTD
  critic sub-steps ("ghost" steps, wsrl-reference-full gotcha 2). Those steps do not depend on the
  critic, so all UTD actor versions are computed up front and the critic targets' next actions for
  every minibatch come from ONE batched forward ([S, UTD] actor versions): exactly the actor each
  minibatch would have seen.
- Seeds are one more leading batch dim of every matmul (the "vmap-style" multi-seed learner): S
  seeds cost about one seed's kernel count.
- Target members: only the k sampled members' trunks of the target critic are gathered and
  evaluated, with the target's one shared Q head.
All randomness (policy noise, target-member draws) is drawn in `draw_noise` and passed in, so the
bundle itself is a pure function of (state, batch, noise): testable against the eager bundle with
pinned noise, and compilable / capturable whole.
Here: Adam, the noise, the bundle's update math and the flat state; the flat-buffer layouts are in
algo/fused_layout.py and the batched networks in algo/fused_nets.py (both re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.fused_layout import _ALIGN, CriticLayout, FlatLayout, Tensors
from wsrl_dist.algo.fused_nets import (  # noqa: F401 (re-exported: tests and fused_offline.py use them here)
    ActorPlan,
    _linear_t,
    _mm,
    actor_sample,
    critic_q,
)
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch

# fp16 would need loss scaling (its range is too small for unscaled gradients): not offered
MATMUL_DTYPES = (torch.float32, torch.bfloat16)


# ---------------------------------------------------------------------------------------- Adam
_B1, _B2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam / optax.adam defaults, as the agents use


def adam(p: torch.Tensor, g: torch.Tensor | None, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
         lr: float) -> tuple[torch.Tensor, ...]:
    """One Adam step on a flat buffer [S, ...] with per-seed step counts t [S]; g=None is a
    zero-gradient ("ghost") step, which still moves p by momentum."""
    t = t + 1
    if g is None:
        m, v = m * _B1, v * _B2
    else:
        m = m * _B1 + g * (1 - _B1)
        v = v * _B2 + g * g * (1 - _B2)
    tb = t.view(t.shape + (1,) * (p.dim() - 1))
    step = (m / (1 - _B1 ** tb)) / ((v / (1 - _B2 ** tb)).sqrt() + _EPS)
    return p - lr * step, m, v, t


# ---------------------------------------------------------------------------------------- bundle
class Noise(NamedTuple):
    next_eps: torch.Tensor  # [S, U, B, (n,) A] target-action noise per minibatch
    members: torch.Tensor  # [S, U, k] target members, drawn with replacement (reference: randint)
    actor_eps: torch.Tensor  # [S, U*B, A] actor-loss samples at s
    entropy_eps: torch.Tensor  # [S, U*B, (n,) A] temperature-loss samples at s'


@dataclass(frozen=True)
class Spec:
    """Static shapes and hyperparameters of one fused bundle."""

    sac: SACConfig
    actor: ActorPlan
    actor_layout: FlatLayout
    critic_layout: CriticLayout  # per-member trunks + the shared Q head
    critic_layers: int
    layer_norm: bool
    target_entropy: float
    act_dim: int
    matmul_dtype: torch.dtype = torch.float32  # float32 | bfloat16: the GEMMs' input dtype (see _mm)
    # target = min over EVERY member (clipped double Q, the dataset builder's plain SAC:
    # data/builder._critic_target) instead of over critic_subsample_size members drawn with
    # replacement (WSRL's rule, which for 2 of 2 would use one critic half of the time)
    full_min: bool = False


def draw_noise(spec: Spec, seeds: int, device: torch.device) -> Noise:
    c = spec.sac
    rows = c.utd * c.batch_size
    extra = (c.n_backup_actions,) if c.max_target_backup else ()
    return Noise(
        torch.randn(seeds, c.utd, c.batch_size, *extra, spec.act_dim, device=device),
        torch.randint(c.critic_ensemble_size, (seeds, c.utd, c.critic_subsample_size), device=device),
        torch.randn(seeds, rows, spec.act_dim, device=device),
        torch.randn(seeds, rows, *extra, spec.act_dim, device=device),
    )


STATE_KEYS = ("actor", "actor_m", "actor_v", "actor_t", "critic", "critic_m", "critic_v", "critic_t",
              "target", "temp", "temp_m", "temp_v", "temp_t")


def fused_bundle(spec: Spec, st: Tensors, batch: Batch, noise: Noise) -> tuple[Tensors, Tensors]:
    """Pure: state [S, ...] + batch [S, U*B, ...] + noise -> (new state, info [S]).
    Same schedule as update.sac_bundle (ghost steps included when sac.ghost_adam_steps)."""
    c = spec.sac
    u, bs = c.utd, c.batch_size
    s_dim = st["actor"].shape[0]
    ghost = c.ghost_adam_steps

    def mb(x: torch.Tensor) -> torch.Tensor:  # [S, U*B, ...] -> [S, U, B, ...]: the in-order UTD split
        return x.view(s_dim, u, bs, *x.shape[2:])

    obs, act, rew, obs2, mask = (mb(x) for x in batch[:5])

    def pi(p: Tensors, s: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return actor_sample(spec.actor, p, s, eps, spec.matmul_dtype)

    def qf(p: Tensors, s: torch.Tensor, a_: torch.Tensor) -> torch.Tensor:
        return critic_q(p, spec.critic_layers, spec.layer_norm, s, a_, spec.matmul_dtype)

    # Actor / temperature during the critic sub-steps: ghost Adam steps only (no critic input).
    a, am, av, at = st["actor"], st["actor_m"], st["actor_v"], st["actor_t"]
    tp, tm, tv, tt = st["temp"], st["temp_m"], st["temp_v"], st["temp_t"]
    actor_versions, temp_versions = [], []
    for _ in range(u):
        actor_versions.append(a)
        temp_versions.append(tp)
        if ghost:
            a, am, av, at = adam(a, None, am, av, at, c.actor_lr)
            tp, tm, tv, tt = adam(tp, None, tm, tv, tt, c.temperature_lr)
    with torch.no_grad():
        versions = spec.actor_layout.views(torch.stack(actor_versions, 1))  # [S, U, ...]
        next_a, next_logp = pi(versions, obs2, noise.next_eps)

    q, qm, qv, qt, target = st["critic"], st["critic_m"], st["critic_v"], st["critic_t"], st["target"]
    critic_losses, q_means = [], []
    for k in range(u):
        with torch.no_grad():
            if spec.full_min:
                chosen = spec.critic_layout.views(target)
            else:
                members = noise.members[:, k]  # [S, k]
                chosen = spec.critic_layout.gather(target, members)  # k trunks + the shared target head
            s2, a2, logp2 = obs2[:, k], next_a[:, k], next_logp[:, k]
            if c.max_target_backup:  # max over n sampled next actions of the subset min
                n = a2.shape[-2]
                s2 = s2.unsqueeze(2).expand(-1, -1, n, -1).reshape(s_dim, bs * n, -1)
                tq = qf(chosen, s2, a2.reshape(s_dim, bs * n, -1))
                tmin, best = tq.min(1).values.view(s_dim, bs, n).max(-1)
                logp2 = logp2.gather(-1, best.unsqueeze(-1)).squeeze(-1)
            else:
                tq = qf(chosen, s2, a2)
                tmin = tq.min(1).values
            if c.backup_entropy:
                tmin = tmin - F.softplus(temp_versions[k]) * logp2
            y = rew[:, k] + c.discount * mask[:, k] * tmin  # [S, B]

        def td_loss(p: Tensors, s=obs[:, k], a_=act[:, k], y=y):
            pred = qf(p, s, a_)  # [S, E, B]
            per_seed = (pred - y.unsqueeze(1)).pow(2).mean((1, 2))
            return per_seed.sum(), (per_seed.detach(), pred.detach().mean((1, 2)))

        grads, (loss_k, qmean_k) = torch.func.grad(td_loss, has_aux=True)(spec.critic_layout.views(q))
        q, qm, qv, qt = adam(q, spec.critic_layout.flatten(grads), qm, qv, qt, c.critic_lr)
        target = torch.lerp(target, q, c.soft_target_update_rate)
        critic_losses.append(loss_k)
        q_means.append(qmean_k)

    # One actor and one temperature step on all U*B rows, both from the same (pre-update) actor
    # and temperature, with the critic after its U steps (the official code's joint loss_fns).
    alpha = F.softplus(tp)  # [S, 1]
    critic_now = {k: v.detach() for k, v in spec.critic_layout.views(q).items()}
    s_all, s2_all = batch.observations, batch.next_observations

    def pi_loss(p: Tensors):
        a_new, logp = pi(p, s_all, noise.actor_eps)
        qmin = qf(critic_now, s_all, a_new).min(1).values
        per_seed = (alpha * logp - qmin).mean(1)
        return per_seed.sum(), (per_seed.detach(), logp.detach())

    actor_views = spec.actor_layout.views(a)
    grads, (loss_pi, logp) = torch.func.grad(pi_loss, has_aux=True)(actor_views)
    with torch.no_grad():
        _, logp_next = pi(actor_views, s2_all, noise.entropy_eps)
        entropy_next = -logp_next.reshape(s_dim, -1).mean(1, keepdim=True)  # [S, 1]
        # d/d raw [softplus(raw) * (H - H_target)] = sigmoid(raw) * (H - H_target)
        temp_grad = torch.sigmoid(tp) * (entropy_next - spec.target_entropy)
    a, am, av, at = adam(a, spec.actor_layout.flatten(grads, 1), am, av, at, c.actor_lr)
    tp, tm, tv, tt = adam(tp, temp_grad, tm, tv, tt, c.temperature_lr)
    if ghost:
        q, qm, qv, qt = adam(q, None, qm, qv, qt, c.critic_lr)

    new = dict(actor=a, actor_m=am, actor_v=av, actor_t=at, critic=q, critic_m=qm, critic_v=qv,
               critic_t=qt, target=target, temp=tp, temp_m=tm, temp_v=tv, temp_t=tt)
    info = {"actor_loss": loss_pi, "entropy": -logp.mean(1), "temperature": F.softplus(tp).squeeze(-1),
            "critic_loss": torch.stack(critic_losses).mean(0), "q_mean": torch.stack(q_means).mean(0)}
    return new, info


# ---------------------------------------------------------------------------------------- state
def make_spec(agent: Agent, sac: SACConfig, matmul_dtype: torch.dtype = torch.float32,
              full_min: bool = False) -> Spec:
    if matmul_dtype not in MATMUL_DTYPES:
        raise ValueError(f"fused bundle: matmul dtype {matmul_dtype} is not one of {MATMUL_DTYPES}")
    if matmul_dtype == torch.float32 and next(agent.actor.parameters()).dtype == torch.float64:
        matmul_dtype = torch.float64  # a double-precision agent (tests) is not rounded to float32 anywhere
    actor_shapes = {n: tuple(p.shape) for n, p in agent.actor.named_parameters()}
    # per-member parameters carry the ensemble as their leading dim; the shared Q head does not
    critic_params = dict(agent.critic.named_parameters())
    head_shapes = {n: tuple(p.shape) for n, p in critic_params.items() if n.startswith("head_")}
    trunk_shapes = {n: tuple(p.shape[1:]) for n, p in critic_params.items() if not n.startswith("head_")}
    # the critic's first GEMM reads [obs, act] (17 + 6 = 23 wide at locomotion sizes): stored with
    # zero rows up to a multiple of 8, its input rows and weight rows are 16-byte aligned
    k_in, out = trunk_shapes["weights.0"]
    stored = {"weights.0": (-(-k_in // _ALIGN) * _ALIGN, out)}
    critic_layout = CriticLayout(FlatLayout(trunk_shapes, _ALIGN, stored), FlatLayout(head_shapes, _ALIGN),
                                 agent.critic.ensemble)
    return Spec(sac=sac, actor=ActorPlan.of(agent.actor), actor_layout=FlatLayout(actor_shapes, _ALIGN),
                critic_layout=critic_layout, critic_layers=len(agent.critic.weights),
                layer_norm=agent.critic.layer_norm, target_entropy=agent.target_entropy,
                act_dim=agent.act_dim, matmul_dtype=matmul_dtype, full_min=full_min)


def _adam_state(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    st = opt.state.get(p)
    if not st:  # a fresh optimizer: zero moments, step 0 (what its first step would create)
        st = {"step": torch.zeros(()), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return st


class FusedState:
    """Flat buffers [S, ...] holding S agents' networks and Adam states; each agent's parameters
    and optimizer moments become views into them (same numbers, no copies, for checkpoints and
    weight export). Built from the agents' current values, so a pre-trained agent carries over."""

    def __init__(self, agents: list[Agent], spec: Spec):
        self.spec, self.agents = spec, agents
        dev = agents[0].device
        s = len(agents)
        pa, pq = spec.actor_layout.size, spec.critic_layout.size  # pq: all members and the shared head
        z = lambda *shape: torch.zeros(*shape, device=dev)  # noqa: E731
        self.t: Tensors = {
            "actor": z(s, pa), "actor_m": z(s, pa), "actor_v": z(s, pa), "actor_t": z(s),
            "critic": z(s, pq), "critic_m": z(s, pq), "critic_v": z(s, pq), "critic_t": z(s),
            "target": z(s, pq), "temp": z(s, 1), "temp_m": z(s, 1), "temp_v": z(s, 1), "temp_t": z(s),
        }
        for i, ag in enumerate(agents):
            self._bind(i, ag)

    def _roles(self, ag: Agent) -> list[tuple[nn.Module, torch.optim.Optimizer, str, FlatLayout]]:
        """(module, optimizer, flat key prefix, layout of one flat row) per bound network; the
        offline step adds the CQL Lagrange multiplier (fused_offline.OfflineState)."""
        spec = self.spec
        return [(ag.actor, ag.actor_opt, "actor", spec.actor_layout),
                (ag.critic, ag.critic_opt, "critic", spec.critic_layout),
                (ag.temperature, ag.temperature_opt, "temp", FlatLayout({"raw": ()}))]

    def _bind(self, i: int, ag: Agent) -> None:
        spec, t = self.spec, self.t
        for module, opt, key, layout in self._roles(ag):
            names = dict(module.named_parameters())
            views = {k: layout.param_views(t[key][i])[k] for k in names}
            m_views = layout.param_views(t[f"{key}_m"][i])
            v_views = layout.param_views(t[f"{key}_v"][i])
            steps = set()
            for name, p in names.items():
                st = _adam_state(opt, p)
                views[name].copy_(p.detach())
                m_views[name].copy_(st["exp_avg"])
                v_views[name].copy_(st["exp_avg_sq"])
                steps.add(float(st["step"]))
                p.data = views[name]
                # the optimizer keeps working eagerly on the same storage (pre-training code paths)
                opt.state[p] = {"step": t[f"{key}_t"][i], "exp_avg": m_views[name], "exp_avg_sq": v_views[name]}
            if len(steps) > 1:
                raise ValueError(f"{key} optimizer has unequal step counts {sorted(steps)}; fused Adam keeps one")
            t[f"{key}_t"][i].fill_(steps.pop())
        target_views = spec.critic_layout.param_views(t["target"][i])
        for name, p in ag.target_critic.named_parameters():
            target_views[name].copy_(p.detach())
            p.data = target_views[name]

    def rebind(self) -> None:
        """Re-read every agent after its state was replaced (agent.load_state_dict swaps optimizer
        state tensors) so the flat buffers and the agents agree again."""
        for i, ag in enumerate(self.agents):
            self._bind(i, ag)

    def write(self, new: Tensors) -> None:
        for k in STATE_KEYS:
            self.t[k].copy_(new[k])
