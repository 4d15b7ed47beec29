"""Gymnasium wrappers that turn gymnasium(-robotics) envs into WSRL's D4RL-style tasks.

Env side of the data path: `make.py` stacks these so rollout sees a flat float32 obs [O], agent actions
in [-1, 1] [A], raw rewards and `info["success"]`. Differences from the original D4RL / WSRL envs
(the README reuses this table):

| family | item | D4RL / WSRL original | here |
|---|---|---|---|
| all | simulator | mujoco-py, MuJoCo 2.x, old gym API | MuJoCo 3.3.7 bindings, gymnasium 1.x API |
| all | actions | env rescaled to agent range +-0.99999, then clipped (env sees a / 0.99999) | agent Box(-1, 1); clipped to +-clip, then mapped affinely to the env bounds (identity for [-1, 1]), so the env sees clip(a): at most 1e-5 (relative) from the original |
| all | last step | WSRL counts a termination on the time-limit step as truncation (reference gotcha 9) | `terminated` and `truncated` may both be True; terminated wins (no bootstrap) |
| all | eval seed | seed + 1000 | same (`make_env(..., eval_mode=True)`) |
| locomotion | env | Gym MuJoCo -v3 envs (D4RL "v2" datasets) | -v5 envs (what Minari's `mujoco/*` data was collected on); D4RL v2 ref scores applied to v5 returns |
| locomotion | ant obs | 111-d (27 + 84 contact forces, zeros under MuJoCo 2) | 105-d Ant-v5 default (27 + 78 contact forces), as in Minari |
| locomotion | data | D4RL random/medium/medium-replay/medium-expert/expert | Minari medium/expert (new SAC policies); medium-expert = both concatenated; random, medium-replay: none |
| antmaze | env | D4RL AntMazeEnv, D4RL ant model | gymnasium-robotics AntMaze_*-v5 (Gymnasium Ant-v5 model), contact forces off |
| antmaze | obs | 29-d qpos (15) + qvel (14): [x, y, z, quat, 8 joints, 14 velocities] | same 29-d layout: [achieved_goal (x, y), observation (27)] |
| antmaze | frame | origin at the start cell, row index -> +y | origin at the maze centre, row index -> -y: medium/large (same maps by index, as Minari) are mirrored in y; umaze (rows reversed, as Minari) matches up to an offset |
| antmaze | goal | fixed per env instance: goal cell + U[0, 1.5) m offset per axis | fixed at the goal-cell centre (`antmaze_goal_xy`); gymnasium's own +-1 m per-reset goal noise is undone, because the goal is not observed |
| antmaze | success | distance <= 0.5 | distance <= 0.45 (gymnasium-robotics) |
| antmaze | start | start cell + U(-0.1, 0.1) qpos noise | start-cell centre + U(-1, 1) m xy noise (gymnasium-robotics) |
| antmaze | umaze cells | start row 1, goal row 3 (D4RL coords) | start (3, 1), goal (1, 1) = the Minari umaze data's goal; Minari's eval spec uses the mirrored map (start (1, 3), goal (3, 3)) |
| antmaze | data rewards | relative to the eval goal | Minari rewards refer to the collection goals (random per episode for play/diverse): relabel with `antmaze_reward` |
| antmaze | D4RL files | obs in D4RL's frame | original D4RL antmaze HDF5 obs do not fit these envs: x, y are offset (origin at the start cell) and medium/large are mirrored in y; use Minari or data collected in these envs |
| kitchen | env | D4RL kitchen v0 (adept_envs) | FrankaKitchen-v1 |
| kitchen | obs | 60-d: robot qpos (9), object qpos (21), goal (30, constant per task) | same 60-d layout, built from FrankaKitchen's 59-d obs (robot qpos 9, robot qvel 9, object qpos 21, object qvel 20) by `kitchen_d4rl_obs`; velocities dropped as in D4RL (`KitchenSubtasks(d4rl_layout=False)` keeps the 59-d obs) |
| kitchen | reward | WSRL fork: cumulative number of solved subtasks 0..4 | number of goal subtasks solved so far this episode (a subtask stays counted if later undone); Minari data counts subtasks solved at that step (differs only after an undo) |
| kitchen | end | done when all 4 subtasks are solved | same; `info["success"]` = all solved |
| adroit | env | nakamotoo/mj_envs pen/door/relocate-binary-v0 | AdroitHand{Pen,Door,Relocate}-v1; same obs dims 45/39/39, same [-1, 1] action normalisation |
| adroit | reward | -1 / 0 from goal_achieved, done at success | -1 / 0 from `info["success"]`, terminated at success; horizons 100/200/200 (pen-v1's own limit is 200) |
| adroit | data | Cal-QL .npy (demos + BC rollouts) | Minari D4RL/*/human-v2 (no Minari copy of the binary data); rewards relabelled from infos["success"] |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import RecordConstructorArgs

ANTMAZE_MAZE_SCALING = 4.0  # gymnasium-robotics AntMaze maze_size_scaling
ANTMAZE_SUCCESS_RADIUS = 0.45  # gymnasium-robotics goal radius (D4RL used 0.5)
_F32_INF_BOX = dict(low=-np.inf, high=np.inf, dtype=np.float32)


def antmaze_goal_xy(maze_map: Sequence[Sequence[Any]], scaling: float = ANTMAZE_MAZE_SCALING) -> np.ndarray:
    """Centre [2] (x, y) of the single 'g' cell, in gymnasium-robotics maze coordinates (no env needed)."""
    cells = [(i, j) for i, row in enumerate(maze_map) for j, c in enumerate(row) if c == "g"]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one 'g' cell in the maze map, found {len(cells)}")
    (i, j), rows, cols = cells[0], len(maze_map), len(maze_map[0])
    # Maze.cell_rowcol_to_xy: origin at the map centre, rows grow towards -y.
    return np.array([(j + 0.5) * scaling - cols * scaling / 2, rows * scaling / 2 - (i + 0.5) * scaling])


def antmaze_reward(xy: np.ndarray, maze_map: Sequence[Sequence[Any]]) -> np.ndarray:
    """Sparse reward [...] float32 of torso positions xy [..., 2] against the task's pinned goal: 1 within
    ANTMAZE_SUCCESS_RADIUS, else 0 (what the env pays; for relabelling Minari rewards)."""
    dist = np.linalg.norm(np.asarray(xy, dtype=np.float64) - antmaze_goal_xy(maze_map), axis=-1)
    return (dist <= ANTMAZE_SUCCESS_RADIUS).astype(np.float32)


def antmaze_obs(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Goal-env dict (batched or not) -> D4RL layout [..., 29] float32: [x, y] + 27-d ant state."""
    return np.concatenate([obs["achieved_goal"], obs["observation"]], axis=-1).astype(np.float32)


