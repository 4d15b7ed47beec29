"""Task registry: D4RL-style task names -> `TaskSpec` (env id, Minari dataset, reward scale, scores).

First stop of the data path: `make.py` builds envs from a spec, the data layer loads `spec.minari_id`
and applies `spec.scale_reward` once when transitions enter training arrays (docs/CONVENTIONS.md).
Pure stdlib + numpy: importing this module never imports gymnasium or MuJoCo.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

FAMILIES = ("locomotion", "antmaze", "kitchen", "adroit", "classic")
SUCCESS_METRICS = ("normalized_return", "success_rate", "kitchen_tasks")
# Agent actions are clipped to +-ACTION_CLIP before reaching the env (reference gotcha 8).
ACTION_CLIP = 0.99999


@dataclass(frozen=True)
class TaskSpec:
    """Everything the other layers need to know about one task; immutable.

    `env_kwargs` goes to `gymnasium.make(env_id, **env_kwargs)`; nested sequences are stored as tuples
    (`make_kwargs()` returns fresh lists). `minari_id` is the Minari dataset standing in for the D4RL
    one (None where Minari has no counterpart); `minari_concat` lists datasets appended after it
    (D4RL medium-expert = medium + expert). `dataset_note` says how close the stand-in is.
    """

    name: str
    family: str
    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    minari_id: str | None = None
    minari_concat: tuple[str, ...] = ()
    dataset_note: str = ""
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    sparse_reward: bool = False
    sparse_negative_reward: float | None = None
    clip_actions: float | None = ACTION_CLIP
    max_episode_steps: int = 1000
    success_metric: str = "normalized_return"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"task {self.name!r}: family {self.family!r} not in {FAMILIES}")
        if self.success_metric not in SUCCESS_METRICS:
            raise ValueError(f"task {self.name!r}: success_metric {self.success_metric!r} not in {SUCCESS_METRICS}")
        if self.sparse_reward and self.sparse_negative_reward is None:
            raise ValueError(f"task {self.name!r}: sparse tasks need sparse_negative_reward")
        if self.max_episode_steps <= 0:
            raise ValueError(f"task {self.name!r}: max_episode_steps must be positive")
        object.__setattr__(self, "env_kwargs", MappingProxyType(_freeze(dict(self.env_kwargs))))

    def make_kwargs(self) -> dict[str, Any]:
        """Fresh, mutable `gymnasium.make` kwargs (tuples back to lists, e.g. `maze_map`)."""
        return {k: _thaw(v) for k, v in self.env_kwargs.items()}

    def scale_reward(self, r: Any) -> Any:
        """r' = reward_scale * r + reward_bias; floats, numpy arrays (dtype kept) or tensors."""
        return r * self.reward_scale + self.reward_bias

    @property
    def has_ref_scores(self) -> bool:
        return self.ref_min_score is not None and self.ref_max_score is not None

    def normalized_score(self, returns: Any) -> Any:
        """D4RL score 100 * (R - ref_min) / (ref_max - ref_min) on raw (unscaled) returns [N] or a float."""
        if not self.has_ref_scores:
            raise ValueError(
                f"task {self.name!r} has no D4RL reference scores; report its {self.success_metric} instead"
            )
        lo, hi = float(self.ref_min_score), float(self.ref_max_score)  # type: ignore[arg-type]
        out = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
        return float(out) if out.ndim == 0 else out


