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
# flax.linen.LayerNorm's default epsilon (official wsrl/networks/mlp.py:42), not torch's 1e-5
LN_EPS = 1e-6
_LOG2 = math.log(2.0)


@dataclass
class NetConfig:
    """Network shapes for one task family (wsrl-reference 2.2)."""

    actor_hidden: list[int] = field(default_factory=lambda: [256, 256])
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    layer_norm: bool = True
    std_parameterization: str = "exp"  # "exp" (state-dependent head) | "uniform" (learned, state-free)
    kernel_scale_final: float | None = 1e-2  # gain of the actor's last hidden layer; None = sqrt(2)
    # the same for the critic's last hidden layer (official critic_network_kwargs.kernel_scale_final,
    # set with the actor's in every official config); its Q head keeps orthogonal(sqrt(2))
    critic_kernel_scale_final: float | None = 1e-2
    # One Dense(1) Q head shared by all ensemble members (official: only the MLP trunk is vmapped,
    # wsrl/agents/sac.py create). Deviation when False: each member has its own head, as in
    # rlkit-style SAC with separate critics (the dataset builder's behaviour policy).
    shared_q_head: bool = True

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
        """final_gain: orthogonal gain of the last hidden layer (official kernel_scale_final);
        every other layer gets sqrt(2), the official orthogonal_init default."""
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(hidden) - 1
            gain = final_gain if (last and final_gain is not None) else math.sqrt(2.0)
            layers.append(_orthogonal(nn.Linear(d_in, d_out), gain))
            if layer_norm:
                layers.append(nn.LayerNorm(d_out, eps=LN_EPS))
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
    """E Q-networks with stacked weights; Q(s, a) -> [E, B] in one batched matmul per layer.

    As the official ensemble (wsrl/networks/actor_critic_nets.py Critic + ensemblize, wsrl/agents/sac.py
    create): only the MLP trunk is per member (vmapped, own init per member); the final Dense(1) is
    applied outside the vmap, so ONE Q head (`head_weight` [H, 1], `head_bias` [1]) serves all
    members and is trained on the sum of their gradients. `shared_head=False` (Deviation, net.shared_q_head):
    per-member heads as the last entry of `weights` / `biases` ([E, H, 1], [E, 1, 1]).
    Init (official orthogonal init_fns): sqrt(2) on every layer but the last hidden one, which gets
    `kernel_scale_final` when set; the head sqrt(2)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], ensemble: int, layer_norm: bool,
                 *, shared_head: bool = True, kernel_scale_final: float | None = None):
        super().__init__()
        self.ensemble = ensemble
        self.layer_norm = layer_norm
        self.shared_head = shared_head
        dims = [obs_dim + act_dim, *hidden] if shared_head else [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_scales = nn.ParameterList()
        self.ln_biases = nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last_hidden = i == len(hidden) - 1
            gain = kernel_scale_final if (last_hidden and kernel_scale_final is not None) else math.sqrt(2.0)
            w = torch.empty(ensemble, d_in, d_out)
            for e in range(ensemble):  # per-member orthogonal init, as the reference's vmapped Dense
                nn.init.orthogonal_(w[e].T, gain)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(ensemble, 1, d_out)))
            if layer_norm and i < len(hidden):
                self.ln_scales.append(nn.Parameter(torch.ones(ensemble, 1, d_out)))
                self.ln_biases.append(nn.Parameter(torch.zeros(ensemble, 1, d_out)))
        if shared_head:
            w = torch.empty(hidden[-1], 1)
            nn.init.orthogonal_(w.T, math.sqrt(2.0))
            self.head_weight = nn.Parameter(w)
            self.head_bias = nn.Parameter(torch.zeros(1))

    @property
    def n_hidden(self) -> int:
        return len(self.weights) - (0 if self.shared_head else 1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, members: torch.Tensor | None = None
                ) -> torch.Tensor:
        """obs [B, O], actions [B, A] -> Q [E, B]; with `members` (indices [k], repeats allowed) only
        those members are evaluated -> [k, B] (gradients flow back to them; a repeat counts twice,
        also in the shared head's gradient)."""

        def pick(p: torch.Tensor) -> torch.Tensor:
            return p if members is None else p.index_select(0, members)

        x = torch.cat([obs, actions], -1)
        h = x.unsqueeze(0).expand(self.ensemble if members is None else members.shape[0], -1, -1)
        for i in range(len(self.weights)):
            h = torch.baddbmm(pick(self.biases[i]), h, pick(self.weights[i]))
            if i < self.n_hidden:
                if self.layer_norm:
                    h = (F.layer_norm(h, h.shape[-1:], eps=LN_EPS) * pick(self.ln_scales[i])
                         + pick(self.ln_biases[i]))
                h = F.relu(h)
        if self.shared_head:
            h = h @ self.head_weight + self.head_bias
        return h.squeeze(-1)

    def member(self, e: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of one member [B] computed alone: the per-member reference the tests compare against."""
        h = torch.cat([obs, actions], -1)
        for i in range(len(self.weights)):
            h = h @ self.weights[i][e] + self.biases[i][e]
            if i < self.n_hidden:
                if self.layer_norm:
                    h = F.layer_norm(h, h.shape[-1:], eps=LN_EPS) * self.ln_scales[i][e] + self.ln_biases[i][e]
                h = F.relu(h)
        if self.shared_head:
            h = h @ self.head_weight + self.head_bias
        return h.squeeze(-1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's load, after a check that the checkpoint has this critic's Q-head layout: a
        checkpoint written before the shared head (per-member heads) would otherwise fail with a
        bare key error."""
        has_shared = "head_weight" in state_dict
        if has_shared != self.shared_head:
            def what(shared: bool) -> str:
                return ("one Q head shared by all members (head_weight, head_bias)" if shared else
                        f"a Q head per member (weights.{self.n_hidden} [E, H, 1]), the layout of checkpoints "
                        "written before the shared head")
            raise ValueError(
                f"critic checkpoint layout mismatch: the checkpoint has {what(has_shared)}, this critic "
                f"has {what(self.shared_head)} (net.shared_q_head={self.shared_head}). Re-run pre-training "
                "with this code, or set net.shared_q_head to match the checkpoint.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


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
        self.raw = nn.Parameter(torch.tensor(math.log(math.expm1(init))))  # the default dtype: float32

    def forward(self) -> torch.Tensor:
        return F.softplus(self.raw)
