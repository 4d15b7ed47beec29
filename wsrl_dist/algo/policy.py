"""CPU policy for acting (rollout side of the data path: exported weights -> actions).

Rollout workers and evaluators hold only this: the tanh-Gaussian actor rebuilt from exported weights
(`Agent.export_policy()`: the `TanhGaussianActor` state_dict as numpy arrays), evaluated in numpy.

Why numpy, not torch: a worker acts on 1-16 observations per env step, and at those sizes the cost
is per-op dispatch, not arithmetic. torch put `act` at ~90 us per call inside the stepping loop,
against ~100 us for a Hopper step (BENCHMARKS.md "Rollout"). One sampled `act` call in isolation on
the 2-core box (2x256 LayerNorm actor, 11 -> 3, one thread each), numpy vs torch: batch 1 ~15 vs
~66 us, 4 ~27 vs ~70, 16 ~55 vs ~90, 64 ~125-145 vs ~160-200. numpy is ahead at every batch size a
worker uses (at 16 and up the [N, 256] @ [256, 256] product, the same in both, takes over), so it
is the only path; torch only draws the seeded initial weights in the constructor.

What makes it cheap: every op that does not depend on the observation is done once per load, in
float64, by rewriting the weights (see `_fold`): biases ride in the matmuls (a constant 1 column),
LayerNorm's centring and scale sit in the weights, so a LayerNorm layer is five numpy calls at
batch 1: matmul, row dot, scale, shift, ReLU.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import numpy as np

from wsrl_dist.algo.nets import LN_EPS, LOG_STD_MAX, LOG_STD_MIN, NetConfig, TanhGaussianActor

_LN_EPS = LN_EPS  # the actor trunk's LayerNorm epsilon (flax's 1e-6, as the official code)
_TINY_SCALE = 1e-30  # |LayerNorm scale| below this counts as 0 (its column is a constant)


def pin_blas_threads(n: int = 1) -> bool:
    """Limit numpy's OpenBLAS to n threads in this process; True if a library took the setting.

    OpenBLAS threads a [16, 256] @ [256, 256] product over all cores: no faster at these sizes, and
    its spinning threads double the CPU time (and oversubscribe a node of workers). Does what
    threadpoolctl does, for the OpenBLAS builds numpy ships (symbols with or without the scipy_
    prefix and 64-bit-int suffix), so that no dependency is needed. Linux only (reads
    /proc/self/maps); elsewhere returns False and changes nothing."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return False
    pinned = False
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same handle, nothing new runs
        except OSError:
            continue
        names = [f"{p}openblas_set_num_threads{s}" for p in ("scipy_", "") for s in ("64_", "_64", "")]
        fn = next((getattr(lib, n_) for n_ in names if hasattr(lib, n_)), None)
        if fn is not None:
            fn(ctypes.c_int(n))
            pinned = True
    return pinned


# ---------------------------------------------------------------------------------- weights
@dataclass(frozen=True, slots=True)
class _Linear:
    """x @ w + b as one product [x, 1] @ wb at batch 1; for more rows a 1 column would make the
    hidden buffers strided (elementwise ops ~2x slower), so there it is x @ w, then += b."""

    wb: np.ndarray  # [in + 1, out] float32: the weights over the bias row
    w: np.ndarray  # [in, out] view of wb
    b: np.ndarray  # [out] view of wb

    @classmethod
    def of(cls, w: np.ndarray, b: np.ndarray) -> _Linear:
        wb = np.ascontiguousarray(np.vstack([w, b[None]]), dtype=np.float32)
        return cls(wb, wb[:-1], wb[-1])

    def __call__(self, x: np.ndarray, out: np.ndarray, augmented: bool) -> None:
        if augmented:  # x ends in a 1 column
            np.matmul(x, self.wb, out=out)
        else:
            np.matmul(x, self.w, out=out)
            out += self.b


@dataclass(frozen=True, slots=True)
class _Layer:
    """One trunk layer: h = x @ w + b, then (LayerNorm) h *= 1/std(h); h += shift; then ReLU."""

    linear: _Linear
    shift: np.ndarray | None  # [out] with LayerNorm, else None