@dataclass
class TaskConfig:
    """Config section `task`: a registry name plus optional overrides (None keeps the registry value)."""

    name: str = "antmaze-large-diverse-v2"
    reward_scale: float | None = None
    reward_bias: float | None = None
    max_episode_steps: int | None = None

    def spec(self) -> TaskSpec:
        base = get_task(self.name)
        overrides = {k: v for k in ("reward_scale", "reward_bias", "max_episode_steps")
                     if (v := getattr(self, k)) is not None}
        return dataclasses.replace(base, **overrides) if overrides else base


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _freeze(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


# --------------------------------------------------------------------------------------------------
# Registry. Reference scores: ../shared/wsrl-reference-full.md section 3 (D4RL infos.py; v2 locomotion
# reuses the v0 entries). Scales: reference section 2.2.
_REGISTRY: dict[str, TaskSpec] = {}


def _add(spec: TaskSpec) -> None:
    assert spec.name not in _REGISTRY, spec.name
    _REGISTRY[spec.name] = spec


# Locomotion: D4RL v2 datasets came from Gym MuJoCo -v3 envs; Minari's `mujoco/*` datasets were
# collected on the -v5 envs, which is why the envs here are -v5. Minari has medium/expert/simple only.
_LOCO = {  # name: (env id, minari name, ref min, ref max)
    "halfcheetah": ("HalfCheetah-v5", "halfcheetah", -280.178953, 12135.0),
    "hopper": ("Hopper-v5", "hopper", -20.272305, 3234.3),
    "walker2d": ("Walker2d-v5", "walker2d", 1.629008, 4592.3),
    "ant": ("Ant-v5", "ant", -325.6, 3879.7),
}
for _robot, (_env_id, _mname, _lo, _hi) in _LOCO.items():
    _m = f"mujoco/{_mname}"
    _datasets = {
        "random": (None, (), f"no Minari counterpart (nearest: {_m}/simple-v0, a weak SAC policy, not uniform random)"),
        "medium": (f"{_m}/medium-v0", (), "Minari regeneration on the -v5 env (SAC policy), not the D4RL data"),
        "medium-replay": (None, (), "no Minari counterpart (D4RL's was the replay buffer of a medium-level run)"),
        "medium-expert": (f"{_m}/medium-v0", (f"{_m}/expert-v0",), "medium + expert concatenated, as D4RL built it"),
        "expert": (f"{_m}/expert-v0", (), "Minari regeneration on the -v5 env (SAC policy), not the D4RL data"),
    }
    for _q, (_mid, _concat, _note) in _datasets.items():
        _add(TaskSpec(
            name=f"{_robot}-{_q}-v2", family="locomotion", env_id=_env_id,
            minari_id=_mid, minari_concat=_concat, dataset_note=_note,
            ref_min_score=_lo, ref_max_score=_hi, max_episode_steps=1000,
        ))

# AntMaze: one fixed reset cell 'r' and one goal cell 'g' per maze, as D4RL's eval variants. Cell
# indices follow the maps of the Minari datasets (minari-dataset-generation-scripts, antmaze): medium and
# large are D4RL's *_TEST maps; umaze uses the Minari umaze dataset's own goal (row 1) and start (row 3).
_R, _G = "r", "g"
_MAZES = {  # maze: (gymnasium-robotics id, map, horizon)
    "umaze": ("AntMaze_UMaze-v5", [
        [1, 1, 1, 1, 1],
        [1, _G, 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, _R, 0, 0, 1],
        [1, 1, 1, 1, 1]], 700),
    "medium": ("AntMaze_Medium-v5", [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, _R, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, _G, 1],
        [1, 1, 1, 1, 1, 1, 1, 1]], 1000),
    "large": ("AntMaze_Large-v5", [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, _R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, _G, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]], 1000),
}
for _maze, _variants in (("umaze", ("", "-diverse")), ("medium", ("-play", "-diverse")),
                         ("large", ("-play", "-diverse"))):
    _env_id, _map, _h = _MAZES[_maze]
    for _v in _variants:
        _add(TaskSpec(
            name=f"antmaze-{_maze}{_v}-v2", family="antmaze", env_id=_env_id,
            env_kwargs={"maze_map": _map, "reward_type": "sparse", "continuing_task": False,
                        "reset_target": False, "include_cfrc_ext_in_observation": False},
            minari_id=f"D4RL/antmaze/{_maze}{_v}-v1",
            dataset_note="Minari regeneration (AntMaze v4); its rewards refer to the collection goals: "
                         "relabel with wrappers.antmaze_reward. Original D4RL HDF5 obs use another "
                         "frame (offset; medium/large mirrored) and do not fit this env",
            ref_min_score=0.0, ref_max_score=1.0, reward_scale=10.0, reward_bias=-5.0,
            sparse_reward=True, sparse_negative_reward=-5.0,  # 10 * 0 - 5
            max_episode_steps=_h, success_metric="success_rate",
        ))

# Kitchen: D4RL's task lists (complete/partial: microwave, kettle, light switch, slide cabinet).
_KITCHEN = {
    "complete": ("microwave", "kettle", "light switch", "slide cabinet"),
    "partial": ("microwave", "kettle", "light switch", "slide cabinet"),
    "mixed": ("microwave", "kettle", "bottom burner", "light switch"),
}
for _k, _tasks in _KITCHEN.items():
    _add(TaskSpec(
        name=f"kitchen-{_k}-v0", family="kitchen", env_id="FrankaKitchen-v1",
        env_kwargs={"tasks_to_complete": list(_tasks)},
        minari_id=f"D4RL/kitchen/{_k}-v2",
        dataset_note="D4RL demos replayed in FrankaKitchen-v1 (59-d obs: map with make.dataset_obs_transform); "
                     "reward = subtasks solved at that step",
        ref_min_score=0.0, ref_max_score=4.0, reward_scale=1.0, reward_bias=-4.0,
        max_episode_steps=280, success_metric="kitchen_tasks",
    ))

# Adroit binary (Cal-QL): reward -1 until success, 0 at success; no D4RL reference scores.
for _k, _env_id, _h in (("pen", "AdroitHandPen-v1", 100), ("door", "AdroitHandDoor-v1", 200),
                        ("relocate", "AdroitHandRelocate-v1", 200)):
    _add(TaskSpec(
        name=f"{_k}-binary-v0", family="adroit", env_id=_env_id,
        minari_id=f"D4RL/{_k}/human-v2",
        dataset_note="Cal-QL's binary data (demos + BC rollouts) is not on Minari; human demos stand in "
                     f"(D4RL/{_k}/cloned-v2 is closer in make-up); relabel rewards from infos['success']",
        reward_scale=10.0, reward_bias=5.0, sparse_reward=True, sparse_negative_reward=-5.0,  # 10 * -1 + 5
        clip_actions=None, max_episode_steps=_h, success_metric="success_rate",
    ))

# Classic control, for fast tests. InvertedPendulum earns +1 per step alive, so 0 and 1000 bound the
# return exactly over the 1000-step horizon; Pendulum has no agreed bounds, so no scores.
_add(TaskSpec(
    name="inverted-pendulum-v5", family="classic", env_id="InvertedPendulum-v5",
    minari_id="mujoco/invertedpendulum/medium-v0", dataset_note="Minari dataset on the same env",
    ref_min_score=0.0, ref_max_score=1000.0, max_episode_steps=1000,
))
_add(TaskSpec(name="pendulum-v1", family="classic", env_id="Pendulum-v1", max_episode_steps=200))


class UnknownTaskError(KeyError):
    """Raised by `get_task` for a name not in the registry; the message names close matches."""

    def __str__(self) -> str:
        return str(self.args[0])


def list_tasks(family: str | None = None) -> list[str]:
    """Sorted registered task names, optionally only one family."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def get_task(name: str) -> TaskSpec:
    """The registered `TaskSpec` for `name`; `UnknownTaskError` (a KeyError) naming close matches otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(close)}?" if close else f"known tasks: {', '.join(list_tasks())}"
        raise UnknownTaskError(f"unknown task {name!r}; {hint}") from None
