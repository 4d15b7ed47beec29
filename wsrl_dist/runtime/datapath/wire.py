"""Wire format of the rollout -> replay arrow: one msgpack frame per TransitionChunk, no pickle.

A frame is a msgpack map {"v", "worker_id", "seq", "cols", "returns"}; each column is
{"dtype": "<f4", "shape": [N, ...], "data": raw little-endian bytes}. `decode_chunk` trusts nothing:
size cap (checked before and by msgpack itself), dtype whitelist, shapes against (obs_dim, act_dim),
0/1 flags and finite values. Every failure is a `WireError` whose `reason` is one of REASONS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np

WIRE_VERSION = 1
REASONS = ("oversized", "malformed", "schema", "nonfinite")
# Column name -> (dtype, per-row kind); docs/CONVENTIONS.md plus the acting policy's version per row.
_F32, _I64 = np.dtype("<f4"), np.dtype("<i8")
COLUMNS: dict[str, tuple[np.dtype, str]] = {
    "observations": (_F32, "obs"),
    "actions": (_F32, "act"),
    "rewards": (_F32, "scalar"),
    "next_observations": (_F32, "obs"),
    "terminals": (_F32, "flag"),
    "timeouts": (_F32, "flag"),
    "policy_versions": (_I64, "scalar"),
}
# Columns a frame may carry besides COLUMNS: Monte-Carlo returns-to-go of whole episodes, computed by
# the worker from scaled rewards when the learner keeps the Cal-QL loss online (rollout.py)
OPTIONAL_COLUMNS: dict[str, tuple[np.dtype, str]] = {"mc_returns": (_F32, "scalar")}
_ALL_COLUMNS = {**COLUMNS, **OPTIONAL_COLUMNS}
_TOP_KEYS = {"v", "worker_id", "seq", "cols", "returns"}
# Value ranges a real rollout stays in (issue 17: 1e30 actions, 3e38 observations, negative policy
# versions and worker_id 2**64-1 were all stored). Actions are in the agent's space, Box(-1, 1) for
# every task (envs/wrappers.AgentActions maps them to the env's bounds), written by a tanh policy or
# uniform sampling; the tolerance covers float32 rounding only.
ACTION_BOUND = 1.0 + 1e-6
# |observation|, |reward|, |MC return| cap: far above any MuJoCo / robotics task (antmaze x, y < 50;
# velocities < 1e3), far below where float32 squares overflow in LayerNorm (~1.8e19)
VALUE_LIMIT = 1e6
_MAX_DIM = 1 << 31  # any dimension of a column (rows included); beyond it np.prod overflows int64
_MAX_WORKER_ID = 1 << 31
_COL_KEYS = {"dtype", "shape", "data"}
_MAX_CONTAINER = 1 << 16  # longest msgpack array/map a valid frame holds (episode returns, shapes)


class WireError(ValueError):
    """A frame was refused. `reason` in REASONS is what replay shards count rejections by."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown WireError reason {reason!r}")
        self.reason, self.message = reason, message
        super().__init__(f"{reason}: {message}")

    def __reduce__(self):  # picklable (Ray sends it back from a shard): cls(reason, message)
        return WireError, (self.reason, self.message)


@dataclass
class TransitionChunk:
    """Decoded frame: `columns` holds the six transition columns ([N, O], [N, A], [N] float32),
    `policy_versions` [N] int64 and any OPTIONAL_COLUMNS the frame carried; `episode_returns` are raw returns of episodes that ended here."""

    columns: dict[str, np.ndarray]
    worker_id: int
    seq: int
    episode_returns: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.columns["rewards"].shape[0])


def _pack_array(arr: np.ndarray, dtype: np.dtype) -> dict:
    a = np.ascontiguousarray(arr, dtype=dtype)
    return {"dtype": dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def encode_chunk(
    columns: Mapping[str, np.ndarray],
    *,
    worker_id: int,
    seq: int,
    policy_versions: np.ndarray | Sequence[int],
    episode_returns: Sequence[float] = (),
) -> bytes:
    """Six transition columns [N, ...] (+ any OPTIONAL_COLUMNS present) + policy_versions [N] -> one
    msgpack frame (bytes).

    The encoder casts to the wire dtypes but does not validate: the receiving shard does.
    """
    cols = {name: _pack_array(columns[name], dt) for name, (dt, _) in COLUMNS.items()
            if name != "policy_versions"}
    cols.update({name: _pack_array(columns[name], dt) for name, (dt, _) in OPTIONAL_COLUMNS.items()
                 if name in columns})
    cols["policy_versions"] = _pack_array(np.asarray(policy_versions), _I64)
    frame = {"v": WIRE_VERSION, "worker_id": int(worker_id), "seq": int(seq), "cols": cols,
             "returns": [float(r) for r in episode_returns]}
    return msgpack.packb(frame, use_bin_type=True)


def _reject_ext(code: int, data: bytes) -> None:
    raise WireError("malformed", f"msgpack ext type {code} is not allowed")


def _unpack(frame: bytes, max_bytes: int) -> object:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError("malformed", f"frame must be bytes, got {type(frame).__name__}")
    if len(frame) > max_bytes:
        raise WireError("oversized", f"frame of {len(frame)} bytes exceeds the {max_bytes}-byte cap")
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, ext_hook=_reject_ext, max_buffer_size=max(1, max_bytes),
        max_array_len=_MAX_CONTAINER, max_map_len=64,
    )
    try:
        unpacker.feed(frame)
        obj = unpacker.unpack()
        extra = unpacker.tell() != len(frame)
    except WireError:
        raise
    except msgpack.exceptions.BufferFull as e:
        raise WireError("oversized", f"msgpack buffer limit hit: {e}") from e
    except msgpack.exceptions.OutOfData as e:
        raise WireError("malformed", "truncated msgpack frame") from e
    except Exception as e:  # msgpack raises ValueError/TypeError/UnpackException subclasses
        raise WireError("malformed", f"not a msgpack frame: {type(e).__name__}: {e}") from e
    if extra:
        raise WireError("malformed", "trailing bytes after the msgpack object")
    return obj


