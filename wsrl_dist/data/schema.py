"""Transition columns (docs/CONVENTIONS.md) declared once, their validator and the offline-dataset holder.

Edge of the data path: wire chunks and offline files pass `validate_transitions` before `data/ring.py`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------
# Column declaration
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Column:
    """One transition column. `per_row` is "obs" ([O]), "act" ([A]) or "scalar" ([])."""

    name: str
    dtype: np.dtype
    per_row: str
    flag: bool = False  # values must be 0.0 or 1.0

    def row_shape(self, obs_dim: int, act_dim: int) -> tuple[int, ...]:
        return {"obs": (obs_dim,), "act": (act_dim,), "scalar": ()}[self.per_row]


_F32 = np.dtype(np.float32)

TRANSITION_COLUMNS: tuple[Column, ...] = (
    Column("observations", _F32, "obs"),
    Column("actions", _F32, "act"),
    Column("rewards", _F32, "scalar"),
    Column("next_observations", _F32, "obs"),
    Column("terminals", _F32, "scalar", flag=True),
    Column("timeouts", _F32, "scalar", flag=True),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in TRANSITION_COLUMNS)
COLUMNS: dict[str, Column] = {c.name: c for c in TRANSITION_COLUMNS}

# Per-row shape + dtype of a column beyond the six above (e.g. {"mc_returns": ((), np.float32)}).
ExtraFields = Mapping[str, "tuple[tuple[int, ...], Any]"]


def column_specs(obs_dim: int, act_dim: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (per-row shape, dtype)} for the six transition columns."""
    return {c.name: (c.row_shape(obs_dim, act_dim), c.dtype) for c in TRANSITION_COLUMNS}


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class SchemaError(ValueError):
    """A column failed a check. Message names the source (file or sender), the field and the first bad row."""

    def __init__(self, source: str, field: str | None, problem: str, row: int | None = None):
        self.source, self.field, self.problem, self.row = source, field, problem, row
        where = f"field '{field}'" if field is not None else "dataset"
        msg = f"{source}: {where}: {problem}"
        if row is not None:
            msg += f" (first bad row {row})"
        super().__init__(msg)

    def __reduce__(self):
        # Raised inside a Ray actor, the error is pickled back to the driver: the default reduce
        # calls cls(message), which our 4-argument __init__ refuses, and Ray then reports an
        # UnserializableException instead of the DatasetError (issue 17)
        return _rebuild_error, (type(self), self.args, dict(self.__dict__))


def _rebuild_error(cls: type, args: tuple, state: dict[str, Any]) -> BaseException:
    # DatasetNotFoundError is also an OSError, whose __new__ must make it (OSError's layout)
    err = (OSError if issubclass(cls, OSError) else Exception).__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class DatasetError(SchemaError):
    """Offline dataset (HDF5 file, Minari dataset) is missing, unreadable or malformed."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset file/directory does not exist; the message says where it was expected and how to get it."""

    def __init__(self, source: str, problem: str):
        SchemaError.__init__(self, source, None, problem)


class TransitionError(SchemaError):
    """An in-memory chunk of transitions (from an actor, the wire, a test) is malformed."""


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _first_bad_row(bad: np.ndarray) -> int:
    """Row index of the first True in a [N, ...] boolean array (caller knows one exists)."""
    rows = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
    return int(np.argmax(rows))


