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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.nets import LN_EPS, LOG_STD_MAX, LOG_STD_MIN, tanh_log_det
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch

Tensors = dict[str, torch.Tensor]
# fp16 would need loss scaling (its range is too small for unscaled gradients): not offered
MATMUL_DTYPES = (torch.float32, torch.bfloat16)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_ALIGN = 8  # flat-buffer alignment in elements: 32 bytes of fp32 (FlatLayout)


class FlatLayout:
    """Named per-unit shapes packed along one flat last dim; `views` unpacks without copying.

    `align`: every slice starts, and the unit's row ends, at a multiple of `align` elements. cuBLAS
    runs its vectorised tensor-core GEMMs only on 16-byte-aligned matrices: with one 1-wide Q-head
    bias in the middle, an unaligned member size (73,217 floats at locomotion sizes) put every other
    ensemble member at a 4-byte offset and sent the batched GEMMs to scalar align1 kernels.
    `stored`: a larger shape to keep for a name (more leading rows, the extra ones zero), so that a
    GEMM can read the parameter padded to an aligned width without a copy; `views` gives the stored
    shapes, `param_views` the parameters' own (the leading rows of the stored ones).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], align: int = 1,
                 stored: dict[str, tuple[int, ...]] | None = None):
        self.param_shapes = shapes
        self.shapes = {n: (stored or {}).get(n, shape) for n, shape in shapes.items()}
        for n, shape in (stored or {}).items():
            if len(shape) != len(shapes[n]) or shape[1:] != shapes[n][1:] or shape[0] < shapes[n][0]:
                raise ValueError(f"stored shape {shape} of {n} does not extend {shapes[n]} by leading rows")
        self.slices: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            self.slices[name] = (offset, offset + n)
            offset = -(-(offset + n) // align) * align
        self.size = offset

    def views(self, flat: torch.Tensor) -> Tensors:
        lead = flat.shape[:-1]
        return {n: flat[..., a:b].view((*lead, *self.shapes[n])) for n, (a, b) in self.slices.items()}

    def param_views(self, flat: torch.Tensor) -> Tensors:
        """The parameters' own shapes: the leading rows of each stored view."""
        lead = len(flat.shape[:-1])
        return {n: v[(slice(None),) * lead + (slice(0, self.param_shapes[n][0]),)] if v.dim() > lead else v
                for n, v in self.views(flat).items()}

    def flatten(self, parts: Tensors, lead: int) -> torch.Tensor:
        """Inverse of views for tensors with `lead` leading dims (one concatenation kernel; the
        alignment gaps are zeros)."""
        pieces, end = [], 0
        for n, (a, b) in self.slices.items():
            x = parts[n]
            if a > end:
                pieces.append(x.new_zeros(*x.shape[:lead], a - end))
            pieces.append(x.reshape(*x.shape[:lead], -1))
            end = b
        if self.size > end:
            pieces.append(pieces[-1].new_zeros(*pieces[-1].shape[:lead], self.size - end))
        return torch.cat(pieces, -1)


class CriticLayout:
    """The critic's flat row [..., size]: E per-member trunks (a FlatLayout `trunk` each, packed as
    [..., E, trunk.size]), then the one Q head all members share (`head`, official layout; empty
    with per-member heads, net.shared_q_head=false, whose heads are in the trunk). One buffer per
    role still takes one Adam or Polyak update.

    `views` / `param_views`: trunk tensors [..., E, ...], head tensors [..., ...]; `gather`: views
    with only the chosen members' trunks [S, k, ...] (the target critic's sampled subset) and the
    shared head; `flatten`: inverse of `views` for S seeds."""

    def __init__(self, trunk: FlatLayout, head: FlatLayout, ensemble: int):
        self.trunk, self.head, self.ensemble = trunk, head, ensemble
        self.trunk_size = ensemble * trunk.size  # a multiple of the alignment, so the head is aligned
        self.size = self.trunk_size + head.size

    def _split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = flat.shape[:-1]
        return flat[..., :self.trunk_size].view(*lead, self.ensemble, self.trunk.size), flat[..., self.trunk_size:]

    def views(self, flat: torch.Tensor) -> Tensors:
        trunk, head = self._split(flat)
        return {**self.trunk.views(trunk), **self.head.views(head)}

    def param_views(self, flat: torch.Tensor) -> Tensors:
        trunk, head = self._split(flat)
        return {**self.trunk.param_views(trunk), **self.head.param_views(head)}

    def gather(self, flat: torch.Tensor, members: torch.Tensor) -> Tensors:
        """flat [S, size], members [S, k] -> views of a copy holding the k members' trunks and the head."""
        trunk, head = self._split(flat)
        chosen = torch.gather(trunk, 1, members.unsqueeze(-1).expand(-1, -1, trunk.shape[-1]))
        return {**self.trunk.views(chosen), **self.head.views(head)}

    def flatten(self, parts: Tensors, lead: int = 1) -> torch.Tensor:
        """parts with `lead` seed dims ([S, E, ...] trunk, [S, ...] head) -> [S, size]."""
        if lead != 1:
            raise ValueError("CriticLayout.flatten: lead counts the seed dims only (one): the critic "
                             "buffer is [S, size] since the Q head is shared")
        trunk = self.trunk.flatten({n: parts[n] for n in self.trunk.slices}, 2)
        pieces = [trunk.reshape(trunk.shape[0], -1)]
        if self.head.size:
            pieces.append(self.head.flatten({n: parts[n] for n in self.head.slices}, 1))
        return torch.cat(pieces, -1)


