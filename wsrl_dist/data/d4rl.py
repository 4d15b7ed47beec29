"""D4RL-layout HDF5 datasets: read (with checks), write (atomically), locate.

Data path: offline file -> `load_d4rl_hdf5` / `load_d4rl` -> `OfflineDataset` (raw rewards) -> pre-training arrays.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsrl_dist.data.schema import (
    COLUMNS,
    DatasetError,
    DatasetNotFoundError,
    OfflineDataset,
    check_column,
    validate_transitions,
)

REQUIRED_KEYS: tuple[str, ...] = ("observations", "actions", "rewards", "terminals", "timeouts")
D4RL_URL_ROOT = "http://rail.eecs.berkeley.edu/datasets/offline_rl"

# File names D4RL gives the datasets this project uses (its download keeps the URL's basename).
_ANTMAZE_V2 = {
    "umaze": "u-maze_noisy_multistart_False_multigoal_False",
    "umaze-diverse": "u-maze_noisy_multistart_True_multigoal_True",
    "medium-play": "big-maze_noisy_multistart_True_multigoal_False",
    "medium-diverse": "big-maze_noisy_multistart_True_multigoal_True",
    "large-play": "hardest-maze_noisy_multistart_True_multigoal_False",
    "large-diverse": "hardest-maze_noisy_multistart_True_multigoal_True",
}
_KITCHEN_V0 = {
    "complete": "mini_kitchen_microwave_kettle_light_slider-v0.hdf5",
    "partial": "kitchen_microwave_kettle_light_slider-v0.hdf5",
    "mixed": "kitchen_microwave_kettle_bottomburner_light-v0.hdf5",
}
_LOCOMOTION = ("halfcheetah", "hopper", "walker2d", "ant")


def d4rl_dataset_url(task_name: str) -> str | None:
    """D4RL's download URL for `task_name` (antmaze-*-v2, kitchen-*-v0, <locomotion>-*-v2), else None."""
    if task_name.startswith("antmaze-") and task_name.endswith("-v2"):
        maze = _ANTMAZE_V2.get(task_name[len("antmaze-"):-len("-v2")])
        if maze:
            return f"{D4RL_URL_ROOT}/ant_maze_v2/Ant_maze_{maze}_sparse_fixed.hdf5"
    if task_name.startswith("kitchen-") and task_name.endswith("-v0"):
        fname = _KITCHEN_V0.get(task_name[len("kitchen-"):-len("-v0")])
        if fname:
            return f"{D4RL_URL_ROOT}/kitchen/{fname}"
    agent, _, rest = task_name.partition("-")
    if agent in _LOCOMOTION and rest.endswith("-v2") and rest[:-3]:
        return f"{D4RL_URL_ROOT}/gym_mujoco_v2/{agent}_{rest[:-3].replace('-', '_')}-v2.hdf5"
    return None


def _dataset_root(root: str | os.PathLike | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("D4RL_DATASET_DIR") or "~/.d4rl/datasets").expanduser()


def _candidate_paths(task_name: str, root: str | os.PathLike | None) -> list[Path]:
    base = _dataset_root(root)
    url = d4rl_dataset_url(task_name)
    cands = [base / url.rsplit("/", 1)[-1]] if url else []
    cands.append(base / f"{task_name}.hdf5")  # what `wsrl-dist build-dataset` writes
    return cands


