"""What leaves the Learner: weight versions, the agent and critic for saving and probes, stats and
checkpoint state.

LearnerOutputs is a mixin of learner.Learner (each seed's Learner inside
learneractor.LearnerActor): publishing (the async device->host weight copies and the
WeightPublisher thread that puts them), save_agent / critic_state, stats() for the driver's monitor,
and state_dict / load_state_dict for checkpoints. Kept apart from learner.py, which holds the
limiter side and each seed's part of the training loop, so those read on their own. It uses the Learner's attributes
set in Learner.__init__ (agent, limiter, locks, copies, publisher, counters, feed, ...).
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import torch

from wsrl_dist import job


def to_cpu(obj: Any) -> Any:
    """Nested containers with every tensor copied to the CPU: a snapshot taken under the caller's
    locks. Always a copy, also of a CPU tensor (`.cpu()` returns a CPU tensor itself): Ray serializes
    the return value after the locks are released, and a learner stepping on meanwhile tore the state
    (a CPU checkpoint whose actor Adam step views read 243 and 244: the fused state shares one step
    tensor per network, and the resume refused it)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class LearnerOutputs:
    """Weights, saved agent/critic, stats and checkpoint state of learner.Learner (module docstring)."""

    def save_agent(self, path: str) -> None:
        with self._agent_lock:
            job.save_agent(path, self.agent, {"version": self.version})

    def critic_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the critic for a Q-vs-MC probe (driver, finetune.q_probe_every): taken
        between two bundles, one device sync per probe, none in the training loop."""
        with self._agent_lock:
            return to_cpu(self.agent.critic.state_dict())

    # ------------------------------------------------------------------ weights
    def publish(self, bump: bool = True, wait: bool = False) -> int:
        """Export the actor, ray.put it once, hand the store [ref]; returns the version published
        (a new one, or with bump=False the current one again: a resumed job's fresh store), once it
        is put. `wait` returns only once the store holds it. The training loop uses _publish_async."""
        self._collect_copies(block=True)  # a version still on its way out goes first
        self.version += int(bump)
        self._publisher.submit(self.agent.export_policy(), self.version, self.limiter.updates)
        self._publisher.flush(wait_store=wait)
        return self.version

    def drain_publishing(self) -> None:
        """Every weight version started so far handed to the store (end of training)."""
        self._collect_copies(block=True)
        self._publisher.flush()

    def _publish_async(self) -> None:
        """Start a new weight version's copy to the host; it reaches the store in _collect_copies
        once it has landed. Skipped (no new version) while the previous one is still in flight: on
        a GPU running behind the loop, versions then follow the GPU's pace instead of stalling it."""
        params = list(self.agent.actor.state_dict().values())
        if self._weights_copy.start(params, tag=self.version + 1):
            self.version += 1

    def _collect_copies(self, block: bool = False) -> None:
        """Publish a weight copy and read a loss copy that have landed (block: wait for them)."""
        got = self._weights_copy.poll(block)
        if got is not None:
            version, flat = got
            flat = flat.copy()  # the pinned buffer is reused by the next copy; the put comes later
            out, offset = {}, 0
            for k, v in self.agent.actor.state_dict().items():
                out[k] = flat[offset: offset + v.numel()].reshape(v.shape)
                offset += v.numel()
            self._publisher.submit(out, version, self.limiter.updates)
        got = self._info_copy.poll(block)
        if got is not None:
            keys, vals = got
            self.last_info = {k: float(v) for k, v in zip(keys, vals)}

    def publish_due(self, n: int = 1) -> None:
        """A weight version every `publish_every` bundles (started async; one for the last `n`
        bundles however many multiples they crossed), and whatever copies have landed since the
        last call go out (caller holds the agent lock)."""
        every = self.cfg.runtime.publish_every
        if any(b % every == 0 for b in range(self.bundles - n + 1, self.bundles + 1)):
            self._publish_async()
        self._collect_copies()

    # ------------------------------------------------------------------ reporting and state
    def stats(self) -> dict[str, Any]:
        with self._lock:
            lim = self.limiter.state_dict()
            env_steps = self.env_steps
        t0, u0 = self._train_start
        elapsed = time.perf_counter() - t0 if t0 else 0.0
        self.bundle_timer.poll()
        pub = self._publisher.stats()
        out = {
            "critic_updates": lim["updates"], "bundles": self.bundles, "env_steps": env_steps,
            "bundle_groups": self.bundle_groups,
            "critic_updates_per_second": (lim["updates"] - u0) / elapsed if elapsed > 0 else 0.0,
            "granted_env_steps": lim["granted"], "version": self.version,
            "limiter_blocked_seconds": lim["blocked_seconds"], "losses": dict(self.last_info),
            "train_seconds": self.train_seconds, "step_hist": self.step_hist.to_dict(),
            # seconds per ray.put + store call, on the publisher's thread (weights.WeightPublisher);
            # superseded: versions replaced by a newer one before their put started
            "publish_hist": pub["put_hist"], "weights_superseded": pub["superseded"],
            "device": str(self.device),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],  # GPUs Ray gave this learner (placement)
            "time_split_s": dict(self.time_split),
            # assemble_to_device, in parts (runtime/datapath/feed.py ReplayFeed.split)
            "feed_split_s": dict(self.feed.split) if self.feed is not None else {},
            "offline_rows_per_bundle": self.plan.rows_per_env_step - self.online_rows,
            # device ms per bundle (sampled every 50); busy = that x bundles/s: ~1 means device-bound
            "bundle_device_ms": self.bundle_timer.mean_ms,
            "device_busy": self.bundle_timer.busy(),
            "process": self.process_stats.snapshot(),  # CPU, GC pauses, grant calls (procstats.py)
            "pid": os.getpid(),
        }
        # 0 on a CPU learner: the series always exists, so the dashboard panel never goes blank
        out["gpu_memory_bytes"] = (int(torch.cuda.memory_allocated(self.device))
                                   if self.device.type == "cuda" else 0)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Agent (+ Adam, temperature), limiter counters, weight version: CPU tensors and numbers."""
        with self._agent_lock, self._lock:
            return {"agent": to_cpu(self.agent.state_dict()), "limiter": self.limiter.state_dict(),
                    "version": self.version, "bundles": self.bundles, "env_steps": self.env_steps,
                    "torch_rng": torch.get_rng_state(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._agent_lock, self._lock:
            self.agent.load_state_dict(state["agent"])
            self.limiter.load_state_dict(state["limiter"])
            self.version, self.bundles = int(state["version"]), int(state["bundles"])
            self.env_steps = int(state["env_steps"])
            torch.set_rng_state(state["torch_rng"])
            self.rng.bit_generator.state = state["rng"]
            self._bundle = self._group = None
            self.grants.wake_all()
