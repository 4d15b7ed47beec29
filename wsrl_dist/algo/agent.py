"""The learner's state: networks, target critic, temperature and their Adam optimizers.

Everything WSRL transfers from pre-training to fine-tuning lives here (wsrl-reference-full 1.2: actor,
critics, target critics, temperature and all Adam states), so one state_dict moves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wsrl_dist.algo.nets import EnsembleCritic, NetConfig, Scalar, TanhGaussianActor, ValueNet
from wsrl_dist.algo.sac import SACConfig


@dataclass
class Agent:
    actor: TanhGaussianActor
    critic: EnsembleCritic
    target_critic: EnsembleCritic
    temperature: Scalar
    actor_opt: torch.optim.Adam
    critic_opt: torch.optim.Adam
    temperature_opt: torch.optim.Adam
    obs_dim: int
    act_dim: int
    target_entropy: float
    value: ValueNet | None = None  # IQL only
    value_opt: torch.optim.Adam | None = None
    lagrange: Scalar | None = None  # CQL auto-tuned alpha only; not transferred to SAC (reference)
    lagrange_opt: torch.optim.Adam | None = None

    @property
    def device(self) -> torch.device:
        return self.temperature.raw.device

    def _parts(self) -> dict[str, torch.nn.Module | torch.optim.Optimizer | None]:
        return {
            "actor": self.actor, "critic": self.critic, "target_critic": self.target_critic,
            "temperature": self.temperature, "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt, "temperature_opt": self.temperature_opt,
            "value": self.value, "value_opt": self.value_opt,
            "lagrange": self.lagrange, "lagrange_opt": self.lagrange_opt,
        }

    def state_dict(self) -> dict[str, dict]:
        return {k: v.state_dict() for k, v in self._parts().items() if v is not None}

    def load_state_dict(self, state: dict[str, dict], *, skip_missing: bool = False) -> None:
        """Restore parts present in `state`. skip_missing lets SAC load a CQL/IQL checkpoint
        (value net and Lagrange multiplier are simply not carried, as in the reference)."""
        for name, part in self._parts().items():
            if part is None:
                continue
            if name not in state:
                if skip_missing:
                    continue
                raise KeyError(f"agent checkpoint has no '{name}' entry")
            if isinstance(part, torch.optim.Optimizer):
                _load_optimizer(part, state[name])
            else:
                part.load_state_dict(state[name])

    def export_policy(self) -> dict[str, np.ndarray]:
        """Actor weights as CPU numpy arrays: what rollout workers receive (no optimizer state)."""
        state = self.actor.state_dict()
        # one device->host copy of all tensors (one sync on a GPU), then numpy slices of it
        flat = torch.cat([v.detach().reshape(-1) for v in state.values()]).cpu().numpy()
        out, offset = {}, 0
        for k, v in state.items():
            out[k] = flat[offset:offset + v.numel()].reshape(v.shape)
            offset += v.numel()
        return out


def _load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load moments and step counts but keep this run's lr and capturable flag (the checkpoint may
    come from pre-training with other settings); capturable Adam needs its step counts on the device."""
    keep = [{k: g[k] for k in ("lr", "capturable", "foreach") if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, kept in zip(opt.param_groups, keep):
        group.update(kept)
        if group.get("capturable"):
            for p in group["params"]:
                st = opt.state.get(p, {})
                if "step" in st:
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def _adam(params, lr: float, capturable: bool) -> torch.optim.Adam:
    # foreach: one multi-tensor kernel per op; capturable: state on the device so a CUDA graph can replay it
    return torch.optim.Adam(list(params), lr=lr, foreach=True, capturable=capturable)


def make_agent(
    obs_dim: int,
    act_dim: int,
    net: NetConfig,
    sac: SACConfig,
    *,
    with_value: bool = False,
    lagrange_init: float | None = None,
    lagrange_lr: float = 3e-4,
    device: str | torch.device = "cpu",
    capturable: bool = False,
) -> Agent:
    """Fresh networks and optimizers. Gradients are preallocated as zeros so that 'ghost' Adam
    steps (sac.ghost_adam_steps) and CUDA-graph capture see the same tensors every step."""
    actor = TanhGaussianActor(obs_dim, act_dim, net).to(device)
    def ensemble() -> EnsembleCritic:
        return EnsembleCritic(obs_dim, act_dim, net.critic_hidden, sac.critic_ensemble_size, net.layer_norm,
                              shared_head=net.shared_q_head, kernel_scale_final=net.critic_kernel_scale_final)

    critic = ensemble().to(device)
    target = ensemble().to(device)
    target.load_state_dict(critic.state_dict())
    target.requires_grad_(False)
    temperature = Scalar(sac.temperature_init).to(device)
    agent = Agent(
        actor=actor,
        critic=critic,
        target_critic=target,
        temperature=temperature,
        actor_opt=_adam(actor.parameters(), sac.actor_lr, capturable),
        critic_opt=_adam(critic.parameters(), sac.critic_lr, capturable),
        temperature_opt=_adam(temperature.parameters(), sac.temperature_lr, capturable),
        obs_dim=obs_dim,
        act_dim=act_dim,
        target_entropy=float(-act_dim if sac.target_entropy is None else sac.target_entropy),
    )
    if with_value:
        agent.value = ValueNet(obs_dim, net.critic_hidden, net.layer_norm).to(device)
        agent.value_opt = _adam(agent.value.parameters(), sac.critic_lr, capturable)
    if lagrange_init is not None:
        agent.lagrange = Scalar(lagrange_init).to(device)
        agent.lagrange_opt = _adam(agent.lagrange.parameters(), lagrange_lr, capturable)
    for module in (actor, critic, temperature, agent.value, agent.lagrange):
        if module is not None:
            for p in module.parameters():
                p.grad = torch.zeros_like(p)
    return agent
