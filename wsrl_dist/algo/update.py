"""Update steps over an Agent (learner side of the data path: replay batch -> new weights).

`sac_bundle` is one env step's learning in the online phase (wsrl-reference 1.4): the UTD*256 batch is
split in order into UTD minibatches, one critic step + Polyak per minibatch, then ONE actor and ONE
temperature step on the whole batch. `offline_step` is one pre-training step (CQL / Cal-QL / IQL).
Functions return detached tensors: no .item() here, the caller decides when to sync.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from wsrl_dist.algo import cql as cql_lib
from wsrl_dist.algo import iql as iql_lib
from wsrl_dist.algo import sac as sac_lib
from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.types import Batch

OFFLINE_ALGOS = ("cql", "calql", "iql")


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=False)  # keep grad tensors alive: stable addresses for CUDA graphs
    loss.backward()
    opt.step()


def _ghost_step(opt: torch.optim.Optimizer) -> None:
    """Adam step with zero gradients: the official code's idle-network step (moves by momentum)."""
    opt.zero_grad(set_to_none=False)
    opt.step()


@torch.no_grad()
def polyak(target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
    t_params = list(target.parameters())
    torch._foreach_lerp_(t_params, list(online.parameters()), tau)


def sac_critic_step(agent: Agent, mb: Batch, cfg: sac_lib.SACConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One ensemble TD step + Polyak on a minibatch; returns (loss, mean Q) detached."""
    y = sac_lib.td_target(mb, agent.actor, agent.target_critic, agent.temperature, cfg)
    q = agent.critic(mb.observations, mb.actions)
    loss = sac_lib.critic_td_loss(q, y)
    _step(agent.critic_opt, loss)
    polyak(agent.target_critic, agent.critic, cfg.soft_target_update_rate)
    return loss.detach(), q.detach().mean()


def sac_actor_temperature_step(agent: Agent, batch: Batch, entropy_samples: int | None = None
                               ) -> dict[str, torch.Tensor]:
    """Both losses from the same, pre-update actor: the official code evaluates all its loss_fns
    on one parameter set before applying any gradient."""
    loss_pi, logp = sac_lib.actor_loss(batch, agent.actor, agent.critic, agent.temperature)
    entropy = sac_lib.next_entropy(batch, agent.actor, entropy_samples)
    _step(agent.actor_opt, loss_pi)
    # the loss is built after the actor's step (a compiled region must not span both backward
    # passes), but from the entropy estimated before it
    loss_t = sac_lib.temperature_loss(batch, agent.actor, agent.temperature, agent.target_entropy, entropy)
    _step(agent.temperature_opt, loss_t)
    return {"actor_loss": loss_pi.detach(), "entropy": -logp.detach().mean(),
            "temperature": agent.temperature().detach()}


def sac_bundle(agent: Agent, batch: Batch, cfg: sac_lib.SACConfig) -> dict[str, torch.Tensor]:
    """One online update bundle: batch [utd * batch_size] rows -> UTD critic steps, 1 actor, 1 alpha."""
    critic_losses, q_means = [], []
    for mb in batch.split(cfg.utd):
        loss_q, q_mean = sac_critic_step(agent, mb, cfg)
        critic_losses.append(loss_q)
        q_means.append(q_mean)
        if cfg.ghost_adam_steps:
            _ghost_step(agent.actor_opt)
            _ghost_step(agent.temperature_opt)
    info = sac_actor_temperature_step(agent, batch, cfg.n_backup_actions if cfg.max_target_backup else None)
    if cfg.ghost_adam_steps:
        _ghost_step(agent.critic_opt)
    info["critic_loss"] = torch.stack(critic_losses).mean()
    info["q_mean"] = torch.stack(q_means).mean()
    return info


def _apply_all(steps: list[tuple[torch.optim.Optimizer, torch.Tensor]]) -> None:
    """Apply losses that were all computed at the pre-update parameters (the official code's
    apply_loss_fns: every loss_fn sees the same parameter set, then all gradients are applied).
    Each loss backpropagates into its own optimizer's parameters only (`inputs`): the actor's loss
    reads the critic, whose gradient must come from the critic's loss alone. Backward passes all
    run before any step, so no loss sees a parameter changed in place."""
    for opt, _ in steps:
        opt.zero_grad(set_to_none=False)
    for opt, loss in steps:
        loss.backward(inputs=[p for g in opt.param_groups for p in g["params"]])
    for opt, _ in steps:
        opt.step()


def cql_step(
    agent: Agent, batch: Batch, sac: sac_lib.SACConfig, cfg: cql_lib.CQLConfig
) -> dict[str, torch.Tensor]:
    """One CQL / Cal-QL step (UTD 1): TD (+ CQL penalty on a sampled member subset), actor, alpha
    (and the Lagrange multiplier), every loss at the parameters before this step, then all updates,
    then Polyak towards the updated critic: the official update's order (wsrl/agents/sac.py update:
    apply_loss_fns, then target_update)."""
    n_cql = cfg.cql_n_actions
    y = sac_lib.td_target(batch, agent.actor, agent.target_critic, agent.temperature, sac,
                          max_target_backup=cfg.cql_max_target_backup, n_backup=n_cql)
    q = agent.critic(batch.observations, batch.actions)
    td = sac_lib.critic_td_loss(q, y)
    members = sac_lib.sample_members(q.shape[0], sac.critic_subsample_size, q.device)
    gap = cql_lib.cql_gap(batch, agent.actor, agent.critic, q, cfg, members)  # [k, B]
    info: dict[str, torch.Tensor] = {}
    steps: list[tuple[torch.optim.Optimizer, torch.Tensor]] = []
    if cfg.cql_autotune_alpha:
        if agent.lagrange is None or agent.lagrange_opt is None:
            raise ValueError("cql_autotune_alpha needs an agent made with lagrange_init")
        alpha = agent.lagrange()
        penalty = alpha.detach() * (gap.mean() - cfg.cql_target_action_gap)
        steps.append((agent.lagrange_opt, -alpha * (gap.detach().mean() - cfg.cql_target_action_gap)))
        info["cql_alpha"] = alpha.detach()
    else:
        penalty = cfg.cql_alpha * gap.mean()
    steps.insert(0, (agent.critic_opt, td + penalty))
    loss_pi, logp = sac_lib.actor_loss(batch, agent.actor, agent.critic, agent.temperature)
    # the official CQL agent's temperature loss samples next actions like its TD target: cql_n_actions
    # per s' with cql_max_target_backup (wsrl/agents/cql.py _compute_next_actions)
    entropy = sac_lib.next_entropy(batch, agent.actor, n_cql if cfg.cql_max_target_backup else None)
    loss_t = sac_lib.temperature_loss(batch, agent.actor, agent.temperature, agent.target_entropy, entropy)
    steps += [(agent.actor_opt, loss_pi), (agent.temperature_opt, loss_t)]
    _apply_all(steps)
    polyak(agent.target_critic, agent.critic, sac.soft_target_update_rate)
    info.update(actor_loss=loss_pi.detach(), entropy=-logp.detach().mean(),
                temperature=agent.temperature().detach(), critic_loss=td.detach(),
                cql_gap=gap.detach().mean(), q_mean=q.detach().mean())
    return info


def iql_step(
    agent: Agent, batch: Batch, sac: sac_lib.SACConfig, cfg: iql_lib.IQLConfig
) -> dict[str, torch.Tensor]:
    """One IQL step: expectile V, TD to V(s'), AWR actor (temperature untouched), all three losses at
    the parameters before this step (V and the target critic included), then all updates, then Polyak:
    the official IQL update's order (wsrl/agents/iql.py update)."""
    if agent.value is None or agent.value_opt is None:
        raise ValueError("IQL needs an agent made with with_value=True")
    loss_v = iql_lib.value_loss(batch, agent.value, agent.target_critic, cfg)
    y = iql_lib.critic_target(batch, agent.value, sac.discount)
    q = agent.critic(batch.observations, batch.actions)
    loss_q = sac_lib.critic_td_loss(q, y)
    loss_pi = iql_lib.awr_actor_loss(batch, agent.actor, agent.value, agent.target_critic, cfg)
    _apply_all([(agent.value_opt, loss_v), (agent.critic_opt, loss_q), (agent.actor_opt, loss_pi)])
    polyak(agent.target_critic, agent.critic, sac.soft_target_update_rate)
    return {"value_loss": loss_v.detach(), "critic_loss": loss_q.detach(),
            "actor_loss": loss_pi.detach(), "q_mean": q.detach().mean()}


def offline_step(
    agent: Agent,
    batch: Batch,
    algo: str,
    sac: sac_lib.SACConfig,
    cql: cql_lib.CQLConfig,
    iql: iql_lib.IQLConfig,
) -> dict[str, torch.Tensor]:
    """Dispatch one pre-training step; `calql` is CQL with the calibration flag forced on."""
    if algo == "iql":
        return iql_step(agent, batch, sac, iql)
    if algo in ("cql", "calql"):
        calql = algo == "calql"
        return cql_step(agent, batch, sac, cql if cql.use_calql == calql else replace(cql, use_calql=calql))
    raise ValueError(f"unknown offline algorithm {algo!r}; choose one of {OFFLINE_ALGOS}")
