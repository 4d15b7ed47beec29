"""WeightStore keeps the newest version only; WeightsClient pulls only newer weights, never blocks,
and reports the policy lag (store version - version in use)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from wsrl_dist.runtime.datapath.weights import WeightsClient, WeightStore


def test_store_keeps_only_newer_versions():
    store = WeightStore()
    assert store.publish(0, ["a"]) and store.publish(2, ["b"])
    assert not store.publish(1, ["c"])  # a late, older publish is ignored
    assert store.latest(-1) == (2, ["b"]) and store.latest(2) == (2, [])


def poll_until(client: WeightsClient, timeout: float = 10.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = client.poll()
        if got is not None:
            return got
        time.sleep(0.01)
    return None


def test_client_pulls_newer_weights_through_the_object_store_and_tracks_lag(ray_local):
    store = ray.remote(WeightStore).remote()
    w0 = {"layer": np.zeros(3, np.float32)}
    ray.get(store.publish.remote(0, [ray.put(w0)]))
    client = WeightsClient(store)
    weights, version = client.pull(timeout=30)
    assert version == 0 and (weights["layer"] == 0).all()
    weights["layer"][0] = 1.0  # writable: the client copies the read-only object-store arrays
    assert client.poll() is None and poll_until(client, 2.0) is None  # nothing newer yet
    for v in (1, 2, 3):
        ray.get(store.publish.remote(v, [ray.put({"layer": np.full(3, v, np.float32)})]))
    weights, version = poll_until(client)
    assert version == 3 and (weights["layer"] == 3).all()  # skips straight to the newest
    assert client.lag == 0 and client.pulls == 2


def test_publisher_puts_versions_off_the_caller_thread_in_order(ray_local):
    """WeightPublisher: the put and the store call run on its thread; while one put runs, a newer
    submit replaces the version waiting behind it; flush returns once the store holds the newest."""
    import threading

    from wsrl_dist.ops.metrics import SECONDS_BUCKETS, Histogram
    from wsrl_dist.runtime.datapath.weights import WeightPublisher

    store = ray.remote(WeightStore).remote()
    release, callers = threading.Event(), []

    def slow_first_put(obj):
        callers.append(threading.current_thread().name)
        if len(callers) == 1:
            release.wait(10)
        return ray.put(obj)

    hist = Histogram(SECONDS_BUCKETS)
    pub = WeightPublisher(store, hist, put=slow_first_put)
    w = {v: {"layer": np.full(3, v, np.float32)} for v in range(4)}
    pub.submit(w[1], 1, 10)
    time.sleep(0.2)  # v1's put has started and blocks
    pub.submit(w[2], 2, 20)
    pub.submit(w[3], 3, 30)  # replaces v2, still waiting
    release.set()
    pub.flush(wait_store=True, timeout=30)
    assert callers == ["weight-publisher", "weight-publisher"]  # never the caller's thread
    version, refs = ray.get(store.latest.remote(-1))
    assert version == 3 and (ray.get(refs[0])["layer"] == 3).all()
    assert ray.get(store.stats.remote())["publishes"] == 2 and ray.get(store.stats.remote())["critic_updates"] == 30
    assert pub.stats()["published"] == 2 and pub.stats()["superseded"] == 1
    assert pub.stats()["put_hist"]["count"] == 2 and hist.sum >= 0.15  # v1's put waited ~0.2 s
    pub.close()


def test_publisher_error_surfaces_in_the_callers_thread_and_publishing_goes_on(ray_local):
    from wsrl_dist.runtime.datapath.weights import WeightPublisher

    store = ray.remote(WeightStore).remote()
    fail = [True]

    def put(obj):
        if fail[0]:
            fail[0] = False
            raise ValueError("object store full")
        return ray.put(obj)

    pub = WeightPublisher(store, put=put)
    pub.submit({"layer": np.zeros(2, np.float32)}, 0, 0)
    with pytest.raises(RuntimeError, match="weight publishing failed: ValueError: object store full"):
        pub.flush(timeout=30)
    pub.submit({"layer": np.ones(2, np.float32)}, 1, 4)
    pub.flush(wait_store=True, timeout=30)
    assert ray.get(store.get_version.remote()) == 1
    pub.close()
    with pytest.raises(RuntimeError, match="submit after close"):
        pub.submit({"layer": np.ones(2, np.float32)}, 2, 8)
