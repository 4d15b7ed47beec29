"""envs layer of wsrl_dist: task registry (`tasks`), env construction (`make`), wrappers (`wrappers`).

Start of the data path (env -> rollout). `import wsrl_dist.envs` loads only the registry (stdlib +
numpy); the gymnasium-based names below are imported on first attribute access.
"""

from __future__ import annotations

from typing import Any

from wsrl_dist.envs.tasks import (
    ACTION_CLIP,
    FAMILIES,
    TaskConfig,
    TaskSpec,
    UnknownTaskError,
    get_task,
    list_tasks,
)

_LAZY = {
    "make_env": "make", "make_vector_env": "make", "obs_act_dims": "make", "true_next_obs": "make",
    "step_success": "make", "dataset_obs_transform": "make", "EVAL_SEED_OFFSET": "make",
}

__all__ = ["ACTION_CLIP", "FAMILIES", "TaskConfig", "TaskSpec", "UnknownTaskError", "get_task",
           "list_tasks", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"wsrl_dist.envs.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'wsrl_dist.envs' has no attribute {name!r}")
