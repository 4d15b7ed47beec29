"""Versioned actor weights (learner -> rollout arrow of the data path).

`WeightStore` (a Ray actor in the job) keeps only the latest published version: the learner
`ray.put`s `Agent.export_policy()` once and hands the store the ObjectRef wrapped in a list, so Ray
passes the reference instead of resolving it; rollout workers fetch the arrays from the object store.
`WeightsClient` is the rollout side: it pulls only newer versions and never blocks on the learner.
`WeightPublisher` is the learner side: it does the put and the store call on its own thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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


class WeightPublisher:
    """Learner side: weight versions -> the WeightStore, on a thread of their own.

    Publishing a version is one `ray.put` of the actor's arrays and one call to the store: 1.8 ms per
    version in the Hopper job on an H200, 67 of the run's 419 s, all on the training thread
    (BENCHMARKS.md, end to end). Most of a put runs without the GIL (zero-copy pickle 5, then a C++
    copy into shared memory), so a thread takes nearly all of it off the loop: on 2 CPU cores, a loop
    of 1 ms of GIL-holding work that published every 8 iterations ran 802-812 iterations/s with the
    put inline, 930-960 with this thread, 992 without publishing.

    At most one version waits: a newer `submit` replaces a waiting one (`superseded`), since the store
    only serves the newest anyway. Versions reach the store in order. `flush` returns once everything
    submitted is in the store's hands; an error on the thread is raised by the next submit or flush.
    `put_hist` (optional, a metrics Histogram) receives the seconds of each put + store call.
    """

    def __init__(self, store: Any, put_hist: Any = None, put: Callable[[Any], Any] = ray.put):
        self.store, self.put_hist, self._put = store, put_hist, put
        self.published = 0
        self.superseded = 0
        self._cv = threading.Condition()
        self._pending: tuple[dict, int, int] | None = None
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self._acks: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="weight-publisher", daemon=True)
        self._thread.start()

    def submit(self, weights: dict, version: int, critic_updates: int) -> None:
        """Queue `weights` (arrays the caller will not modify again) as `version`; returns at once."""
        with self._cv:
            self._raise()
            if self._closed:
                raise RuntimeError("WeightPublisher: submit after close")
            if self._pending is not None:
                self.superseded += 1
            self._pending = (weights, int(version), int(critic_updates))
            self._cv.notify_all()

    def flush(self, wait_store: bool = False, timeout: float | None = None) -> None:
        """Wait until every submitted version is put and handed to the store (`wait_store`: and the
        store has answered)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._pending is None and not self._busy, timeout):
                raise TimeoutError(f"WeightPublisher: not flushed within {timeout} s")
            self._raise()
            acks = list(self._acks)
        if wait_store and acks:
            ray.get(acks, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        """Consistent with the thread: put_hist (its to_dict(), None without one), counts."""
        with self._cv:
            return {"put_hist": self.put_hist.to_dict() if self.put_hist is not None else None,
                    "published": self.published, "superseded": self.superseded}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=10.0)

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"weight publishing failed: {type(err).__name__}: {err}") from err

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:  # closed and drained
                    return
                (weights, version, updates), self._pending = self._pending, None
                self._busy = True
            try:
                t0 = time.perf_counter()
                ack = self.store.publish.remote(version, [self._put(weights)], updates)
                with self._cv:
                    self._acks.append(ack)
                    if len(self._acks) > 8:  # keep the list short without waiting on the store
                        self._acks = ray.wait(self._acks, num_returns=len(self._acks), timeout=0)[1]
                    self.published += 1
                    if self.put_hist is not None:
                        self.put_hist.observe(time.perf_counter() - t0)
            except BaseException as e:  # handed to the caller's thread by the next submit / flush
                with self._cv:
                    self._error = e
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