def check_column(
    name: str,
    value: Any,
    row_shape: tuple[int, ...],
    dtype: np.dtype,
    *,
    source: str,
    error_cls: type[SchemaError] = TransitionError,
    flag: bool = False,
    n_rows: int | None = None,
) -> np.ndarray:
    """Check one column ([N, *row_shape]) and return it as a C-contiguous array of `dtype`.

    Checks: castable dtype (numeric/bool only), shape, row count (if `n_rows`), finiteness for floats,
    and 0/1 values when `flag`.
    """
    dtype = np.dtype(dtype)
    arr = np.asarray(value)
    if arr.dtype != dtype and not np.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise error_cls(source, name, f"dtype {arr.dtype} cannot be cast to {dtype}")
    if arr.ndim != 1 + len(row_shape) or tuple(arr.shape[1:]) != tuple(row_shape):
        expected = "[" + ", ".join(["N", *map(str, row_shape)]) + "]"
        raise error_cls(source, name, f"shape {tuple(arr.shape)} does not match expected {expected}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise error_cls(
            source, name, f"has {arr.shape[0]} rows but other columns have {n_rows}", min(arr.shape[0], n_rows)
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, reported just below
        out = np.ascontiguousarray(arr, dtype=dtype)
    if out.dtype.kind in "fc" and out.size:
        # After the cast, so that float64 values overflowing float32 are caught as inf.
        finite = np.isfinite(out)
        if not finite.all():
            kind = "NaN" if np.isnan(out).any() else "inf"
            raise error_cls(source, name, f"contains non-finite values ({kind})", _first_bad_row(~finite))
    if flag and out.size:
        bad = (out != 0) & (out != 1)
        if bad.any():
            raise error_cls(source, name, "must be 0 or 1", _first_bad_row(bad))
    return out


def validate_transitions(
    arrays: Mapping[str, Any],
    obs_dim: int,
    act_dim: int,
    *,
    source: str,
    extra_fields: ExtraFields | None = None,
    error_cls: type[SchemaError] = TransitionError,
    ignore_unknown: bool = False,
) -> dict[str, np.ndarray]:
    """Check a dict of transition columns and return it cast to the canonical dtypes.

    Shapes: observations/next_observations [N, O], actions [N, A], rewards/terminals/timeouts [N] (float32),
    plus each declared extra field [N, *shape]. All columns must be present with the same N, castable
    dtypes, finite values; terminals/timeouts must be 0/1. Unknown keys raise unless `ignore_unknown`
    (then they are dropped). Raises `error_cls` (TransitionError by default, DatasetError for files)
    naming `source`, the field and the first bad row.
    """
    extra = dict(extra_fields or {})
    specs: dict[str, tuple[tuple[int, ...], np.dtype, bool]] = {
        c.name: (c.row_shape(obs_dim, act_dim), c.dtype, c.flag) for c in TRANSITION_COLUMNS
    }
    for name, (shape, dt) in extra.items():
        if name in specs:
            raise ValueError(f"extra field '{name}' shadows a transition column")
        specs[name] = (tuple(shape), np.dtype(dt), False)
    for name in specs:
        if name not in arrays:
            raise error_cls(source, name, "missing")
    unknown = [k for k in arrays if k not in specs]
    if unknown and not ignore_unknown:
        raise error_cls(source, unknown[0], f"unknown field (known: {sorted(specs)})")

    n_rows = np.shape(arrays["observations"])[0] if np.ndim(arrays["observations"]) else None
    out: dict[str, np.ndarray] = {}
    for name, (shape, dt, flag) in specs.items():
        out[name] = check_column(
            name, arrays[name], shape, dt, source=source, error_cls=error_cls, flag=flag, n_rows=n_rows
        )
    return out


# --------------------------------------------------------------------------------------------------
# Episode boundaries
# --------------------------------------------------------------------------------------------------


def episode_ends(terminals: np.ndarray, timeouts: np.ndarray, *, last_is_end: bool = True) -> np.ndarray:
    """[N] bool: True where an episode ends (terminal or timeout).

    With `last_is_end` (default) the final row also counts as an end, since the data stops there
    (a truncation by the end of the dataset).
    """
    ends = (np.asarray(terminals) != 0) | (np.asarray(timeouts) != 0)
    if ends.shape != np.shape(terminals) or ends.ndim != 1:
        raise ValueError(f"terminals {np.shape(terminals)} and timeouts {np.shape(timeouts)} must both be [N]")
    if last_is_end and ends.size:
        ends[-1] = True
    return ends


def episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) int64 arrays [E]: episode e is rows starts[e]:stops[e]; the last row ends an episode."""
    ends = episode_ends(terminals, timeouts)
    stops = np.flatnonzero(ends) + 1
    starts = np.concatenate(([0], stops[:-1])).astype(np.int64)
    return starts, stops.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Offline dataset holder (returned by data/d4rl.py and data/minari.py)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class OfflineDataset:
    """Columns of an offline dataset ([N, O], [N, A], [N] float32; rewards raw) + metadata + source.

    `infos` holds extra row-aligned arrays (D4RL `infos/*`), loaded only on request.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""
    infos: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def columns(self) -> dict[str, np.ndarray]:
        """The six transition columns as a dict (no copies)."""
        return {name: getattr(self, name) for name in COLUMN_NAMES}

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        source: str = "",
        infos: Mapping[str, np.ndarray] | None = None,
    ) -> OfflineDataset:
        return cls(
            **{name: columns[name] for name in COLUMN_NAMES},
            metadata=dict(metadata or {}),
            source=source,
            infos=dict(infos or {}),
        )