def kitchen_d4rl_obs(obs59: np.ndarray, tasks: Sequence[str]) -> np.ndarray:
    """59-d kitchen obs [..., 59] -> D4RL 60-d layout [..., 60]: robot qpos, object qpos, 30-d goal."""
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import (
        OBS_ELEMENT_GOALS,
        OBS_ELEMENT_INDICES,
    )

    obs59 = np.asarray(obs59, dtype=np.float32)
    goal = np.zeros(30, dtype=np.float32)
    for t in tasks:  # D4RL: zeros except the goal joints of the episode's subtasks (indices into qpos)
        goal[OBS_ELEMENT_INDICES[t]] = OBS_ELEMENT_GOALS[t]
    goal = np.broadcast_to(goal, obs59.shape[:-1] + (30,))
    return np.concatenate([obs59[..., 0:9], obs59[..., 18:39], goal], axis=-1)


class AgentActions(gym.ActionWrapper, RecordConstructorArgs):
    """Agent space Box(-1, 1) [A] -> clip to +-clip (None: no clip) -> affine map to the env's bounds."""

    def __init__(self, env: gym.Env, clip: float | None):
        RecordConstructorArgs.__init__(self, clip=clip)
        gym.ActionWrapper.__init__(self, env)
        inner = env.action_space
        assert isinstance(inner, spaces.Box), f"continuous actions only, got {inner}"
        self._clip = clip
        self._low = inner.low.astype(np.float64)
        self._high = inner.high.astype(np.float64)
        self._identity = bool(np.all(self._low == -1.0) and np.all(self._high == 1.0))
        self._dtype = inner.dtype
        self.action_space = spaces.Box(-1.0, 1.0, shape=inner.shape, dtype=np.float32)

    def action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if self._clip is not None:
            a = np.clip(a, -self._clip, self._clip)
        if not self._identity:
            a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        return a.astype(self._dtype)