def d4rl_dataset_path(task_name: str, root: str | os.PathLike | None = None) -> Path:
    """Where the HDF5 file for `task_name` lives.

    Root: `root` argument, else env `D4RL_DATASET_DIR`, else `~/.d4rl/datasets`. File name: D4RL's own
    (the URL basename, where D4RL would download it) or `<task_name>.hdf5`; the first that exists wins,
    and if neither exists, D4RL's name (or `<task_name>.hdf5` for tasks D4RL does not host).
    """
    cands = _candidate_paths(task_name, root)
    for p in cands:
        if p.is_file():
            return p
    return cands[0]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _py(value: Any) -> Any:
    """HDF5 attribute/scalar -> plain Python value (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [_py(v) for v in value.tolist()]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_metadata(f: Any) -> dict[str, Any]:
    import h5py

    meta = {k: _py(v) for k, v in f.attrs.items()}
    grp = f.get("metadata")
    if isinstance(grp, h5py.Group):
        meta.update({k: _py(v) for k, v in grp.attrs.items()})

        def visit(name: str, obj: Any) -> None:
            # Scalars only: real D4RL files also keep policy weights under metadata/, which are not metadata
            # anyone here needs and can be large.
            if isinstance(obj, h5py.Dataset) and obj.shape == ():
                meta[name] = _py(obj[()])

        grp.visititems(visit)
    return meta


def _read(f: Any, key: str, path: Path) -> np.ndarray:
    try:
        return f[key][()]
    except OSError as e:  # truncated/corrupt data blocks surface here, not at open time
        raise DatasetError(str(path), key, f"unreadable (truncated or corrupt file?): {e}") from e


def derive_next_observations(columns: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """D4RL `qlearning_dataset` rule for files without `next_observations`.

    next_observations[i] = observations[i + 1]; rows where the next observation is unknown are dropped:
    every row flagged `timeouts` (the episode was cut there, its s' was never stored) and the last row.
    Terminal rows are kept (their s' is not used: mask = 0).
    Deviation (documented): qlearning_dataset drops the timeouts column; we keep one, setting timeouts = 1
    on a kept non-terminal row whose successor was dropped, so trajectory ends survive for MC returns.
    Returns (columns with next_observations, kept row indices [M]).
    """
    obs = np.asarray(columns["observations"])
    n = obs.shape[0]
    timeouts = np.asarray(columns["timeouts"]) != 0
    terminals = np.asarray(columns["terminals"]) != 0
    dropped = timeouts.copy()
    if n:
        dropped[-1] = True
    keep = np.flatnonzero(~dropped)  # never includes n - 1, so keep + 1 is in range
    out = {k: np.asarray(v)[keep] for k, v in columns.items() if k not in ("next_observations", "timeouts")}
    out["next_observations"] = obs[keep + 1]
    out["timeouts"] = (dropped[keep + 1] & ~terminals[keep]).astype(np.float32)
    return out, keep


def load_d4rl_hdf5(
    path: str | os.PathLike,
    *,
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
    load_infos: bool = False,
) -> OfflineDataset:
    """Read a D4RL-layout HDF5 file into an `OfflineDataset` (float32 columns, raw rewards).

    Layout (as D4RL's `get_dataset` reads it): root datasets observations [N, O], actions [N, A],
    rewards [N], terminals [N], timeouts [N], optional next_observations [N, O], optional `infos/*`
    row-aligned arrays; metadata as attributes of the root or of a `metadata` group, or as scalar
    datasets under `metadata/` (non-scalar ones, e.g. D4RL's stored policy weights, are skipped).

    Without `next_observations` in the file, they are derived as D4RL's `qlearning_dataset` does
    (`derive_next_observations`: rows at timeouts and the last row are dropped). `infos/*` arrays are
    read only with `load_infos` (they can be hundreds of MB) and get the same row selection.
    Raises `DatasetNotFoundError` for a missing file and `DatasetError` (naming file and field) for
    unreadable/truncated files, missing keys, bad shapes/dtypes, dims differing from `expected_*`, NaN/inf.
    """
    import h5py

    path = Path(path).expanduser()
    src = str(path)
    if not path.is_file():
        raise DatasetNotFoundError(src, "file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(src, None, f"cannot open as HDF5 (truncated or corrupt file?): {e}") from e
    with f:
        for key in REQUIRED_KEYS:
            if key not in f:
                raise DatasetError(src, key, f"missing key (file has: {sorted(f.keys())})")
        keys = list(REQUIRED_KEYS) + (["next_observations"] if "next_observations" in f else [])
        raw = {k: _read(f, k, path) for k in keys}
        infos: dict[str, np.ndarray] = {}
        if load_infos and isinstance(f.get("infos"), h5py.Group):
            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    infos[name] = _read(f, f"infos/{name}", path)

            f["infos"].visititems(visit)
        try:
            metadata = _read_metadata(f)
        except OSError as e:
            raise DatasetError(src, "metadata", f"unreadable: {e}") from e

    obs = raw["observations"]
    if obs.ndim != 2:
        raise DatasetError(src, "observations", f"shape {obs.shape} does not match expected [N, O]")
    act = raw["actions"]
    if act.ndim != 2:
        raise DatasetError(src, "actions", f"shape {act.shape} does not match expected [N, A]")
    obs_dim, act_dim = obs.shape[1], act.shape[1]
    if expected_obs_dim is not None and obs_dim != expected_obs_dim:
        raise DatasetError(src, "observations", f"obs dim {obs_dim} differs from the env's {expected_obs_dim}")
    if expected_act_dim is not None and act_dim != expected_act_dim:
        raise DatasetError(src, "actions", f"action dim {act_dim} differs from the env's {expected_act_dim}")
    n = obs.shape[0]
    for name, arr in infos.items():
        if arr.ndim == 0 or arr.shape[0] != n:
            raise DatasetError(src, f"infos/{name}", f"shape {arr.shape} is not row-aligned with {n} rows")

    # Check every column at its file row numbers before any row selection.
    cols = {
        k: check_column(
            k, v, COLUMNS[k].row_shape(obs_dim, act_dim), COLUMNS[k].dtype,
            source=src, error_cls=DatasetError, flag=COLUMNS[k].flag, n_rows=n,
        )
        for k, v in raw.items()
    }
    if "next_observations" not in cols:
        cols, keep = derive_next_observations(cols)
        infos = {k: v[keep] for k, v in infos.items()}
    if len(cols["observations"]) == 0:  # pre-training would die in torch.randint naming nothing
        raise DatasetError(src, None, f"no transitions ({n} rows in the file): an empty dataset cannot "
                                      "be trained on")
    return OfflineDataset.from_columns(cols, metadata=metadata, source=src, infos=infos)


def load_d4rl(
    task_name: str,
    root: str | os.PathLike | None = None,
    *,
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
) -> OfflineDataset:
    """Load a D4RL task's dataset.

    If the `d4rl` package imports (it needs old gym + mujoco-py) and no `root` is given, use
    `d4rl.qlearning_dataset(gym.make(task))` (which downloads a missing file itself, so needs network then)
    and check dims against that env; otherwise read the HDF5 file at `d4rl_dataset_path(task_name, root)`
    with `load_d4rl_hdf5`. A missing file raises `DatasetNotFoundError` saying where it is expected and
    how to get it.
    """
    try:
        import d4rl  # noqa: F401  (registers the envs with gym)
        import gym  # noqa: F401  (d4rl needs old gym)
    except Exception:  # not installed, or installed without MuJoCo 2.1 binaries (import fails then)
        d4rl = None
    if d4rl is not None and root is None:
        return _load_via_d4rl_package(task_name, expected_obs_dim, expected_act_dim)

    path = d4rl_dataset_path(task_name, root)
    if not path.is_file():
        raise DatasetNotFoundError(str(path), _how_to_get(task_name, root))
    return load_d4rl_hdf5(path, expected_obs_dim=expected_obs_dim, expected_act_dim=expected_act_dim)


def _how_to_get(task_name: str, root: str | os.PathLike | None) -> str:
    cands = ", ".join(str(p) for p in _candidate_paths(task_name, root))
    url = d4rl_dataset_url(task_name)
    where = f"no dataset file for '{task_name}' (looked for: {cands}; root from argument, env D4RL_DATASET_DIR or ~/.d4rl/datasets)."
    get = (
        f" Download it on a machine with network: `wget {url}` into {_dataset_root(root)}"
        f" (D4RL URL pattern {D4RL_URL_ROOT}/<suite>/<file>.hdf5), or build one with `wsrl-dist build-dataset`."
        if url
        else " D4RL hosts no file under this name: build one with `wsrl-dist build-dataset` (writes <task>.hdf5)."
    )
    return where + get + " This machine may have no network access."


def _load_via_d4rl_package(task_name: str, expected_obs_dim: int | None, expected_act_dim: int | None) -> OfflineDataset:
    import d4rl
    import gym

    src = f"d4rl:{task_name}"
    env = gym.make(task_name)
    data = d4rl.qlearning_dataset(env)
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    for name, want in (("observations", expected_obs_dim), ("actions", expected_act_dim)):
        have = obs_dim if name == "observations" else act_dim
        if want is not None and want != have:
            raise DatasetError(src, name, f"env dim {have} differs from expected {want}")
    cols = {k: data[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals")}
    if "timeouts" in data:
        cols["timeouts"] = data["timeouts"]
    else:
        # qlearning_dataset drops timeouts; recover trajectory ends where s' is not the next row's s
        # (the same split IQL/Cal-QL code uses), so MC returns see the same trajectories.
        obs, nxt = np.asarray(cols["observations"]), np.asarray(cols["next_observations"])
        gap = np.zeros(obs.shape[0], dtype=bool)
        gap[:-1] = np.linalg.norm(obs[1:] - nxt[:-1], axis=-1) > 1e-6
        if gap.size:
            gap[-1] = True
        cols["timeouts"] = (gap & (np.asarray(cols["terminals"]) == 0)).astype(np.float32)
    cols = validate_transitions(cols, obs_dim, act_dim, source=src, error_cls=DatasetError)
    return OfflineDataset.from_columns(cols, metadata={"task_name": task_name}, source=src)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _attr_value(key: str, value: Any, src: str) -> Any:
    if value is None:
        raise DatasetError(src, f"metadata/{key}", "None cannot be stored as an HDF5 attribute")
    if isinstance(value, (str, bool, int, float, np.generic)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return arr
        if arr.dtype.kind == "U":
            import h5py

            return np.asarray(arr, dtype=h5py.string_dtype())
    raise DatasetError(src, f"metadata/{key}", f"unsupported metadata type {type(value).__name__}")


def write_d4rl_hdf5(
    path: str | os.PathLike,
    dataset: OfflineDataset | Mapping[str, np.ndarray],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `dataset` as a D4RL-layout HDF5 file at `path`, atomically; returns the path.

    Columns are validated first; observations/actions/rewards/next_observations are stored as float32,
    terminals/timeouts as bool (D4RL's dtypes), `dataset.infos` under `infos/`, `metadata`
    (default: `dataset.metadata`) as attributes of the `metadata` group. The file is written to a
    temporary name in the same directory and renamed over `path` only after it is complete, so a failed
    write never clobbers an existing file.
    """
    import h5py

    path = Path(path).expanduser()
    src = str(path)
    if isinstance(dataset, OfflineDataset):
        columns, infos = dataset.columns(), dict(dataset.infos)
        meta = dict(dataset.metadata if metadata is None else metadata)
    else:
        columns = {k: v for k, v in dataset.items() if not k.startswith("infos/")}
        infos = {k[len("infos/"):]: v for k, v in dataset.items() if k.startswith("infos/")}
        meta = dict(metadata or {})
    obs = np.asarray(columns.get("observations", np.zeros((0, 0))))
    act = np.asarray(columns.get("actions", np.zeros((0, 0))))
    obs_dim = obs.shape[1] if obs.ndim == 2 else -1
    act_dim = act.shape[1] if act.ndim == 2 else -1
    cols = validate_transitions(columns, obs_dim, act_dim, source=src, error_cls=DatasetError)
    n = cols["observations"].shape[0]
    for k, v in infos.items():
        if np.ndim(v) == 0 or np.shape(v)[0] != n:
            raise DatasetError(src, f"infos/{k}", f"shape {np.shape(v)} is not row-aligned with {n} rows")

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in cols.items():
                f.create_dataset(k, data=v.astype(bool) if COLUMNS[k].flag else v)
            for k, v in infos.items():
                f.create_dataset(f"infos/{k}", data=np.asarray(v))
            grp = f.create_group("metadata")
            for k, v in meta.items():
                grp.attrs[k] = _attr_value(k, v, src)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; keep an existing file's mode, else the usual 0644.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "OfflineDataset",
    "d4rl_dataset_path",
    "d4rl_dataset_url",
    "derive_next_observations",
    "load_d4rl",
    "load_d4rl_hdf5",
    "write_d4rl_hdf5",
]
