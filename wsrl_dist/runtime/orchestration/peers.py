"""PeerDirectory: where a restarted rollout worker finds its replay shard, weight store and learner.

Ray keeps an actor's constructor arguments to re-run the constructor at a restart; arguments that
are actor handles travel through the object store, and Ray cannot guarantee those are still there
at a restart (ray-project/ray#53727: it logs an error line for every such actor with
max_restarts > 0). So the Supervisor's workers get small plain arguments (config dict, worker id,
this directory's name) and ask this named actor, on the driver's node, for their handles in their
constructor, the first time and after every restart.
"""

from __future__ import annotations

import uuid
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from wsrl_dist.runtime.orchestration.control import NAMESPACE


class PeerDirectory:
    def __init__(self) -> None:
        self._shards: list[Any] = []
        self._store: Any = None
        self._learner: Any = None

    def set(self, shards: list, store: Any, learner: Any) -> None:
        self._shards, self._store, self._learner = list(shards), store, learner

    def rollout_peers(self, worker_id: int) -> tuple[Any, Any, Any]:
        """(replay shard, weight store, learner) of rollout worker `worker_id`."""
        return self._shards[int(worker_id) % len(self._shards)], self._store, self._learner


def make_directory(shards: list, store: Any, learner: Any) -> tuple[Any, str]:
    """A PeerDirectory on this (the driver's) node holding these handles; (handle, its name)."""
    name = f"rollout-peers:{uuid.uuid4().hex[:12]}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = ray.remote(PeerDirectory).options(name=name, namespace=NAMESPACE, num_cpus=0,
                                               scheduling_strategy=here).remote()
    ray.get(handle.set.remote(shards, store, learner))
    return handle, name


def lookup(name: str, worker_id: int) -> tuple[Any, Any, Any]:
    """From inside a worker: its (shard, store, learner) by the directory's name."""
    return ray.get(ray.get_actor(name, namespace=NAMESPACE).rollout_peers.remote(worker_id))
