"""What the dataset builder builds: recipes, BuildSpec (and its cache key), the behaviour run's history.

The declarative half of the D4RL-recipe builder (data/builder.py): recipe names and their parse from
a task name, the behaviour SAC's hyperparameters, the validated spec whose hash names the cached file,
the behaviour run's key (medium and medium-replay share one run), TrainHistory, and the progress
events (BuildReport) the builder sends. Apart from builder.py, which trains, rolls out and writes,
so the spec and its cache key read without the training loop. data/builder.py re-exports all of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsrl_dist.algo.nets import NetConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.envs.tasks import TaskSpec, get_task

RECIPES = ("random", "medium", "medium-replay", "expert", "medium-expert")
# 2: dataset rollouts from `rollout_envs` env streams (BuildSpec.rollout_envs)
BUILDER_VERSION = 2
DATASET_NOTE = "built by wsrl_dist's D4RL-recipe builder, not the original D4RL data"
# Families where "SAC to a return target" makes sense: dense rewards. AntMaze/Kitchen/Adroit data came
# from planners, demos and BC rollouts, which SAC from scratch on a sparse reward cannot stand in for.
BUILDABLE_FAMILIES = ("locomotion", "classic")
# Medium targets for tasks without D4RL reference scores: 1/3 of the way from a random policy's return
# to a solved one's. Pendulum-v1: random ~ -1230, solved ~ -150 (200-step episodes) -> -870.
DEFAULT_MEDIUM_TARGETS: dict[str, float] = {"pendulum-v1": -870.0}
# Progress events for callers that show or export build progress (the Ray learner, `launch`): called
# with {"stage": "build", "part": "behaviour" | "rollout", "done", "total", "eval_return",
# "target_return"} about every REPORT_EVERY steps or rows, at each behaviour eval and at each part's end.
BuildReport = Callable[[dict[str, Any]], None]
REPORT_EVERY = 1_000


def recipe_from_task(task_name: str) -> str:
    """The recipe word in a D4RL-style name ('hopper-medium-replay-v2' -> 'medium-replay'); 'medium'
    when there is none ('inverted-pendulum-v5'). Two-word recipes are matched before one-word ones."""
    padded = f"-{re.sub(r'-v[0-9]+$', '', task_name)}-"
    for recipe in sorted(RECIPES, key=len, reverse=True):
        if f"-{recipe}-" in padded:
            return recipe
    return "medium"


def behaviour_sac_config() -> SACConfig:
    """Plain SAC as D4RL's behaviour learner (rlkit SAC): clipped double Q (2 critics, target = min of
    both), entropy in the backup, lr 3e-4 everywhere, UTD 1, batch 256. WSRL's 10-member ensemble,
    LayerNorm and 1e-4 actor lr are fine-tuning choices (wsrl-reference), not needed to make data."""
    return SACConfig(critic_ensemble_size=2, critic_subsample_size=2, backup_entropy=True,
                     actor_lr=3e-4, critic_lr=3e-4, temperature_lr=3e-4, utd=1, batch_size=256,
                     ghost_adam_steps=False)


@dataclass
class BuildSpec:
    """What to build. None fields are filled by `resolved()`; `device` does not enter the cache key."""

    task: str
    recipe: str | None = None  # None -> recipe_from_task(task)
    # Rows written. medium-replay writes the whole buffer, capped to its last `transitions` rows.
    transitions: int = 1_000_000
    train_steps: int = 1_000_000  # SAC env-step budget of the behaviour run
    # medium / medium-replay stop here; medium-expert snapshots its medium half here; expert ignores it
    # (trains the whole budget). None -> ref_max_score / 3 (D4RL: 1/3 of expert), else DEFAULT_MEDIUM_TARGETS.
    target_return: float | None = None
    seed: int = 0
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    sac: SACConfig = field(default_factory=behaviour_sac_config)
    random_steps: int = 5_000  # uniform random actions, no updates, before SAC starts (as CleanRL's SAC)
    eval_every: int = 10_000
    eval_episodes: int = 10
    # Deviation: D4RL rolled its policy out in one env; here `rollout_envs` seeded envs each write a
    # contiguous stream (data/parallel_rollout.py), so the rows end in that many partial episodes
    # (timeouts) instead of one. The data depends on this number, not on the processes running it.
    rollout_envs: int = 16
    device: str = "cpu"

    def resolved(self) -> BuildSpec:
        """A validated copy with recipe and target_return filled in."""
        task = get_task(self.task)
        if task.family not in BUILDABLE_FAMILIES:
            raise ValueError(f"task {self.task!r}: family {task.family!r} cannot be built by SAC rollouts "
                             f"(buildable families: {BUILDABLE_FAMILIES})")
        recipe = self.recipe or recipe_from_task(self.task)
        if recipe not in RECIPES:
            raise ValueError(f"recipe {recipe!r} not in {RECIPES}")
        for name in ("transitions", "eval_every", "eval_episodes", "rollout_envs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if recipe != "random" and self.train_steps <= self.random_steps:
            raise ValueError(f"train_steps ({self.train_steps}) must exceed random_steps ({self.random_steps})")
        self.sac.validate()
        target = self.target_return
        if target is None and recipe != "random":
            target = medium_target(task)
        return dataclasses.replace(self, recipe=recipe, target_return=target, hidden=list(self.hidden),
                                   sac=dataclasses.replace(self.sac))

    def net_config(self) -> NetConfig:
        # Plain rlkit-style SAC nets, not WSRL's: no LayerNorm (the fine-tuning nets use it,
        # wsrl-reference "Networks"), two separate critics each with its own head, and the default
        # init on the critic's last hidden layer. Same initial weights as before the shared head.
        return NetConfig(actor_hidden=list(self.hidden), critic_hidden=list(self.hidden), layer_norm=False,
                         shared_q_head=False, critic_kernel_scale_final=None)

    def key(self) -> dict[str, Any]:
        """The fields that decide the file's content (device excluded; no training fields for random)."""
        d = dataclasses.asdict(self)
        d.pop("device")
        if d["recipe"] == "random":
            for k in ("train_steps", "target_return", "sac", "random_steps", "eval_every"):
                d.pop(k)
        return {"builder_version": BUILDER_VERSION, **d}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:10]