@dataclass(frozen=True, slots=True)
class _Actor:
    """All actor weights, folded; swapped whole on load, so a concurrent act() sees one version."""

    trunk: tuple[_Layer, ...]
    head: _Linear  # [H, A] mean head, or [H, 2A] mean | log_std heads ("exp")
    log_std: np.ndarray | None  # [A] clamped log_std ("uniform": state-free, computed per load)
    std: np.ndarray | None  # [A] its exp


def _fold(w: np.ndarray, b: np.ndarray, ln: tuple[np.ndarray, np.ndarray] | None,
          scale: np.ndarray, const: np.ndarray) -> tuple[_Layer, np.ndarray, np.ndarray]:
    """Fold one torch layer, Dense (w [in, out], b) -> [LayerNorm (g, beta)] -> ReLU, whose input
    is scale * x + const (x: what the previous layer stored), into x-space. Returns the layer and
    the (scale, const) that map what it stores to its true output. All float64.

    LayerNorm(z) * g + beta with z = x @ w + b:
    - centring is linear: z - mean_j z = x @ (w - mean_j w) + (b - mean b), so it goes into w, b;
      a 1/sqrt(out) factor too, so that the row's sum of squares is the variance (the factor goes
      back into g);
    - relu(g n + beta) = |g| relu(sign(g) n + beta / |g|): the sign flips the column (the variance
      does not change), beta/|g| is the stored shift, |g| becomes the next layer's input scale;
    - a column with g = 0 is the constant relu(beta): stored scale 0, constant relu(beta).
    Without LayerNorm the layer stores its output as is (scale 1, const 0)."""
    w, b = scale[:, None] * w, const @ w + b
    if ln is None:
        return _Layer(_Linear.of(w, b), None), np.ones(w.shape[1]), np.zeros(w.shape[1])
    g, beta = ln
    root = math.sqrt(w.shape[1])
    w = (w - w.mean(axis=1, keepdims=True)) / root
    b = (b - b.mean()) / root
    g = g * root  # normalised = root * (stored centred h) / sqrt(sum of squares + eps)
    live = np.abs(g) > _TINY_SCALE
    sign = np.where(g < 0, -1.0, 1.0)
    shift = np.where(live, beta / np.where(live, np.abs(g), 1.0), 0.0)
    layer = _Layer(_Linear.of(w * sign, b * sign), shift.astype(np.float32))
    return layer, np.where(live, np.abs(g), 0.0), np.where(live, 0.0, np.maximum(beta, 0.0))


def _head(w: np.ndarray, b: np.ndarray, scale: np.ndarray, const: np.ndarray) -> _Linear:
    """Linear head (w [H, out], b) on the last layer's true output, in x-space."""
    return _Linear.of(scale[:, None] * w, const @ w + b)


def _expected_keys(n_layers: int, layer_norm: bool, std_parameterization: str) -> list[str]:
    """The TanhGaussianActor state_dict keys: trunk.net is Linear [LayerNorm] ReLU per layer."""
    step = 3 if layer_norm else 2
    keys = []
    for i in range(n_layers):
        keys += [f"trunk.net.{i * step}.weight", f"trunk.net.{i * step}.bias"]
        if layer_norm:
            keys += [f"trunk.net.{i * step + 1}.weight", f"trunk.net.{i * step + 1}.bias"]
    keys += ["mean.weight", "mean.bias"]
    if std_parameterization == "exp":
        return [*keys, "log_std_head.weight", "log_std_head.bias"]
    return [*keys, "log_std"]


def _check_shapes(weights: dict[str, np.ndarray], want: dict[str, tuple[int, ...]]) -> None:
    """Strict, as torch's load_state_dict: same keys, same shapes."""
    missing, unexpected = sorted(set(want) - set(weights)), sorted(set(weights) - set(want))
    if missing or unexpected:
        raise KeyError(f"policy weights: missing {missing}, unexpected {unexpected}")
    for k, shape in want.items():
        if tuple(np.shape(weights[k])) != shape:
            raise ValueError(f"policy weights: {k} has shape {np.shape(weights[k])}, want {shape}")


