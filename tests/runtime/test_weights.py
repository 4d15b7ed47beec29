"""WeightStore keeps the newest version only; WeightsClient pulls only newer weights, never blocks,
and reports the policy lag (store version - version in use)."""

from __future__ import annotations

import time

import numpy as np
import ray

from wsrl_dist.runtime.weights import WeightsClient, WeightStore


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
