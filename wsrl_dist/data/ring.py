"""Fixed-capacity FIFO ring buffer of transitions (numpy storage).

Data path: wire chunk -> `runtime/datapath/replay.py` (a Ray replay-shard actor owns one) -> `RingBuffer.insert`;
the learner's batches come from `RingBuffer.sample`. No ray import here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from wsrl_dist.data.schema import ExtraFields, column_specs, validate_transitions


class RingBuffer:
    """Preallocated storage for `capacity` rows; the oldest rows are overwritten first.

    Columns: the six transition columns of docs/CONVENTIONS.md ([C, O], [C, A], [C] float32) plus
    `extra_fields` ({name: (per-row shape, dtype)}, e.g. {"mc_returns": ((), np.float32)}), which
    every inserted chunk must then carry.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, extra_fields: ExtraFields | None = None):
        if int(capacity) <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.extra_fields: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            name: (tuple(int(d) for d in shape), np.dtype(dt)) for name, (shape, dt) in (extra_fields or {}).items()
        }
        specs = {**column_specs(self.obs_dim, self.act_dim), **self.extra_fields}
        self._storage: dict[str, np.ndarray] = {
            name: np.zeros((self.capacity, *shape), dtype=dt) for name, (shape, dt) in specs.items()
        }
        self._ptr = 0  # next row to write
        self._size = 0  # filled rows, always the prefix [0, size)
        self._total = 0  # rows ever inserted

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return self._size

    @property
    def total_inserted(self) -> int:
        """Rows inserted since construction (including rows since overwritten)."""
        return self._total

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self._storage)

    # ------------------------------------------------------------------ insert
    def insert(self, chunk: dict[str, np.ndarray], *, source: str = "chunk") -> int:
        """Validate `chunk` ({field: [n, ...]}) and append its rows; returns n.

        A chunk that fails validation raises `TransitionError` (naming `source`, the field and the first
        bad row) and changes nothing. If n > capacity only the last `capacity` rows are kept.
        """
        cols = validate_transitions(
            chunk, self.obs_dim, self.act_dim, source=source, extra_fields=self.extra_fields
        )
        n = int(cols["observations"].shape[0])
        if n == 0:
            return 0
        cap = self.capacity
        skip = max(0, n - cap)  # rows that would be overwritten within this same chunk
        start = (self._ptr + skip) % cap
        m = n - skip  # rows actually written, <= cap
        first = min(m, cap - start)  # up to the physical end
        for name, arr in cols.items():
            dst = self._storage[name]
            dst[start:start + first] = arr[skip:skip + first]
            if first < m:
                dst[: m - first] = arr[skip + first:]
        self._ptr = (self._ptr + n) % cap
        self._size = min(cap, self._size + n)
        self._total += n
        return n

    # ------------------------------------------------------------------ sample
    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """[n] int64 row indices drawn uniformly with replacement from the filled rows."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty RingBuffer")
        return rng.integers(0, self._size, size=int(n), dtype=np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Uniform batch with replacement: every stored field [n, ...] plus masks = 1 - terminals [n]."""
        return self.gather(self.sample_indices(n, rng))

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `idx` of every field (copies) plus `masks` [len(idx)] float32."""
        batch = {name: arr[idx] for name, arr in self._storage.items()}
        batch["masks"] = (1.0 - batch["terminals"]).astype(np.float32, copy=False)
        return batch

    def export(self) -> dict[str, np.ndarray]:
        """All stored rows, oldest first (copies): {field: [len(self), ...]}."""
        if self._size < self.capacity:
            order = np.arange(self._size)
        else:
            order = (self._ptr + np.arange(self.capacity)) % self.capacity
        return {name: arr[order] for name, arr in self._storage.items()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain numpy arrays + ints (picklable): the filled rows and the counters; restores exactly."""
        return {
            "capacity": self.capacity,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "extra_fields": {k: (list(s), d.str) for k, (s, d) in self.extra_fields.items()},
            "ptr": self._ptr,
            "size": self._size,
            "total_inserted": self._total,
            "arrays": {name: arr[: self._size].copy() for name, arr in self._storage.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; layout (capacity, dims, fields) must match this buffer."""
        layout = (state["capacity"], state["obs_dim"], state["act_dim"])
        if layout != (self.capacity, self.obs_dim, self.act_dim):
            raise ValueError(
                f"state_dict layout (capacity, obs_dim, act_dim)={layout} does not match buffer "
                f"{(self.capacity, self.obs_dim, self.act_dim)}"
            )
        size, ptr, total = int(state["size"]), int(state["ptr"]), int(state["total_inserted"])
        if not (0 <= size <= self.capacity and 0 <= ptr < self.capacity and total >= size):
            raise ValueError(f"state_dict counters inconsistent: size={size} ptr={ptr} total={total}")
        arrays = state["arrays"]
        if set(arrays) != set(self._storage):
            raise ValueError(f"state_dict fields {sorted(arrays)} do not match buffer fields {sorted(self._storage)}")
        for name, dst in self._storage.items():
            src = np.asarray(arrays[name])
            if src.shape != (size, *dst.shape[1:]) or src.dtype != dst.dtype:
                raise ValueError(
                    f"state_dict field '{name}': {src.dtype}{list(src.shape)} expected {dst.dtype}{[size, *dst.shape[1:]]}"
                )
        for name, dst in self._storage.items():
            dst[:size] = arrays[name]
            dst[size:] = 0
        self._size, self._ptr, self._total = size, ptr, total


__all__ = ["RingBuffer"]