# ---------------------------------------------------------------------------------- acting
@dataclass(frozen=True, slots=True)
class _Buffers:
    """Scratch arrays for one batch size (act() allocates only its result). At batch 1 each matmul
    input carries a trailing 1 column (augmented: the bias row of _Linear.wb); `views` leave it out."""

    augmented: bool  # N == 1
    obs: np.ndarray  # [N, O (+ 1)] float32 observations (| 1)
    obs_view: np.ndarray  # [N, O]
    hidden: tuple[np.ndarray, ...]  # [N, width (+ 1)] per trunk layer
    views: tuple[np.ndarray, ...]  # [N, width]
    rows: tuple[np.ndarray | None, ...]  # the views as 1-D rows when N == 1, else None
    inv_std: np.ndarray  # [N, 1] LayerNorm 1/std (N > 1)
    out: np.ndarray  # [N, A] or [N, 2A] head output
    mean: np.ndarray  # [N, A] view of out
    log_std: np.ndarray  # [N, A] view of out ("exp"; empty for "uniform")
    noise: np.ndarray  # [N, A]


def _buffer(n: int, width: int, augmented: bool) -> tuple[np.ndarray, np.ndarray]:
    full = np.ones((n, width + int(augmented)), np.float32)
    return full, full[:, :width]


def _buffers(n: int, obs_dim: int, widths: list[int], head_out: int, act_dim: int) -> _Buffers:
    aug = n == 1
    obs, obs_view = _buffer(n, obs_dim, aug)
    hidden, views = zip(*(_buffer(n, w, aug) for w in widths)) if widths else ((), ())
    out = np.empty((n, head_out), np.float32)
    return _Buffers(aug, obs, obs_view, tuple(hidden), tuple(views),
                    tuple(v[0] if aug else None for v in views), np.empty((n, 1), np.float32),
                    out, out[:, :act_dim], out[:, act_dim:], np.empty((n, act_dim), np.float32))


def _row_dot_einsum(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y, out=out)


# per-row dot product: numpy >= 2 has it as a gufunc, cheaper to call than einsum
_row_dot = getattr(np, "vecdot", _row_dot_einsum)


def _trunk(actor: _Actor, bufs: _Buffers) -> np.ndarray:
    """Dense -> [LayerNorm] -> ReLU per layer, in place; returns the last hidden buffer.

    LayerNorm: h is centred and scaled by 1/sqrt(width) already (_fold), so its variance is the row's
    sum of squares. At batch 1 the 1/std is a python float (two numpy calls fewer); for more rows
    it is a reciprocal and a broadcast multiply (a broadcast divide is 3-4x slower in numpy)."""
    x, inv, aug = bufs.obs, bufs.inv_std, bufs.augmented
    for layer, full, h, row in zip(actor.trunk, bufs.hidden, bufs.views, bufs.rows):
        layer.linear(x, h, aug)
        if layer.shift is not None:
            if row is not None:
                h *= 1.0 / math.sqrt(float(np.dot(row, row)) + _LN_EPS)
            else:
                _row_dot(h, h, out=inv[:, 0])
                inv += _LN_EPS
                np.sqrt(inv, out=inv)
                np.reciprocal(inv, out=inv)
                h *= inv
            h += layer.shift
        np.maximum(h, 0.0, out=h)
        x = full
    return x


