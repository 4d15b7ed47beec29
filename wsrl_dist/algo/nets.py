"""Networks of the algorithm core: tanh-Gaussian actor, stacked Q ensemble, temperature.

The ensemble keeps all members' weights in stacked tensors ([E, in, out]) so one batched matmul
evaluates every member: no python loop over critics (wsrl-reference: 10-member REDQ-style ensemble).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG_STD_MIN = math.log(1e-5)  # wsrl-reference 2.1: std clipped to [1e-5, 10]
LOG_STD_MAX = math.log(10.0)
_LOG2 = math.log(2.0)


@dataclass
class NetConfig:
    """Network shapes for one task family (wsrl-reference 2.2)."""

    actor_hidden: list[int] = field(default_factory=lambda: [256, 256])
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    layer_norm: bool = True
    std_parameterization: str = "exp"  # "exp" (state-dependent head) | "uniform" (learned, state-free)
    kernel_scale_final: float | None = 1e-2  # gain of the actor's last hidden layer; None = sqrt(2)

    def validate(self) -> None:
        if self.std_parameterization not in ("exp", "uniform"):
            raise ValueError(
                f"net.std_parameterization must be 'exp' or 'uniform', got {self.std_parameterization!r}"
            )
        if not self.actor_hidden or not self.critic_hidden:
            raise ValueError("net.actor_hidden and net.critic_hidden need at least one layer")


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """Dense -> [LayerNorm] -> ReLU per hidden layer (the reference's MLP trunk, no output layer)."""

    def __init__(self, in_dim: int, hidden: list[int], layer_norm: bool, final_gain: float | None):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(hidden) - 1
            gain = final_gain if (last and final_gain is not None) else math.sqrt(2.0)
            layers.append(_orthogonal(nn.Linear(d_in, d_out), gain))
            if layer_norm:
                layers.append(nn.LayerNorm(d_out))
            layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tanh_log_det(pre_tanh: torch.Tensor) -> torch.Tensor:
    """log|d tanh(u)/du| summed over the last dim, in the stable form 2(log2 - u - softplus(-2u))."""
    return (2.0 * (_LOG2 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), std)); std from a state-dependent head ("exp") or a free vector."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: NetConfig):
        super().__init__()
        self.act_dim = act_dim
        self.std_parameterization = cfg.std_parameterization
        self.trunk = MLP(obs_dim, cfg.actor_hidden, cfg.layer_norm, cfg.kernel_scale_final)
        h = self.trunk.out_dim
        self.mean = _orthogonal(nn.Linear(h, act_dim), math.sqrt(2.0))
        if cfg.std_parameterization == "exp":
            self.log_std_head = _orthogonal(nn.Linear(h, act_dim), math.sqrt(2.0))
        else:
            self.log_std = nn.Parameter(torch.zeros(act_dim))  # "uniform": init 0 (antmaze)

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [..., O] -> (mean [..., A], log_std [..., A]) of the pre-tanh Gaussian."""
        h = self.trunk(obs)
        mean = self.mean(h)
        if self.std_parameterization == "exp":
            log_std = self.log_std_head(h)
        else:
            log_std = self.log_std.expand_as(mean)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(self, obs: torch.Tensor, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample. obs [B, O] -> (action [B, A], log_prob [B]); with n: [B, n, A], [B, n]."""
        mean, log_std = self.dist_params(obs)
        if n is not None:
            mean = mean.unsqueeze(1).expand(-1, n, -1)
            log_std = log_std.unsqueeze(1).expand(-1, n, -1)
        eps = torch.randn_like(mean)
        pre = mean + log_std.exp() * eps
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.tanh(pre), log_prob - tanh_log_det(pre)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, clip: float = 0.99999) -> torch.Tensor:
        """log pi(a|s) of given actions [B, A] -> [B]; actions clipped away from +-1 first."""
        mean, log_std = self.dist_params(obs)
        a = actions.clamp(-clip, clip)
        pre = torch.atanh(a)
        z = (pre - mean) / log_std.exp()
        log_prob = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob - tanh_log_det(pre)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action tanh(mean) used for evaluation."""
        return torch.tanh(self.dist_params(obs)[0])


class EnsembleCritic(nn.Module):
    """E Q-networks with stacked weights; Q(s, a) -> [E, B] in one batched matmul per layer."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], ensemble: int, layer_norm: bool):
        super().__init__()
        self.ensemble = ensemble
        self.layer_norm = layer_norm
        dims = [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_scales = nn.ParameterList()
        self.ln_biases = nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            w = torch.empty(ensemble, d_in, d_out)
            for e in range(ensemble):  # per-member orthogonal init, as the reference's vmapped Dense
                nn.init.orthogonal_(w[e].T, math.sqrt(2.0))
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(ensemble, 1, d_out)))
            if layer_norm and i < len(hidden):
                self.ln_scales.append(nn.Parameter(torch.ones(ensemble, 1, d_out)))
                self.ln_biases.append(nn.Parameter(torch.zeros(ensemble, 1, d_out)))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, members: torch.Tensor | None = None
                ) -> torch.Tensor:
        """obs [B, O], actions [B, A] -> Q [E, B]; with `members` (indices [k], repeats allowed) only
        those members are evaluated -> [k, B] (gradients flow back to them; a repeat counts twice)."""

        def pick(p: torch.Tensor) -> torch.Tensor:
            return p if members is None else p.index_select(0, members)

        x = torch.cat([obs, actions], -1)
        h = x.unsqueeze(0).expand(self.ensemble if members is None else members.shape[0], -1, -1)
        n_layers = len(self.weights)
        for i in range(n_layers):
            h = torch.baddbmm(pick(self.biases[i]), h, pick(self.weights[i]))
            if i < n_layers - 1:
                if self.layer_norm:
                    h = F.layer_norm(h, h.shape[-1:]) * pick(self.ln_scales[i]) + pick(self.ln_biases[i])
                h = F.relu(h)
        return h.squeeze(-1)

    def member(self, e: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of one member [B] computed alone: the per-member reference the tests compare against."""
        h = torch.cat([obs, actions], -1)
        n_layers = len(self.weights)
        for i in range(n_layers):
            h = h @ self.weights[i][e] + self.biases[i][e]
            if i < n_layers - 1:
                if self.layer_norm:
                    h = F.layer_norm(h, h.shape[-1:]) * self.ln_scales[i][e] + self.ln_biases[i][e]
                h = F.relu(h)
        return h.squeeze(-1)


class ValueNet(nn.Module):
    """V(s) for IQL: MLP trunk + linear head -> [B]."""

    def __init__(self, obs_dim: int, hidden: list[int], layer_norm: bool):
        super().__init__()
        self.trunk = MLP(obs_dim, hidden, layer_norm, None)
        self.head = _orthogonal(nn.Linear(self.trunk.out_dim, 1), 1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(obs)).squeeze(-1)


class Scalar(nn.Module):
    """A positive learned scalar, softplus(raw) (SAC temperature, CQL Lagrange multiplier)."""

    def __init__(self, init: float):
        super().__init__()
        # raw = softplus^-1(init) = log(e^init - 1), the reference's parameterisation
        self.raw = nn.Parameter(torch.tensor(math.log(math.expm1(init)), dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return F.softplus(self.raw)