def medium_target(task: TaskSpec) -> float:
    if task.ref_max_score is not None and task.ref_max_score > 0:
        return task.ref_max_score / 3.0
    if task.name in DEFAULT_MEDIUM_TARGETS:
        return DEFAULT_MEDIUM_TARGETS[task.name]
    raise ValueError(f"task {task.name!r} has no reference score: set BuildSpec.target_return")


@dataclass
class TrainHistory:
    """One behaviour run: periodic deterministic eval returns and the policies the recipes need."""

    env_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    train_steps_used: int = 0
    target_return: float | None = None
    target_reached_at: int | None = None  # env steps at the first eval >= target_return
    wall_s: float = 0.0
    medium_weights: dict[str, np.ndarray] | None = None  # actor at target_reached_at (exported)
    final_weights: dict[str, np.ndarray] | None = None  # actor at the end of the run

    def scalars(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if not k.endswith("_weights")}


def _report(report: BuildReport | None, part: str, done: int, total: int,
            hist: TrainHistory | None = None) -> None:
    if report is None:
        return
    report({"stage": "build", "part": part, "done": int(done), "total": int(total),
            "eval_return": hist.eval_returns[-1] if hist is not None and hist.eval_returns else None,
            "target_return": hist.target_return if hist is not None else None})


def _run_mode(spec: BuildSpec) -> str:
    return "to-target" if spec.recipe in ("medium", "medium-replay") else "full-budget"


def _run_hash(spec: BuildSpec) -> str:
    """What decides a behaviour run (not the rows later written): recipes that share a run share it."""
    key = {**spec.key(), "recipe": _run_mode(spec), "transitions": None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