# ---------------------------------------------------------------------------------------- networks
# Both take weights with arbitrary leading dims L (seeds, actor versions, ensemble members) and
# inputs with the same leading dims; every layer is one batched matmul over all of L.
#
# Matmul precision (`Spec.matmul_dtype`, run.matmul_precision=bf16): GEMM inputs (activations and
# weights) are rounded to bf16 and the GEMM sums in fp32; parameters, biases, LayerNorm, log-probs,
# losses, Adam and Polyak stay fp32 (weight gradients leave their GEMMs in bf16, as under autocast).
# A hidden layer's GEMM also writes bf16 (half its output traffic, the point of bf16); bias,
# LayerNorm and ReLU then run in fp32 before the next GEMM rounds again. That output rounding is one
# more 2^-9 relative error, the size of the next input rounding unless LayerNorm removes a large
# common offset (then scaled by offset / std). Heads (Q, action mean, log-std) are not rounded on
# output: TD errors of 1e-2 on Q ~ 1e2 are the signal and bf16 spaces values near 300 by 2. A head
# is an fp32 GEMM on bf16-rounded inputs: exactly bf16 products summed in fp32 (the products are
# exact in fp32, and TF32 holds bf16 values exactly); at <= act_dim columns it costs little.

def _mm(b: torch.Tensor, x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype, head: bool) -> torch.Tensor:
    """b + x @ w -> float32: b [N, 1, out], x [N, R, in], w [N, in, out] -> [N, R, out].
    The bias is added after the GEMM, not through baddbmm: baddbmm with a broadcast bias first
    copies it into the whole [N, R, out] output (one extra pass over the activations per layer,
    ~30 copy kernels per bundle), while a separate add is fused by Inductor into the LayerNorm /
    ReLU that follows."""
    if dtype == torch.float32:
        return torch.bmm(x, w) + b
    if head:
        return torch.bmm(x.to(dtype).float(), w.to(dtype).float()) + b
    return torch.bmm(x.to(dtype), w.to(dtype)) + b  # bf16 GEMM output, bias added in fp32


def _linear_t(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32,
              head: bool = False) -> torch.Tensor:
    """torch.nn.Linear layout: w [*L, out, in], b [*L, out], x [*L, R, in] -> [*L, R, out] (float32)."""
    out, inp = w.shape[-2:]
    rows = x.shape[-2]
    y = _mm(b.reshape(-1, 1, out), x.reshape(-1, rows, inp), w.reshape(-1, out, inp).transpose(1, 2), dtype, head)
    return y.view(*w.shape[:-2], rows, out)


@dataclass(frozen=True)
class ActorPlan:
    """The actor's layers as (kind, parameter names) read from a TanhGaussianActor's modules."""

    trunk: tuple[tuple, ...]  # ("linear", w, b) | ("ln", w, b, eps) | ("relu",)
    uniform_std: bool

    @staticmethod
    def of(actor: nn.Module) -> ActorPlan:
        steps: list[tuple] = []
        for i, layer in enumerate(actor.trunk.net):
            name = f"trunk.net.{i}"
            if isinstance(layer, nn.Linear):
                steps.append(("linear", f"{name}.weight", f"{name}.bias"))
            elif isinstance(layer, nn.LayerNorm):
                steps.append(("ln", f"{name}.weight", f"{name}.bias", layer.eps))
            elif isinstance(layer, nn.ReLU):
                steps.append(("relu",))
            else:
                raise TypeError(f"fused actor: unsupported trunk layer {type(layer).__name__}")
        return ActorPlan(tuple(steps), actor.std_parameterization != "exp")


