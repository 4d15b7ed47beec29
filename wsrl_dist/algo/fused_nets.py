"""The fused formulation's networks: actor sampling and ensemble-critic Q as batched matmuls over any
leading dims (seeds, actor versions, ensemble members), and the bf16 matmul rule.

Pure functions of (flat parameter views, inputs): the same forward as algo/nets.py's modules (tests/
algo/test_parity.py holds them equal), written for algo/fused.py's and algo/fused_offline.py's update
math. Apart from algo/fused.py so the bundle's update reads on its own; algo/fused.py re-exports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsrl_dist.algo.fused_layout import Tensors
from wsrl_dist.algo.nets import LN_EPS, LOG_STD_MAX, LOG_STD_MIN, tanh_log_det

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


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

# no rounding of GEMM inputs: float32, or float64 for a double-precision agent (make_spec: the
# tests check the fused bundle against the eager one in float64, free of float32 round-off)
_FULL = (torch.float32, torch.float64)


def _mm(b: torch.Tensor, x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype, head: bool) -> torch.Tensor:
    """b + x @ w -> float32: b [N, 1, out], x [N, R, in], w [N, in, out] -> [N, R, out].
    The bias is added after the GEMM, not through baddbmm: baddbmm with a broadcast bias first
    copies it into the whole [N, R, out] output (one extra pass over the activations per layer,
    ~30 copy kernels per bundle), while a separate add is fused by Inductor into the LayerNorm /
    ReLU that follows."""
    if dtype in _FULL:
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


# Split-K for the CQL rows. A CQL step evaluates k = 2 members on B * 3n = 7,680 rows each; the
# weight gradient of a hidden layer is then a [256 x 256] output summed over K = 7,680 rows, and a
# batch of 2 (x seeds) such GEMMs gives cuBLAS only a few dozen output tiles for 132 SMs, each with a
# long K loop (78 us per GEMM on an H100/H200 profile, ~26 TFLOPS). Viewing each member's rows as
# `split` chunks, with the member's weights repeated per chunk, makes the forward a bmm over
# members x chunks; autograd's weight gradient is then one GEMM per chunk (split x more tiles, K /
# split each) followed by the sum over chunks that the repeat's backward does. Same sums, in
# another order: float round-off only.
_SPLIT_MATS = 16  # split until members x seeds x chunks reaches this many GEMMs ...
_SPLIT_MIN_ROWS = 256  # ... while each chunk keeps at least this many rows


def row_split(mats: int, rows: int, asked: int = 0) -> int:
    """Chunks per member for critic_q's `split`: `asked` if > 0 (it must divide `rows`), else the
    automatic choice for `mats` (seeds x members) GEMMs of `rows` rows (1 = no split)."""
    if asked:
        if rows % asked:
            raise ValueError(f"cql.fused_row_split={asked} does not divide the {rows} CQL rows per member")
        return asked
    split = 1
    while mats * split < _SPLIT_MATS and rows % (2 * split) == 0 and rows // (2 * split) >= _SPLIT_MIN_ROWS:
        split *= 2
    return split


def critic_q(p: Tensors, n_layers: int, layer_norm: bool, obs: torch.Tensor, act: torch.Tensor,
             dtype: torch.dtype = torch.float32, split: int = 1) -> torch.Tensor:
    """EnsembleCritic.forward for weights [S, M, ...] (M members) on inputs [S, R, .] -> Q [S, M, R].
    `n_layers`: len(EnsembleCritic.weights). With a shared Q head (`head_weight` [S, H, 1] and
    `head_bias` [S, 1] in p, CriticLayout) all n_layers are hidden; without, the last one is the
    per-member head. `dtype`: the matmuls' input dtype (see above). `split` (divides R): each
    member's rows as that many chunks in the hidden layers (split-K of the weight gradients, above)."""
    s, m, k_in = p["weights.0"].shape[:3]
    shared = "head_weight" in p
    n_hidden = n_layers if shared else n_layers - 1
    in_width = obs.shape[-1] + act.shape[-1]
    # the layout may store the first weight with zero rows below it (make_spec: aligned GEMM rows);
    # matching zero input columns leave Q unchanged and give those rows zero gradients
    pad = [obs.new_zeros(*obs.shape[:-1], k_in - in_width)] if k_in > in_width else []
    x = torch.cat([obs, act, *pad], -1).to(dtype)  # rounded once, before the copy per member
    rows = x.shape[-2]
    if rows % split:
        raise ValueError(f"critic_q: split={split} does not divide {rows} rows")
    n = s * m * split  # GEMMs per layer: one per (seed, member, chunk)

    def per_chunk(t: torch.Tensor, *shape: int) -> torch.Tensor:  # [S, M, ...] -> [n, *shape], per chunk
        t = t.reshape(s * m, *shape)
        return t if split == 1 else t.unsqueeze(1).expand(s * m, split, *shape).reshape(n, *shape)

    h = x.unsqueeze(1).expand(s, m, rows, x.shape[-1]).reshape(n, rows // split, x.shape[-1])
    for i in range(n_hidden):
        w, b = p[f"weights.{i}"], p[f"biases.{i}"]
        width = w.shape[-1]
        h = _mm(per_chunk(b, 1, width), h, per_chunk(w, *w.shape[-2:]), dtype, head=False)
        if layer_norm:
            h = (F.layer_norm(h, (width,), eps=LN_EPS) * per_chunk(p[f"ln_scales.{i}"], 1, width)
                 + per_chunk(p[f"ln_biases.{i}"], 1, width))
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
    if dtype not in _FULL:
        h, wv = h.to(dtype).float(), wv.to(dtype).float()
    return (h * wv).sum(-1) + b