class Float32Obs(gym.ObservationWrapper, RecordConstructorArgs):
    """Box obs of any float dtype -> float32 copy [O] (bounds cast too)."""

    def __init__(self, env: gym.Env):
        RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        inner = env.observation_space
        assert isinstance(inner, spaces.Box) and len(inner.shape) == 1, f"flat Box obs only, got {inner}"
        self.observation_space = spaces.Box(inner.low.astype(np.float32), inner.high.astype(np.float32),
                                            dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.array(observation, dtype=np.float32)


class AntMazeD4RL(gym.Wrapper, RecordConstructorArgs):
    """AntMaze dict obs -> 29-d float32 [29]; optionally pins the goal to the goal-cell centre.

    Reward (0/1), termination at the goal (needs continuing_task=False) and `info["success"]` are the
    env's own; pinning happens right after reset, so all three use the pinned goal.
    """

    def __init__(self, env: gym.Env, fixed_goal: bool = True):
        RecordConstructorArgs.__init__(self, fixed_goal=fixed_goal)
        gym.Wrapper.__init__(self, env)
        self.observation_space = spaces.Box(shape=(29,), **_F32_INF_BOX)
        self._fixed_goal = fixed_goal

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        base = self.env.unwrapped
        if self._fixed_goal:
            goals = base.maze.unique_goal_locations
            if len(goals) != 1:
                raise ValueError("fixed_goal needs a maze map with exactly one 'g' cell")
            base.goal = np.array(goals[0], dtype=np.float64)
            base.update_target_site_pos()
        info = dict(info)
        dist = float(np.linalg.norm(obs["achieved_goal"] - base.goal))
        info["success"] = dist <= ANTMAZE_SUCCESS_RADIUS
        return antmaze_obs(obs), info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["success"] = bool(info.get("success", False))
        return antmaze_obs(obs), float(reward), bool(terminated), bool(truncated), info


class KitchenSubtasks(gym.Wrapper, RecordConstructorArgs):
    """FrankaKitchen -> D4RL-layout obs [60] (or the raw [59]); reward = subtasks solved so far (0..n).

    Needs the env's defaults remove_task_when_completed=True and terminate_on_tasks_completed=True, so
    a solved subtask is counted once and the episode terminates when all are solved (WSRL's done when
    raw reward = 4). Adds `info["num_completed"]` and `info["success"]` (all solved).
    """

    def __init__(self, env: gym.Env, d4rl_layout: bool = True):
        RecordConstructorArgs.__init__(self, d4rl_layout=d4rl_layout)
        gym.Wrapper.__init__(self, env)
        base = env.unwrapped
        if not (base.remove_task_when_completed and base.terminate_on_tasks_completed):
            raise ValueError("KitchenSubtasks needs remove_task_when_completed and terminate_on_tasks_completed")
        self.tasks = tuple(base.goal.keys())
        self._d4rl = d4rl_layout
        self.observation_space = spaces.Box(shape=(60 if d4rl_layout else 59,), **_F32_INF_BOX)

    def _obs(self, obs: dict[str, Any]) -> np.ndarray:
        flat = np.array(obs["observation"], dtype=np.float32)  # copy: the env reuses its arrays
        return kitchen_d4rl_obs(flat, self.tasks) if self._d4rl else flat

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        info = dict(info)
        # Copy the lists: the env clears them in place on reset (autoreset would wipe final_info).
        for key in ("tasks_to_complete", "step_task_completions", "episode_task_completions"):
            info[key] = list(info.get(key, ()))
        info["num_completed"] = len(info["episode_task_completions"])
        info["success"] = info["num_completed"] == len(self.tasks)
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._obs(obs), self._info(info)

    def step(self, action: Any):
        obs, _, terminated, truncated, info = self.env.step(action)
        info = self._info(info)
        terminated = bool(terminated) or info["success"]
        return self._obs(obs), float(info["num_completed"]), terminated, bool(truncated), info


class BinarySuccess(gym.Wrapper, RecordConstructorArgs):
    """Adroit: reward -1 until `info["success"]`, 0 at success, where the episode terminates."""

    def __init__(self, env: gym.Env):
        RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "success": False}

    def step(self, action: Any):
        obs, _, terminated, truncated, info = self.env.step(action)
        success = bool(info.get("success", False))
        return obs, 0.0 if success else -1.0, bool(terminated) or success, bool(truncated), {
            **info, "success": success}


class SeedFirstReset(gym.Wrapper, RecordConstructorArgs):
    """Uses `seed` for the first reset that is given none (also seeds the action space once)."""

    def __init__(self, env: gym.Env, seed: int):
        RecordConstructorArgs.__init__(self, seed=seed)
        gym.Wrapper.__init__(self, env)
        self._pending: int | None = int(seed)
        self.action_space.seed(int(seed))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed = self._pending
        self._pending = None
        return self.env.reset(seed=seed, options=options)
