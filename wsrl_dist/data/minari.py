"""Minari datasets -> `OfflineDataset` (the transition columns of docs/CONVENTIONS.md).

Data path: local Minari dataset (read with minari's own API) -> `load_minari` -> pre-training arrays.
Observations of Dict/Tuple spaces are flattened (by default the way `gymnasium.spaces.flatten` does).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsrl_dist.data.schema import (
    DatasetError,
    DatasetNotFoundError,
    OfflineDataset,
    validate_transitions,
)

ObsTransform = Callable[[Any], np.ndarray]


def minari_root(root: str | os.PathLike | None = None) -> Path:
    """Datasets root: `root`, else env `MINARI_DATASETS_PATH`, else `~/.minari/datasets` (minari's own rule)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser() if env else Path("~/.minari/datasets").expanduser()


def _index(obs: Any, t: int) -> Any:
    """Observation of step t from an episode's batched observations (array, dict or tuple of them)."""
    if isinstance(obs, dict):
        return {k: _index(v, t) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_index(v, t) for v in obs)
    return obs[t]


def _flatten_batched(obs: Any, space: Any, n: int) -> np.ndarray:
    """[n, O] float: batched version of `gymnasium.spaces.flatten` (Dict in the space's key order)."""
    import gymnasium.spaces as sp

    if isinstance(space, sp.Dict):
        return np.concatenate([_flatten_batched(obs[k], s, n) for k, s in space.spaces.items()], axis=1)
    if isinstance(space, sp.Tuple):
        return np.concatenate([_flatten_batched(o, s, n) for o, s in zip(obs, space.spaces, strict=True)], axis=1)
    if isinstance(space, sp.Discrete):  # one-hot, as gymnasium.spaces.flatten does
        out = np.zeros((n, int(space.n)), dtype=np.float32)
        out[np.arange(n), np.asarray(obs, dtype=np.int64) - int(space.start)] = 1
        return out
    return np.asarray(obs).reshape(n, -1)


def _episode_observations(
    obs: Any, space: Any, n: int, obs_transform: ObsTransform | None, batched: bool
) -> np.ndarray:
    if obs_transform is None:
        if isinstance(obs, (dict, tuple)):
            return _flatten_batched(obs, space, n)
        return np.asarray(obs).reshape(n, -1)
    if batched:
        return np.asarray(obs_transform(obs))
    return np.stack([np.asarray(obs_transform(_index(obs, t))) for t in range(n)])


def load_minari(
    dataset_id: str,
    root: str | os.PathLike | None = None,
    *,
    obs_transform: ObsTransform | None = None,
    obs_transform_batched: bool = False,
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
) -> OfflineDataset:
    """Load a local Minari dataset as transition columns (float32, raw rewards).

    Per episode of T steps (T + 1 observations): observations = obs[:-1], next_observations = obs[1:]
    (so s' on truncation is the true final obs), terminals = terminations, timeouts = truncations. An
    episode that stops with neither flag set gets timeouts = 1 on its last step (the data ends there).
    `obs_transform(obs) -> [O]` maps one step's observation (e.g. a robotics Dict) to a flat vector, as
    the envs layer does for env observations; with `obs_transform_batched` it is called once per episode
    with the stacked observations (leading axis T + 1) and must return [T + 1, O]. Without a transform,
    Dict/Tuple observations are flattened like `gymnasium.spaces.flatten`.
    Raises `DatasetNotFoundError` (with how to download) or `DatasetError` naming the dataset and field.
    """
    import minari

    data_path = minari_root(root) / dataset_id / "data"
    src = f"minari:{dataset_id} ({data_path})"
    if not data_path.is_dir():
        raise DatasetNotFoundError(
            src,
            f"Minari dataset '{dataset_id}' not found under {minari_root(root)} (root from argument, env "
            f"MINARI_DATASETS_PATH or ~/.minari/datasets). Download it where there is network with "
            f"`minari download {dataset_id}` (or minari.download_dataset('{dataset_id}')) and copy the "
            f"'{dataset_id}' directory here, or point MINARI_DATASETS_PATH at it; this machine may have no "
            f"network access.",
        )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "observations", "actions", "rewards", "next_observations", "terminals", "timeouts"
    )}
    read_errors = (OSError, ValueError, KeyError, AssertionError)
    try:
        # Same as minari.load_dataset(dataset_id), but honours an explicit `root` without touching env vars.
        ds = minari.MinariDataset(data_path)
        episodes = iter(ds.iterate_episodes())  # lazily: one episode in memory at a time
    except read_errors as e:
        raise DatasetError(src, None, f"cannot read Minari dataset: {type(e).__name__}: {e}") from e
    while True:
        try:
            ep = next(episodes)
        except StopIteration:
            break
        except read_errors as e:
            raise DatasetError(src, None, f"cannot read Minari episode: {type(e).__name__}: {e}") from e
        # Outside the try: errors raised by a caller's obs_transform propagate as they are.
        _append_episode(parts, ep, ds.observation_space, obs_transform, obs_transform_batched, src)

    if not parts["rewards"]:
        raise DatasetError(src, None, "dataset has no episodes")
    cols = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    obs_dim, act_dim = cols["observations"].shape[1], cols["actions"].shape[1]
    if expected_obs_dim is not None and obs_dim != expected_obs_dim:
        raise DatasetError(src, "observations", f"obs dim {obs_dim} differs from the env's {expected_obs_dim}")
    if expected_act_dim is not None and act_dim != expected_act_dim:
        raise DatasetError(src, "actions", f"action dim {act_dim} differs from the env's {expected_act_dim}")
    cols = validate_transitions(cols, obs_dim, act_dim, source=src, error_cls=DatasetError)
    return OfflineDataset.from_columns(cols, metadata=_metadata(ds), source=src)