class Policy:
    """pi(a|s) = tanh(N(mu(s), std)) in numpy; `act` is the rollout workers' hot loop."""

    def __init__(self, obs_dim: int, act_dim: int, net: NetConfig, seed: int = 0):
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.layer_norm = bool(net.layer_norm)
        self.std_parameterization = net.std_parameterization
        self._widths = list(net.actor_hidden)
        self._keys = _expected_keys(len(self._widths), self.layer_norm, self.std_parameterization)
        # the seeded torch init: torch.manual_seed(s) before the constructor gives a known "random"
        # actor (data/builder.py), the same as TanhGaussianActor's
        init = TanhGaussianActor(obs_dim, act_dim, net).state_dict()
        self._shapes = {k: tuple(v.shape) for k, v in init.items()}
        self._actor = self._build({k: v.numpy() for k, v in init.items()})
        self._rng = np.random.default_rng(seed)
        self._bufs: dict[int, _Buffers] = {}
        self.version = -1

    def load(self, weights: dict[str, np.ndarray], version: int) -> None:
        """Load exported actor weights (Agent.export_policy) stamped with their version."""
        self._actor = self._build(weights)
        self.version = int(version)

    def _build(self, weights: dict[str, np.ndarray]) -> _Actor:
        """State-dict arrays (read-only ones too: Ray's) -> folded float32 copies."""
        _check_shapes(weights, {k: self._shapes[k] for k in self._keys})
        wt = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        step = 3 if self.layer_norm else 2
        scale, const = np.ones(self.obs_dim), np.zeros(self.obs_dim)
        trunk = []
        for i in range(len(self._widths)):
            lin, ln = f"trunk.net.{i * step}", f"trunk.net.{i * step + 1}"
            norm = (wt[f"{ln}.weight"], wt[f"{ln}.bias"]) if self.layer_norm else None
            layer, scale, const = _fold(wt[f"{lin}.weight"].T, wt[f"{lin}.bias"], norm, scale, const)
            trunk.append(layer)
        if self.std_parameterization == "exp":  # one product for both heads
            w = np.concatenate([wt["mean.weight"], wt["log_std_head.weight"]]).T
            b = np.concatenate([wt["mean.bias"], wt["log_std_head.bias"]])
            log_std = std = None
        else:
            w, b = wt["mean.weight"].T, wt["mean.bias"]
            log_std = np.clip(np.asarray(weights["log_std"], np.float32), LOG_STD_MIN, LOG_STD_MAX)
            std = np.exp(log_std)
        return _Actor(tuple(trunk), _head(w, b, scale, const), log_std, std)

    # ------------------------------------------------------------------ acting
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """obs [N, O] (or [..., O]) -> actions [N, A] float32 in [-1, 1]: a tanh-Gaussian sample,
        or tanh(mean).

        The result is a new array (workers keep it in their chunk rows); the intermediates live in
        per-batch-size buffers, so act() is not re-entrant: one acting thread per Policy."""
        obs = np.asarray(obs)
        actor = self._actor  # read once: load() swaps the whole actor
        bufs = self._forward(actor, obs)
        if deterministic:
            action = np.tanh(bufs.mean)
        else:
            std = actor.std
            if std is None:  # clamp log_std, then exp: as the torch actor (and exp cannot overflow)
                std = bufs.log_std
                np.maximum(std, LOG_STD_MIN, out=std)
                np.minimum(std, LOG_STD_MAX, out=std)
                np.exp(std, out=std)
            noise = bufs.noise
            self._rng.standard_normal(dtype=np.float32, out=noise)
            noise *= std
            noise += bufs.mean
            action = np.tanh(noise)
        return action if obs.ndim == 2 else action.reshape(*obs.shape[:-1], self.act_dim)

    def dist_params(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """obs [N, O] -> (mean [N, A], clamped log_std [N, A]) of the pre-tanh Gaussian, as
        TanhGaussianActor.dist_params (new arrays; for checks, not the hot loop)."""
        actor = self._actor
        bufs = self._forward(actor, np.asarray(obs))
        if actor.log_std is None:
            log_std = np.clip(bufs.log_std, LOG_STD_MIN, LOG_STD_MAX)
        else:
            log_std = np.broadcast_to(actor.log_std, bufs.mean.shape).copy()
        return bufs.mean.copy(), log_std

    def _forward(self, actor: _Actor, obs: np.ndarray) -> _Buffers:
        """obs [..., O] (any float dtype) -> this batch size's buffers, the head output in `out`."""
        x = obs if obs.ndim == 2 else obs.reshape(-1, self.obs_dim)
        bufs = self._bufs.get(x.shape[0])
        if bufs is None:
            bufs = self._bufs[x.shape[0]] = _buffers(x.shape[0], self.obs_dim, self._widths,
                                                     actor.head.b.shape[0], self.act_dim)
        np.copyto(bufs.obs_view, x, casting="same_kind")
        actor.head(_trunk(actor, bufs), bufs.out, bufs.augmented)
        return bufs
