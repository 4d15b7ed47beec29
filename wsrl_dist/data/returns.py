"""Monte-Carlo returns-to-go for Cal-QL (wsrl-reference-full.md §2.3 "MC returns").

Data path: offline dataset -> scaled rewards -> `mc_returns_to_go` -> `mc_returns` column used by the
Cal-QL lower bound in `algo/`. Pure numpy.
"""
from __future__ import annotations

import numpy as np

from wsrl_dist.data.schema import episode_bounds, episode_ends


def mc_returns_to_go(
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    gamma: float,
    *,
    sparse_negative_reward: float | None = None,
) -> np.ndarray:
    """Discounted return-to-go per trajectory, [N] float32, from *scaled* rewards [N].

    Trajectories end at a terminal, a timeout or the last row. Inside one:
    G_t = r_t + gamma * G_{t+1}, with G = 0 after its last step (a truncation is treated as the end:
    no bootstrap, as in the reference's finite-horizon `calc_return_to_go`).
    If `sparse_negative_reward` (r_neg) is given, a trajectory whose every reward equals r_neg gets the
    infinite-horizon closed form r_neg / (1 - gamma) at every step (the reference's sparse-task rule).

    Cost: O(N log L) vectorised numpy, L = longest trajectory (an affine prefix scan, see below).
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards must be [N], got shape {r.shape}")
    if np.shape(terminals) != r.shape or np.shape(timeouts) != r.shape:
        raise ValueError(
            f"rewards {r.shape}, terminals {np.shape(terminals)}, timeouts {np.shape(timeouts)} must have the same [N]"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not np.isfinite(r).all():
        raise ValueError(f"rewards contain non-finite values (first bad row {int(np.argmax(~np.isfinite(r)))})")
    n = r.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float32)

    ends = episode_ends(terminals, timeouts)
    g = _discounted_suffix_sums(r, np.where(ends, 0.0, float(gamma)))

    if sparse_negative_reward is not None:
        if gamma >= 1.0:
            raise ValueError("the sparse closed form r_neg / (1 - gamma) needs gamma < 1")
        r_neg = float(sparse_negative_reward)
        starts, stops = episode_bounds(terminals, timeouts)
        other = ~np.isclose(r, r_neg, rtol=0.0, atol=1e-6 * max(1.0, abs(r_neg)))
        # Per-trajectory count of rewards different from r_neg (reduceat over episode starts).
        n_other = np.add.reduceat(other.astype(np.int64), starts)
        all_neg = np.repeat(n_other == 0, stops - starts)
        g[all_neg] = r_neg / (1.0 - gamma)
    return g.astype(np.float32)


def _discounted_suffix_sums(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Solve x_i = r_i + c_i * x_{i+1} (x_N = 0) for all i, [N] float64.

    Why a scan rather than a Python loop: 1M rows must take well under 2 s. Keep (A_i, B_i) with
    x_i = B_i + A_i * x_{i+s}; doubling s composes the affine maps: B_i += A_i * B_{i+s},
    A_i *= A_{i+s}. c_i = 0 at trajectory ends, so A_i becomes exactly 0 once the window crosses an
    end; we stop when every A is 0 (after ceil(log2(longest trajectory)) rounds) or s >= N. Rows with
    i + s >= N are never updated: their window already runs past the array end, where x = 0.
    """
    n = r.shape[0]
    b = r.copy()
    a = c.copy()
    s = 1
    while s < n:
        live = np.flatnonzero(a[: n - s])  # only rows whose window has not reached an end
        if live.size == 0:
            break
        b[live] += a[live] * b[live + s]
        a[live] *= a[live + s]
        s *= 2
    return b