def _column(name: str, spec: object, n_rows: int | None, obs_dim: int, act_dim: int) -> np.ndarray:
    dtype, kind = _ALL_COLUMNS[name]
    if not isinstance(spec, dict) or set(spec) != _COL_KEYS:
        raise WireError("schema", f"column '{name}' must be a map with keys {sorted(_COL_KEYS)}")
    if spec["dtype"] != dtype.str:
        raise WireError("schema", f"column '{name}' has dtype {spec['dtype']!r}, expected {dtype.str!r}")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < _MAX_DIM for d in shape):
        raise WireError("schema", f"column '{name}' has an invalid shape {shape!r}")
    row = {"obs": [obs_dim], "act": [act_dim]}.get(kind, [])
    if len(shape) != 1 + len(row) or shape[1:] != row or (n_rows is not None and shape[0] != n_rows):
        want = [n_rows if n_rows is not None else "N", *row]
        raise WireError("schema", f"column '{name}' has shape {shape}, expected {want}")
    data = spec["data"]
    # math.prod on Python ints: np.prod([2**62, 4]) wraps int64 and got past this check (issue 17)
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
        raise WireError("schema", f"column '{name}': payload size does not match shape {shape}")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise WireError("nonfinite", f"column '{name}' contains NaN or inf")
    _check_range(name, kind, arr)
    if kind == "flag" and not np.isin(arr, (0.0, 1.0)).all():
        raise WireError("schema", f"column '{name}' must hold only 0.0 / 1.0")
    return arr


def _check_range(name: str, kind: str, arr: np.ndarray) -> None:
    """Finite but impossible values: refused naming the column and the first bad row."""
    if kind == "flag":
        return
    if name == "policy_versions":
        bad, want = arr < 0, ">= 0"
    elif kind == "act":
        bad, want = np.abs(arr) > ACTION_BOUND, "in the agent's action space [-1, 1]"
    else:
        bad, want = np.abs(arr) > VALUE_LIMIT, f"within +-{VALUE_LIMIT:g}"
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise WireError("schema", f"column '{name}' must be {want}, got {arr[row].tolist()} (first bad row {row})")


def decode_chunk(frame: bytes, *, obs_dim: int, act_dim: int, max_bytes: int) -> TransitionChunk:
    """Parse and check one frame; arrays are read-only views on `frame` (copy before mutating)."""
    obj = _unpack(frame, max_bytes)
    if not isinstance(obj, dict) or set(obj) != _TOP_KEYS:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise WireError("schema", f"frame must be a map with keys {sorted(_TOP_KEYS)}, got {keys}")
    if obj["v"] != WIRE_VERSION:
        raise WireError("schema", f"wire version {obj['v']!r}, this reader speaks {WIRE_VERSION}")
    for key, top in (("worker_id", _MAX_WORKER_ID), ("seq", 1 << 63)):
        if type(obj[key]) is not int or not 0 <= obj[key] < top:
            raise WireError("schema", f"'{key}' must be an integer in [0, {top}), got {obj[key]!r}")
    cols = obj["cols"]
    if not isinstance(cols, dict) or not set(COLUMNS) <= set(cols) <= set(_ALL_COLUMNS):
        raise WireError("schema", f"'cols' must hold exactly {sorted(COLUMNS)} (and optionally "
                                  f"{sorted(OPTIONAL_COLUMNS)})")
    first = _column("observations", cols["observations"], None, obs_dim, act_dim)
    n_rows = int(first.shape[0])
    if n_rows == 0:
        raise WireError("schema", "empty chunk")
    out = {"observations": first}
    for name in _ALL_COLUMNS:
        if name != "observations" and name in cols:
            out[name] = _column(name, cols[name], n_rows, obs_dim, act_dim)
    returns = obj["returns"]
    if not isinstance(returns, list) or not all(type(r) in (int, float) for r in returns):
        raise WireError("schema", "'returns' must be a list of numbers")
    if len(returns) > n_rows:
        raise WireError("schema", f"{len(returns)} episode returns for {n_rows} rows")
    if not np.isfinite(np.asarray(returns, dtype=np.float64)).all():
        raise WireError("nonfinite", "episode returns contain NaN or inf")
    return TransitionChunk(out, obj["worker_id"], obj["seq"], [float(r) for r in returns])