def actor_sample(plan: ActorPlan, p: Tensors, obs: torch.Tensor, eps: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """TanhGaussianActor.forward with given noise. obs [*L, R, O]; eps [*L, R, A] or [*L, R, n, A]
    (n actions per state) -> (action like eps, log_prob like eps without its last dim).
    `dtype`: the matmuls' input dtype (see above)."""
    h = obs
    for step in plan.trunk:
        if step[0] == "linear":
            h = _linear_t(h, p[step[1]], p[step[2]], dtype)
        elif step[0] == "ln":
            h = F.layer_norm(h, h.shape[-1:], eps=step[3]) * p[step[1]].unsqueeze(-2) + p[step[2]].unsqueeze(-2)
        else:
            h = F.relu(h)
    mean = _linear_t(h, p["mean.weight"], p["mean.bias"], dtype, head=True)
    if plan.uniform_std:
        log_std = p["log_std"].unsqueeze(-2).expand_as(mean)
    else:
        log_std = _linear_t(h, p["log_std_head.weight"], p["log_std_head.bias"], dtype, head=True)
    log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    if eps.dim() == mean.dim() + 1:  # n samples per state
        mean, log_std = mean.unsqueeze(-2), log_std.unsqueeze(-2)
    pre = mean + log_std.exp() * eps
    log_prob = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
    return torch.tanh(pre), log_prob - tanh_log_det(pre)


def critic_q(p: Tensors, n_layers: int, layer_norm: bool, obs: torch.Tensor, act: torch.Tensor,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """EnsembleCritic.forward for weights [S, M, ...] (M members) on inputs [S, R, .] -> Q [S, M, R].
    `n_layers`: len(EnsembleCritic.weights). With a shared Q head (`head_weight` [S, H, 1] and
    `head_bias` [S, 1] in p, CriticLayout) all n_layers are hidden; without, the last one is the
    per-member head. `dtype`: the matmuls' input dtype (see above)."""
    s, m, k_in = p["weights.0"].shape[:3]
    shared = "head_weight" in p
    n_hidden = n_layers if shared else n_layers - 1
    in_width = obs.shape[-1] + act.shape[-1]
    # the layout may store the first weight with zero rows below it (make_spec: aligned GEMM rows);
    # matching zero input columns leave Q unchanged and give those rows zero gradients
    pad = [obs.new_zeros(*obs.shape[:-1], k_in - in_width)] if k_in > in_width else []
    x = torch.cat([obs, act, *pad], -1).to(dtype)  # rounded once, before the copy per member
    rows = x.shape[-2]
    h = x.unsqueeze(1).expand(s, m, rows, x.shape[-1]).reshape(s * m, rows, x.shape[-1])
    for i in range(n_hidden):
        w, b = p[f"weights.{i}"], p[f"biases.{i}"]
        h = _mm(b.reshape(s * m, 1, -1), h, w.reshape(s * m, *w.shape[-2:]), dtype, head=False)
        if layer_norm:
            width = h.shape[-1]
            h = (F.layer_norm(h, (width,), eps=LN_EPS) * p[f"ln_scales.{i}"].reshape(s * m, 1, width)
                 + p[f"ln_biases.{i}"].reshape(s * m, 1, width))
        h = F.relu(h)
    # the 1-wide Q head as a row dot product, not a GEMM with one output column: Inductor folds it
    # (and its backward, a broadcast multiply and a row sum) into the LayerNorm / ReLU kernels
    # around it, saving a kernel and a full read of the widest activation per forward. Same sums:
    # fp32 products of the (bf16-rounded, see _mm) inputs. A shared head broadcasts over members,
    # so its gradient is the sum over them, as the official head outside the vmap.
    width = h.shape[-1]
    h = h.view(s, m, rows, width)
    if shared:
        wv, b = p["head_weight"].reshape(s, 1, 1, width), p["head_bias"].reshape(s, 1, 1)
    else:
        wv, b = p[f"weights.{n_hidden}"].reshape(s, m, 1, width), p[f"biases.{n_hidden}"].reshape(s, m, 1)
    if dtype != torch.float32:
        h, wv = h.to(dtype).float(), wv.to(dtype).float()
    return (h * wv).sum(-1) + b


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
def make_spec(agent: Agent, sac: SACConfig, matmul_dtype: torch.dtype = torch.float32) -> Spec:
    if matmul_dtype not in MATMUL_DTYPES:
        raise ValueError(f"fused bundle: matmul dtype {matmul_dtype} is not one of {MATMUL_DTYPES}")
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
                act_dim=agent.act_dim, matmul_dtype=matmul_dtype)


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
