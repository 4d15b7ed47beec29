"""Histogram: the Prometheus-style bucket accumulator that actors fill and ship as a plain dict, and
the bucket bounds the job uses (policy lag, seconds).

Rollout workers, replay shards and the learner observe values into it and send `to_dict()` in their
stats; the driver merges those and ops/metrics.py exports them. Apart from ops/metrics.py because the
actors need only this, not the metric definitions or prometheus_client. ops/metrics.py re-exports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Policy lag is a small integer (weight versions); 0 means on-policy for the current version.
POLICY_LAG_BUCKETS: tuple[float, ...] = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# 1 ms .. 60 s: covers a learner step on GPU (ms) up to a slow weight broadcast (s).
SECONDS_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class Histogram:
    """Prometheus-style histogram accumulator that actors fill and ship as a plain dict.

    Buckets are upper bounds (`le`, inclusive); values above the last bound land in the +Inf bucket.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        b = np.asarray(buckets, dtype=np.float64)
        if b.ndim != 1 or b.size == 0 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
            raise ValueError(f"buckets must be finite and strictly increasing, got {list(buckets)}")
        self.buckets = b
        self.counts = np.zeros(b.size + 1, dtype=np.int64)
        self.sum = 0.0
        self.count = 0

    def observe(self, values: float | Sequence[float] | np.ndarray) -> None:
        """Add one value or an array of values (any shape)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        if np.any(np.isnan(v)):
            raise ValueError("Histogram.observe got NaN")
        # side="left": index of the first bound >= v, i.e. Prometheus' inclusive `le`.
        idx = np.searchsorted(self.buckets, v, side="left")
        self.counts += np.bincount(idx, minlength=self.counts.size)
        self.sum += float(v.sum())
        self.count += int(v.size)

    def merge(self, other: Mapping[str, Any] | Histogram) -> Histogram:
        """Add another histogram (dict from `to_dict` or a Histogram) with identical buckets; returns self."""
        d = other.to_dict() if isinstance(other, Histogram) else other
        ob = np.asarray(d["buckets"], dtype=np.float64)
        if ob.shape != self.buckets.shape or not np.allclose(ob, self.buckets, rtol=0, atol=1e-12):
            raise ValueError(f"cannot merge histograms with buckets {list(ob)} into {list(self.buckets)}")
        oc = np.asarray(d["counts"], dtype=np.int64)
        if oc.shape != self.counts.shape:
            raise ValueError(f"counts must have len(buckets)+1={self.counts.size} entries, got {oc.size}")
        self.counts += oc
        self.sum += float(d["sum"])
        self.count += int(d["count"])
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        return cls(d["buckets"]).merge(d)

    def to_dict(self) -> dict[str, Any]:
        return {
            "buckets": [float(x) for x in self.buckets],
            "counts": [int(x) for x in self.counts],
            "sum": float(self.sum),
            "count": int(self.count),
        }
