"""Vector env contract: SAME_STEP autoreset, true final obs for next_observations, success of finished envs."""

from __future__ import annotations

import numpy as np

from wsrl_dist.envs import get_task, make_env, make_vector_env, step_success, true_next_obs


def test_truncated_step_exposes_true_final_obs_and_returns_reset_obs():
    spec = get_task("pendulum-v1")
    vec = make_vector_env(spec, num_envs=2, seed=5)
    ref = make_env(spec, seed=6)  # the same env as vec's sub-env 1
    obs, _ = vec.reset()
    ref_obs, _ = ref.reset()
    assert obs.shape == (2, 3) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[1], ref_obs)
    rng = np.random.default_rng(0)
    for t in range(1, spec.max_episode_steps + 1):
        act = rng.uniform(-1, 1, size=(2, 1)).astype(np.float32)
        obs, rew, terminated, truncated, info = vec.step(act)
        ref_obs, ref_rew, _, ref_trunc, _ = ref.step(act[1])
        assert rew[1] == ref_rew and truncated[1] == ref_trunc
        nxt = true_next_obs(obs, info)
        np.testing.assert_allclose(nxt[1], ref_obs, rtol=1e-6)  # the real s', also on the last step
        if t < spec.max_episode_steps:
            assert not truncated.any() and "final_obs" not in info
    assert truncated.all() and not terminated.any()
    assert not np.allclose(obs[1], ref_obs)  # returned obs is already the next episode's reset obs
    ref_reset, _ = ref.reset()
    np.testing.assert_allclose(obs[1], ref_reset, rtol=1e-6)  # ... the same one the sub-env would reset to
    vec.close()


def test_success_of_a_finished_env_is_read_from_final_info():
    vec = make_vector_env("door-binary-v0", num_envs=2, seed=0)
    vec.reset()
    base = vec.envs[0].unwrapped
    qpos = base.data.qpos.copy()
    qpos[base.door_hinge_addrs] = 1.5
    base.set_state(qpos, np.zeros_like(base.data.qvel))
    _, rew, terminated, truncated, info = vec.step(np.zeros((2, 28), dtype=np.float32))
    assert terminated.tolist() == [True, False] and rew.tolist() == [0.0, -1.0]
    assert not info["success"][0]  # env 0 was reset in the same step: its info is the reset info
    assert step_success(info, 2).tolist() == [True, False]
    assert true_next_obs(np.zeros((2, 39)), info)[0].any()  # final obs filled in for env 0 only
    assert not true_next_obs(np.zeros((2, 39)), info)[1].any()
    vec.close()


def test_step_success_is_false_where_undefined():
    vec = make_vector_env("hopper-medium-v2", num_envs=2, seed=0)
    vec.reset()
    _, _, _, _, info = vec.step(np.zeros((2, 3), dtype=np.float32))
    assert step_success(info, 2).tolist() == [False, False]
    vec.close()
