"""ReplayShard: one slice of the online replay buffer (rollout frames in -> learner batches out).

A plain class over `data.ring.RingBuffer`; driver.py makes it a Ray actor. It decodes wire frames,
applies the task's reward scale/bias (the ONE place online rewards are scaled: chunks carry raw
rewards, docs/CONVENTIONS.md), refuses bad frames whole and counts them by reason. Offline data never
enters a shard: retention baselines sample offline rows on the learner instead.

Restarts (issue 17). Made with `snapshot_dir`, a shard survives its process being killed: Ray
restarts the actor (driver.py gives it max_restarts and retries the calls in flight), the
constructor runs again and refills the ring from the shard's last snapshot. A background thread
writes that snapshot every `snapshot_s` seconds (0 = never: a restarted shard starts empty), warmup
included, atomically and fsynced (durable.py) to <snapshot_dir>/shard_<i>.npz; inserts and samples
wait only for the in-memory copy, not for the write. Rows inserted after the last snapshot are lost:
a small counter file (<snapshot_dir>/shard_<i>.count, rewritten in place after every insert; the
page cache keeps it through a SIGKILL) holds the rows ever inserted, so the restarted shard knows
exactly how many it lost (`stats()["rows_lost"]`, cumulative over this job process's restarts).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.data.schema import SchemaError
from wsrl_dist.durable import replace_durably
from wsrl_dist.runtime.datapath.wire import REASONS, WireError, decode_chunk

RECENT_RETURNS = 100  # episode returns kept for stats
COUNTS = struct.Struct("<qqq")  # counter file: rows ever inserted, rows lost, restarts
log = logging.getLogger(__name__)


def _reconstructed() -> bool:
    """True in a shard actor that Ray restarted after its process died (False outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return False
        with warnings.catch_warnings():  # Ray 2.60 warns about an attribute it reads itself
            warnings.simplefilter("ignore")
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - not inside an actor
        return False


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
        snapshot_dir: str | None = None,
        snapshot_s: float = 0.0,
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
        # the ring and counters: the actor's calls vs the snapshot thread's copy
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one snapshot write at a time, newest state last
        self.rows_lost = self.restarts = self.snapshots = 0
        self.snapshot_env_steps = 0  # rows ever inserted, as of the newest snapshot
        self._counts_fd: int | None = None
        self._stop = threading.Event()
        if snapshot_dir is not None:
            self._open_snapshots(Path(snapshot_dir), float(snapshot_s))

    # ------------------------------------------------------------------ restarts
    def _open_snapshots(self, root: Path, every_s: float) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.snapshot_path = root / f"shard_{self.shard_id}.npz"
        counts_path = root / f"shard_{self.shard_id}.count"
        if _reconstructed():
            self._recover(counts_path)
        else:  # a new job process (fresh start or driver resume): an older snapshot is stale
            self.snapshot_path.unlink(missing_ok=True)
        self._counts_fd = os.open(counts_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._write_counts()
        if every_s > 0:
            threading.Thread(target=self._snapshot_loop, args=(every_s,), daemon=True,
                             name=f"shard-{self.shard_id}-snapshots").start()

    def _recover(self, counts_path: Path) -> None:
        """Restarted: refill from the snapshot; rows inserted since it are counted as lost."""
        inserted = lost = restarts = 0
        try:
            inserted, lost, restarts = COUNTS.unpack(counts_path.read_bytes()[:COUNTS.size])
        except (OSError, struct.error) as e:
            log.warning("replay shard %d: counter file %s unreadable (%s); rows lost not counted",
                        self.shard_id, counts_path, e)
        # this restart counted on disk before the snapshot loads (seconds for a big ring): killed
        # again meanwhile, the next recovery counts both (before, this one went uncounted). Rows
        # ever inserted stay as they were, so that recovery still counts the same rows lost.
        try:
            counts_path.write_bytes(COUNTS.pack(int(inserted), int(lost), int(restarts) + 1))
        except OSError as e:  # unwritable: _open_snapshots' own write says so
            log.warning("replay shard %d: counter file %s not updated (%s)", self.shard_id, counts_path, e)
        if self.snapshot_path.exists():
            empty = self.state_dict()
            try:
                self._load_state(read_snapshot(self.snapshot_path))
            except Exception as e:  # noqa: BLE001 - a damaged snapshot: start empty, count it all lost
                log.warning("replay shard %d: snapshot %s does not load (%s: %s); starting empty",
                            self.shard_id, self.snapshot_path, type(e).__name__, e)
                self._load_state(empty)
        kept = self.ring.total_inserted
        self.snapshot_env_steps = kept
        self.rows_lost, self.restarts = int(lost) + max(0, int(inserted) - kept), int(restarts) + 1
        log.warning("replay shard %d restarted: %d rows back from its snapshot, %d lost since it",
                    self.shard_id, len(self.ring), max(0, int(inserted) - kept))

    def _write_counts(self) -> None:
        if self._counts_fd is not None:  # 24 bytes in place: a page-cache write, no fsync
            os.pwrite(self._counts_fd, COUNTS.pack(self.ring.total_inserted, self.rows_lost,
                                                   self.restarts), 0)

    def _snapshot_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.snapshot()
            except Exception as e:  # noqa: BLE001 - a full disk must not kill the shard: retry next time
                log.error("replay shard %d: snapshot failed: %s", self.shard_id, e)

    def snapshot(self) -> int:
        """Write the snapshot now; returns the rows ever inserted that it covers."""
        with self._write_lock:
            with self._lock:  # only the copy holds up inserts and samples, not the write
                state = self.state_dict()
            write_snapshot(self.snapshot_path, state)
            self.snapshot_env_steps = state["ring"]["total_inserted"]
            self.snapshots += 1
        return self.snapshot_env_steps

    # ------------------------------------------------------------------ data path
    def insert(self, frame: bytes) -> int:
        """Decode, scale rewards, append. Returns rows inserted; 0 when refused (counted by reason)."""
        with self._lock:
            n = self._insert(frame)
            if n:
                self._write_counts()
        return n

    def _insert(self, frame: bytes) -> int:
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
        with self._lock:
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
            "pid": os.getpid(), "restarts": self.restarts, "rows_lost": self.rows_lost,
            "snapshot_env_steps": self.snapshot_env_steps, "snapshots": self.snapshots,
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
        """Restore a checkpoint's state; with snapshots on, snapshot it at once (a kill right
        after a resume refills from the checkpoint, not from nothing)."""
        with self._lock:
            self._load_state(state)
            self._write_counts()
        if self._counts_fd is not None:
            self.snapshot()

    def _load_state(self, state: dict[str, Any]) -> None:
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


def write_snapshot(path: Path, state: dict[str, Any]) -> None:
    """A shard's state_dict() as ONE .npz (its arrays + a JSON `__meta__` array; no pickle),
    replaced atomically and fsynced."""
    ring = dict(state["ring"])
    arrays = ring.pop("arrays")
    meta = np.frombuffer(json.dumps({"ring": ring, "meta": state["meta"]}).encode(), dtype=np.uint8)
    replace_durably(path, lambda f: np.savez(f, __meta__=meta, **arrays))


def read_snapshot(path: Path) -> dict[str, Any]:
    """The state_dict() that `write_snapshot` wrote."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(z["__meta__"].tobytes().decode())
    ring = meta["ring"]
    ring["extra_fields"] = {k: (tuple(s), d) for k, (s, d) in ring["extra_fields"].items()}
    ring["arrays"] = arrays
    return {"ring": ring, "meta": meta["meta"]}
