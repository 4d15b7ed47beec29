"""Env construction: `TaskSpec` -> gymnasium env / SyncVectorEnv with the conventions rollout relies on.

Env side of the data path (feeds `runtime/datapath/rollout.py`). Every env made here has a flat float32 obs [O],
an agent action space Box(-1, 1) [A], raw (unscaled) rewards, `info["success"]` (antmaze, kitchen,
adroit) and TimeLimit truncation at `spec.max_episode_steps`. gymnasium-robotics is imported on first
use only, so `import wsrl_dist.envs` stays cheap.

Vector envs use autoreset mode SAME_STEP. When sub-env i ends at a step (terminated or truncated):
- the returned obs[i] is already the *reset* obs of the next episode;
- the true last obs is `info["final_obs"][i]` (mask `info["_final_obs"][i]`), and that step's info
  (e.g. "success") is `info["final_info"]` (dict of arrays, mask `"_" + key`);
- reward[i], terminated[i], truncated[i] belong to the finished step, so every step is a valid
  transition. Use `true_next_obs(obs, info)` to build `next_observations` [N, O] and
  `step_success(info, N)` for the step's success flags.
Offline data: `dataset_obs_transform(task)` maps Minari observations to the same obs layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from wsrl_dist.envs.tasks import TaskSpec, get_task

EVAL_SEED_OFFSET = 1000  # WSRL seeds its eval env with seed + 1000 (reference section 3)
_ROBOTICS_FAMILIES = ("antmaze", "kitchen", "adroit")


def _spec(task: str | TaskSpec) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else get_task(task)


@functools.cache
def _register_robotics() -> None:
    import gymnasium as gym
    import gymnasium_robotics  # registers AntMaze_*, FrankaKitchen-v1, AdroitHand* on import

    gym.register_envs(gymnasium_robotics)


def make_env(task: str | TaskSpec, seed: int | None = None, *, eval_mode: bool = False):
    """One env for `task` (registry name or spec), returns `gymnasium.Env`.

    `seed` is used at the first reset that gets no seed (and seeds the action space); with
    `eval_mode=True` it is offset by EVAL_SEED_OFFSET so eval and training episodes differ.
    """
    import gymnasium as gym

    from wsrl_dist.envs import wrappers as w

    spec = _spec(task)
    if spec.family in _ROBOTICS_FAMILIES:
        _register_robotics()
    env = gym.make(spec.env_id, max_episode_steps=spec.max_episode_steps, disable_env_checker=True,
                   **spec.make_kwargs())
    if spec.family == "antmaze":
        env = w.AntMazeD4RL(env)
    elif spec.family == "kitchen":
        env = w.KitchenSubtasks(env)
    elif spec.family == "adroit":
        env = w.BinarySuccess(env)
    env = w.AgentActions(env, spec.clip_actions)
    if env.observation_space.dtype != np.float32:
        env = w.Float32Obs(env)
    if seed is not None:
        env = w.SeedFirstReset(env, seed + (EVAL_SEED_OFFSET if eval_mode else 0))
    return env


def make_vector_env(task: str | TaskSpec, num_envs: int, seed: int | None = None, *,
                    eval_mode: bool = False):
    """`num_envs` copies of `make_env(task, seed + i)` in a SyncVectorEnv with SAME_STEP autoreset."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    spec = _spec(task)
    fns = [functools.partial(make_env, spec, None if seed is None else seed + i, eval_mode=eval_mode)
           for i in range(num_envs)]
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


def true_next_obs(obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """`next_observations` [N, O] for a SAME_STEP vector step: obs with finished rows replaced by
    `info["final_obs"]` (the real last obs, not the reset obs). Returns a new float32 array."""
    out = np.array(obs, dtype=np.float32)
    mask = info.get("_final_obs")
    if mask is not None:
        for i in np.flatnonzero(mask):
            out[i] = info["final_obs"][i]
    return out


def step_success(info: dict[str, Any], num_envs: int) -> np.ndarray:
    """Per-env `success` [N] bool of the step just taken (SAME_STEP): finished envs read `final_info`,
    because their `info["success"]` already belongs to the reset. False where undefined."""
    out = np.zeros(num_envs, dtype=bool)
    for src in (info, info.get("final_info") or {}):
        if "success" in src:
            mask = np.asarray(src.get("_success", np.ones(num_envs, dtype=bool)), dtype=bool)
            out[mask] = np.asarray(src["success"], dtype=bool)[mask]
    return out


def dataset_obs_transform(task: str | TaskSpec) -> Callable[[Any], np.ndarray]:
    """Batched map from a Minari episode's observations (array or Dict of arrays, leading axis T + 1)
    to what `make_env(task)` observes, [T + 1, O] float32 (for `data.minari.load_minari`)."""
    from wsrl_dist.envs import wrappers as w

    spec = _spec(task)
    if spec.family == "antmaze":
        return w.antmaze_obs
    if spec.family == "kitchen":
        tasks = tuple(spec.make_kwargs()["tasks_to_complete"])
        return lambda obs: w.kitchen_d4rl_obs(obs["observation"], tasks)
    return lambda obs: np.asarray(obs, dtype=np.float32)


@functools.cache
def _dims(spec: TaskSpec) -> tuple[int, int]:
    env = make_env(spec)
    try:
        return int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    finally:
        env.close()


def obs_act_dims(task: str | TaskSpec) -> tuple[int, int]:
    """(obs_dim, act_dim) of `make_env(task)`; builds the env once, closes it, caches the answer."""
    return _dims(_spec(task))
