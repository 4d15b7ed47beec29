"""Monte-Carlo returns-to-go for Cal-QL (wsrl_dist.data.returns)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from wsrl_dist.data.returns import mc_returns_to_go

F = np.float32


def test_hand_computed_example_with_terminal():
    # one trajectory of 3 steps ending in a terminal, gamma = 0.5
    r = np.array([1.0, 2.0, 4.0], F)
    g = mc_returns_to_go(r, np.array([0, 0, 1], F), np.zeros(3, F), 0.5)
    # G2 = 4, G1 = 2 + 0.5*4 = 4, G0 = 1 + 0.5*4 = 3
    np.testing.assert_allclose(g, [3.0, 4.0, 4.0])
    assert g.dtype == np.float32 and g.shape == (3,)


def test_trajectories_do_not_leak_into_each_other():
    r = np.array([1.0, 1.0, 10.0, 10.0], F)
    te = np.array([0, 1, 0, 0], F)
    g = mc_returns_to_go(r, te, np.zeros(4, F), 0.9)
    np.testing.assert_allclose(g, [1.9, 1.0, 19.0, 10.0], rtol=1e-6)


def test_truncation_is_treated_as_the_end_without_bootstrap():
    r = np.array([1.0, 1.0, 1.0, 1.0, 1.0], F)
    to = np.array([0, 1, 0, 0, 0], F)  # truncated after 2 steps; the last 3 rows are cut by the data end
    g = mc_returns_to_go(r, np.zeros(5, F), to, 0.9)
    np.testing.assert_allclose(g, [1.9, 1.0, 2.71, 1.9, 1.0], rtol=1e-6)


def test_sparse_trajectory_of_only_negative_rewards_gets_the_closed_form():
    # antmaze-style scaled rewards: -5 per step, +5 at the goal; gamma 0.99 -> -5 / 0.01 = -500
    r = np.array([-5, -5, -5, -5, 5, -5, -5], F)
    te = np.array([0, 0, 0, 0, 1, 0, 0], F)
    to = np.array([0, 0, 0, 0, 0, 0, 1], F)
    g = mc_returns_to_go(r, te, to, 0.99, sparse_negative_reward=-5.0)
    np.testing.assert_allclose(g[5:], [-500.0, -500.0])
    # the successful trajectory keeps its finite-horizon discounted sum
    expected = [sum(r[k] * 0.99 ** (k - t) for k in range(t, 5)) for t in range(5)]
    np.testing.assert_allclose(g[:5], expected, rtol=1e-5)
    # without the sparse option the failing trajectory gets its plain sum
    np.testing.assert_allclose(mc_returns_to_go(r, te, to, 0.99)[5:], [-5 - 4.95, -5.0], rtol=1e-6)


def test_matches_a_step_by_step_reference_on_random_data():
    rng = np.random.default_rng(0)
    n, gamma = 3000, 0.99
    r = rng.normal(size=n).astype(F)
    te = (rng.random(n) < 0.004).astype(F)
    to = (rng.random(n) < 0.004).astype(F)
    r[1000:1400] = -1.0
    te[999] = 1.0
    to[1399] = 1.0  # rows 1000..1399: a trajectory of only r_neg
    ref = np.zeros(n)
    g_next = 0.0
    for t in range(n - 1, -1, -1):
        if te[t] or to[t] or t == n - 1:
            g_next = 0.0
        g_next = float(r[t]) + gamma * g_next
        ref[t] = g_next
    np.testing.assert_allclose(mc_returns_to_go(r, te, to, gamma), ref, rtol=1e-5, atol=1e-4)
    sparse = mc_returns_to_go(r, te, to, gamma, sparse_negative_reward=-1.0)
    np.testing.assert_allclose(sparse[1000:1400], -100.0)
    np.testing.assert_allclose(sparse[:1000], ref[:1000], rtol=1e-5, atol=1e-4)


def test_one_million_rows_take_under_two_seconds():
    rng = np.random.default_rng(1)
    n = 1_000_000
    r = rng.normal(size=n).astype(F)
    te = np.zeros(n, F)
    to = np.zeros(n, F)
    to[999::1000] = 1.0  # D4RL-like 1000-step trajectories
    te[rng.integers(0, n, 500)] = 1.0
    t0 = time.perf_counter()
    g = mc_returns_to_go(r, te, to, 0.99, sparse_negative_reward=-5.0)
    assert time.perf_counter() - t0 < 2.0
    assert g.shape == (n,) and np.isfinite(g).all()


def test_bad_inputs_are_rejected():
    z = np.zeros(3, F)
    with pytest.raises(ValueError, match="same"):
        mc_returns_to_go(np.zeros(4, F), z, z, 0.99)
    with pytest.raises(ValueError, match="non-finite.*row 1"):
        mc_returns_to_go(np.array([0, np.nan, 0], F), z, z, 0.99)
    with pytest.raises(ValueError, match="gamma"):
        mc_returns_to_go(z, z, z, 1.5)
    with pytest.raises(ValueError, match="gamma < 1"):
        mc_returns_to_go(z, z, z, 1.0, sparse_negative_reward=-1.0)
    assert mc_returns_to_go(np.zeros(0, F), np.zeros(0, F), np.zeros(0, F), 0.99).shape == (0,)
