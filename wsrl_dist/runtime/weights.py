"""Versioned actor weights (learner -> rollout arrow of the data path).

`WeightStore` (a Ray actor in the job) keeps only the latest published version: the learner
`ray.put`s `Agent.export_policy()` once and hands the store the ObjectRef wrapped in a list, so Ray
passes the reference instead of resolving it; rollout workers fetch the arrays from the object store.
`WeightsClient` is the rollout side: it pulls only newer versions and never blocks on the learner.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray


class WeightStore:
    """Latest (version, [ObjectRef of {name: np.ndarray}]) and when it was published."""

    def __init__(self) -> None:
        self.version = -1
        self.ref: list[Any] = []  # [ObjectRef]; the list keeps Ray from resolving it
        self.critic_updates = 0
        self.published_at = 0.0
        self.publishes = 0

    def publish(self, version: int, ref: list, critic_updates: int = 0) -> bool:
        """Keep `ref` if it is newer than what is held; returns whether it was kept."""
        if int(version) <= self.version:
            return False
        self.version, self.ref = int(version), list(ref)
        self.critic_updates = int(critic_updates)
        self.published_at = time.time()
        self.publishes += 1
        return True

    def latest(self, newer_than: int = -1) -> tuple[int, list]:
        """(version, [ref]); the list is empty when nothing newer than `newer_than` is held."""
        if self.version <= newer_than:
            return self.version, []
        return self.version, list(self.ref)

    def get_version(self) -> int:
        return self.version

    def stats(self) -> dict[str, Any]:
        return {"version": self.version, "critic_updates": self.critic_updates,
                "publishes": self.publishes, "published_at": self.published_at}


class WeightsClient:
    """Pull-if-newer over a WeightStore actor handle, without blocking the caller.

    `poll()` advances a two-step exchange (ask the store for its version -> fetch the weights object)
    by at most one step per call and returns (weights, version) once newer weights have arrived.
    `lag` = the newest version the store reported - the version in use (policy lag, in versions).
    """

    def __init__(self, store: Any):
        self.store = store
        self.version = -1  # version in use
        self.latest_seen = -1  # newest version the store has reported
        self.pulls = 0
        self._ask: Any = None  # pending store.latest() call
        self._fetch: tuple[int, Any] | None = None  # (version, pending weights ref)

    @property
    def lag(self) -> int:
        return max(0, self.latest_seen - self.version)

    def poll(self) -> tuple[dict, int] | None:
        if self._fetch is not None:
            version, ref = self._fetch
            if not ray.wait([ref], timeout=0)[0]:
                return None
            self._fetch = None
            return self._accept(ray.get(ref), version)
        if self._ask is None:
            self._ask = self.store.latest.remote(self.version)
            return None
        if not ray.wait([self._ask], timeout=0)[0]:
            return None
        version, refs = ray.get(self._ask)
        self._ask = None
        self.latest_seen = max(self.latest_seen, version)
        if refs and version > self.version:
            self._fetch = (version, refs[0])
            return self.poll()
        return None

    def pull(self, timeout: float | None = None) -> tuple[dict, int] | None:
        """Blocking: fetch the newest weights if newer than the version in use (start, restart)."""
        self._ask, self._fetch = None, None
        version, refs = ray.get(self.store.latest.remote(self.version), timeout=timeout)
        self.latest_seen = max(self.latest_seen, version)
        if not refs:
            return None
        return self._accept(ray.get(refs[0], timeout=timeout), version)

    def _accept(self, weights: dict, version: int) -> tuple[dict, int] | None:
        if version <= self.version:
            return None
        self.version = version
        self.pulls += 1
        # arrays from the object store are read-only views; torch wants writable ones
        return {k: np.array(v) for k, v in weights.items()}, version