def _append_episode(
    parts: dict[str, list[np.ndarray]],
    ep: Any,
    space: Any,
    obs_transform: ObsTransform | None,
    batched: bool,
    src: str,
) -> None:
    """Turn one Minari episode (T steps, T + 1 observations) into rows appended to `parts`."""
    t = len(ep.rewards)
    obs = _episode_observations(ep.observations, space, t + 1, obs_transform, batched)
    if obs.ndim != 2 or obs.shape[0] != t + 1:
        raise DatasetError(
            src, "observations",
            f"episode {ep.id}: transformed observations have shape {obs.shape}, expected [{t + 1}, O]",
        )
    if isinstance(ep.actions, (dict, tuple)):
        raise DatasetError(src, "actions", f"episode {ep.id}: Dict/Tuple action spaces are not supported")
    term = np.asarray(ep.terminations, dtype=bool).reshape(t)
    trunc = np.asarray(ep.truncations, dtype=bool).reshape(t).copy()
    if t and not (term[-1] or trunc[-1]):
        trunc[-1] = True  # the recorded episode stops here: a truncation by the end of the data
    parts["observations"].append(obs[:-1])
    parts["next_observations"].append(obs[1:])
    parts["actions"].append(np.asarray(ep.actions).reshape(t, -1))
    parts["rewards"].append(np.asarray(ep.rewards).reshape(t))
    parts["terminals"].append(term)
    parts["timeouts"].append(trunc)


def _metadata(ds: Any) -> dict[str, Any]:
    """Scalar/string metadata of the Minari dataset (spaces are left out; sets become sorted lists)."""
    out: dict[str, Any] = {}
    for k, v in ds.storage.metadata.items():
        if isinstance(v, (str, bool, int, float)):
            out[k] = v
        elif isinstance(v, (set, frozenset, list, tuple)) and all(isinstance(x, str) for x in v):
            out[k] = sorted(v) if isinstance(v, (set, frozenset)) else list(v)
    return out
