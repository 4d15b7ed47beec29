"""ReplayShard: one slice of the online replay buffer (rollout frames in -> learner batches out).

A plain class over `data.ring.RingBuffer`; driver.py makes it a Ray actor. It decodes wire frames,
applies the task's reward scale/bias (the ONE place online rewards are scaled: chunks carry raw
rewards, docs/CONVENTIONS.md), refuses bad frames whole and counts them by reason. Offline data never
enters a shard: retention baselines sample offline rows on the learner instead.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.data.schema import SchemaError
from wsrl_dist.runtime.wire import REASONS, WireError, decode_chunk

RECENT_RETURNS = 100  # episode returns kept for stats


class ReplayShard:
    """Rows [C] of transitions + the policy version that produced each row.

    `sample(n)` -> observations [n, O], actions [n, A], rewards (scaled) [n], next_observations
    [n, O], terminals/timeouts/masks [n] float32, policy_versions [n] int64 (+ mc_returns [n]
    float32 on a shard made with mc_returns=True).
    """

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        act_dim: int,
        seed: int,
        *,
        reward_scale: float = 1.0,
        reward_bias: float = 0.0,
        max_frame_bytes: int = 64 * 1024 * 1024,
        shard_id: int = 0,
        mc_returns: bool = False,
    ):
        self.obs_dim, self.act_dim, self.shard_id = int(obs_dim), int(act_dim), int(shard_id)
        # every row carries its episode's Monte-Carlo return-to-go (a Cal-QL loss kept online):
        # frames must then bring the column, and frames without it are refused (and vice versa)
        self.mc_returns = bool(mc_returns)
        extra = {"policy_versions": ((), np.int64)}
        if self.mc_returns:
            extra["mc_returns"] = ((), np.float32)
        self.reward_scale, self.reward_bias = float(reward_scale), float(reward_bias)
        self.max_frame_bytes = int(max_frame_bytes)
        self.ring = RingBuffer(capacity, obs_dim, act_dim, extra_fields=extra)
        self.rng = np.random.default_rng(seed)
        self.samples = 0  # rows handed out
        self.rejected = {r: 0 for r in REASONS}
        self.env_steps_by_worker: dict[int, int] = {}
        self.episodes = 0
        self.returns: deque[float] = deque(maxlen=RECENT_RETURNS)

    # ------------------------------------------------------------------ data path
    def insert(self, frame: bytes) -> int:
        """Decode, scale rewards, append. Returns rows inserted; 0 when refused (counted by reason)."""
        try:
            chunk = decode_chunk(frame, obs_dim=self.obs_dim, act_dim=self.act_dim,
                                 max_bytes=self.max_frame_bytes)
            if len(chunk) > self.ring.capacity:  # it would overwrite itself, yet count every row
                raise WireError("oversized", f"{len(chunk)} rows exceed this shard's capacity of "
                                             f"{self.ring.capacity}")
            cols = dict(chunk.columns)
            if ("mc_returns" in cols) != self.mc_returns:
                raise WireError("schema", f"this shard {'needs' if self.mc_returns else 'takes no'} an "
                                          "mc_returns column")
            cols["rewards"] = (cols["rewards"] * self.reward_scale + self.reward_bias).astype(np.float32)
            n = self.ring.insert(cols, source=f"worker {chunk.worker_id} seq {chunk.seq}")
        except WireError as e:
            self.rejected[e.reason] += 1
            return 0
        except SchemaError:  # decoded fine but the ring's own checks refused it (e.g. scaled to inf)
            self.rejected["nonfinite"] += 1
            return 0
        wid = chunk.worker_id
        self.env_steps_by_worker[wid] = self.env_steps_by_worker.get(wid, 0) + n
        self.episodes += len(chunk.episode_returns)
        self.returns.extend(chunk.episode_returns)
        return n

    def sample(self, n: int) -> dict[str, Any]:
        """Uniform rows with replacement (see class docstring) + this shard's counters "size" and
        "env_steps", so the learner learns the data count from the same call. n=0 or empty -> no rows."""
        n = int(n) if len(self.ring) else 0
        batch: dict[str, Any] = self.ring.sample(n, self.rng) if n else {}
        self.samples += n
        batch["size"] = len(self.ring)
        batch["env_steps"] = self.ring.total_inserted
        return batch

    # ------------------------------------------------------------------ bookkeeping
    def env_steps(self) -> int:
        """Env steps (rows) ever inserted into this shard."""
        return self.ring.total_inserted

    def stats(self) -> dict[str, Any]:
        return {
            "size": len(self.ring),
            "inserts": self.ring.total_inserted,
            "samples": self.samples,
            "rejected": dict(self.rejected),
            "env_steps": self.ring.total_inserted,
            "env_steps_by_worker": dict(self.env_steps_by_worker),
            "episodes": self.episodes,
            "recent_returns": list(self.returns),
        }

    def state_dict(self) -> dict[str, Any]:
        """{"ring": RingBuffer.state_dict() (numpy arrays), "meta": JSON-able counters + RNG state}."""
        return {
            "ring": self.ring.state_dict(),
            "meta": {
                "samples": self.samples,
                "rejected": dict(self.rejected),
                "env_steps_by_worker": {str(k): v for k, v in self.env_steps_by_worker.items()},
                "episodes": self.episodes,
                "returns": list(self.returns),
                "rng": self.rng.bit_generator.state,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ring.load_state_dict(state["ring"])
        meta = state["meta"]
        self.samples = int(meta["samples"])
        self.rejected = {r: int(meta["rejected"].get(r, 0)) for r in REASONS}
        self.env_steps_by_worker = {int(k): int(v) for k, v in meta["env_steps_by_worker"].items()}
        self.episodes = int(meta["episodes"])
        self.returns = deque((float(r) for r in meta["returns"]), maxlen=RECENT_RETURNS)
        self.rng.bit_generator.state = meta["rng"]

    def ping(self) -> int:
        return self.shard_id
