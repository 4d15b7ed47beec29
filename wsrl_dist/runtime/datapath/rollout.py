"""RolloutWorker: vector env + CPU Policy -> wire chunks -> one replay shard (the acting end of the data path).

Rows are stamped with the weights version that chose their action; rewards stay RAW in the chunk
(the shard scales them, once). Between chunks the worker pulls newer weights without blocking and,
in the online stage, asks the learner's UTD limiter for env steps. driver.py runs it as a threaded Ray
actor (max_concurrency=2) so `stop()` and `stats()` answer while `run()` loops.

When the learner keeps the Cal-QL loss online, each env's rows wait here until their episode ends and
go out with its Monte-Carlo returns-to-go (from the scaled rewards, as local.py computes them); an
episode still running when the worker drains (end of warmup, budget spent, stop) goes out cut there,
its last row marked a timeout. A partial vector step (the budget's last remainder, a warmup share)
is always followed by a drain, so an env whose row was dropped never runs on into the same episode.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import deque
from typing import Any

import numpy as np
import ray
import torch

from wsrl_dist.algo.policy import Policy, pin_blas_threads
from wsrl_dist.config import from_dict
from wsrl_dist.data.returns import mc_returns_to_go
from wsrl_dist.envs.make import make_vector_env, obs_act_dims, true_next_obs
from wsrl_dist.ops.histogram import POLICY_LAG_BUCKETS, Histogram
from wsrl_dist.plan import RunPlan
from wsrl_dist.runtime.datapath.weights import WeightsClient
from wsrl_dist.runtime.datapath.wire import encode_chunk

_COLS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


class RolloutWorker:
    """Acts in `runtime.envs_per_worker` envs, sends chunks of `runtime.chunk_size` rows to `shard`.

    `learner` is the handle whose `acquire_env_steps(n, multiple, blocked_s)` hands out env steps
    (the rollout side of limiter.UtdLimiter); `collect` ignores it (warmup has no learner to pace).
    """

    def __init__(self, cfg: dict, worker_id: int, shard: Any = None, store: Any = None,
                 learner: Any = None, weights_timeout: float = 120.0, peers: str | None = None,
                 plan: RunPlan | None = None):
        """`peers`: the name of a peers.PeerDirectory to fetch (shard, store, learner) from instead
        of taking them as arguments (the Supervisor's restartable workers: see peers.py). `plan`:
        the job's RunPlan (a worker built alone plans from its config)."""
        if peers is not None:
            from wsrl_dist.runtime.orchestration.peers import lookup

            shard, store, learner = lookup(peers, worker_id)
        torch.set_num_threads(1)  # many workers share a node's cores
        pin_blas_threads(1)  # and numpy's OpenBLAS (the Policy's matmuls) would spread over them all
        self.cfg = from_dict(cfg)
        plan = plan if plan is not None else RunPlan.of(self.cfg)
        rt = self.cfg.runtime
        self.worker_id, self.shard, self.learner = int(worker_id), shard, learner
        self.chunk_size, self.max_inflight = rt.chunk_size, rt.max_inflight_chunks
        self.num_envs = rt.envs_per_worker
        task = self.task = self.cfg.task.spec()
        # a restarted actor gets fresh seeds: replaying its first life's episodes adds nothing
        with warnings.catch_warnings():  # Ray warns about an internal call of this property
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        seed = self.cfg.run.seed + 7919 * (self.worker_id + 1) + (os.getpid() if restarted else 0)
        self.venv = make_vector_env(task, self.num_envs, seed=seed)
        self.obs, _ = self.venv.reset(seed=seed)
        obs_dim, act_dim = obs_act_dims(task)
        self.policy = Policy(obs_dim, act_dim, self.cfg.net, seed=seed)
        self.weights = WeightsClient(store)
        got = self.weights.pull(timeout=weights_timeout)  # a (re)started worker acts with the latest
        if got is None:
            raise RuntimeError("no weights published before the rollout worker started")
        self.policy.load(*got)
        self.restarted = bool(restarted)
        self._stop = threading.Event()
        self._rows: list[dict[str, np.ndarray]] = []  # per vector step, each [E, ...] (or fewer rows)
        # Cal-QL kept online: per env, its running episode's rows (one dict per step) until it ends
        self._episodes: list[list[dict]] | None = (
            [[] for _ in range(self.num_envs)] if plan.mc_returns else None)
        self._since_pull = 0
        self._buffered = 0
        self._returns: list[float] = []  # episodes finished since the last chunk
        self._ep_return = np.zeros(self.num_envs)
        self._inflight: list[Any] = []
        self.seq = 0
        self.env_steps = 0  # rows produced by this incarnation
        self.sent_rows = 0  # rows handed to the shard
        self.inserted_rows = 0  # rows the shard acknowledged
        self.rejected_chunks = 0
        self.episodes = 0
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.blocked = {"limiter": 0.0, "replay": 0.0}
        self.lag_hist = Histogram(POLICY_LAG_BUCKETS)
        self.running = False

    # ------------------------------------------------------------------ acting
    def _step(self, keep: int) -> None:
        """One vector step; keeps the first `keep` env rows (all envs step regardless)."""
        actions = self.policy.act(self.obs)  # [E, A]
        nxt, rewards, term, trunc, info = self.venv.step(actions)
        real_next = true_next_obs(nxt, info)  # SAME_STEP autoreset: final obs, not the reset obs
        self._ep_return += rewards
        done = np.logical_or(term, trunc)
        for i in np.flatnonzero(done):
            self._returns.append(float(self._ep_return[i]))
            self.recent_returns.append(float(self._ep_return[i]))
            self._ep_return[i] = 0.0
            self.episodes += 1
        row = {
            "observations": self.obs, "actions": actions, "rewards": rewards,
            "next_observations": real_next, "terminals": term,
            # terminated wins over a same-step truncation (envs/wrappers.py table)
            "timeouts": np.logical_and(trunc, np.logical_not(term)),
        }
        kept = {k: np.asarray(v)[:keep] for k, v in row.items()}
        kept["policy_versions"] = np.full(keep, self.policy.version, dtype=np.int64)
        if self._episodes is None:
            self._rows.append(kept)
            self._buffered += keep
        else:
            for i in range(keep):
                self._episodes[i].append({k: v[i:i + 1] for k, v in kept.items()})
                if done[i]:
                    self._close_episode(i)
        self.env_steps += keep
        self.obs = nxt

    def _close_episode(self, i: int, cut: bool = False) -> None:
        """Env i's episode rows -> the send buffer, with their MC returns-to-go (scaled rewards, the
        task's sparse rule, as local.py). `cut`: the episode is still running; its last row is
        marked a timeout (bootstrapped, and where its return-to-go stops)."""
        rows, self._episodes[i] = self._episodes[i], []
        if not rows:
            return
        ep = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        if cut and not ep["terminals"][-1]:
            ep["timeouts"] = ep["timeouts"].copy()
            ep["timeouts"][-1] = True
        t, d = self.task, self.cfg.sac.discount
        ep["mc_returns"] = mc_returns_to_go(
            t.scale_reward(ep["rewards"].astype(np.float64)), ep["terminals"], ep["timeouts"], d,
            sparse_negative_reward=t.sparse_negative_reward if t.sparse_reward else None).astype(np.float32)
        self._rows.append(ep)
        self._buffered += len(rows)

    def _take(self, n: int) -> None:
        """Take exactly n env steps (the last vector step may keep only part of its rows)."""
        while n > 0:
            keep = min(n, self.num_envs)
            self._step(keep)
            n -= keep
            self._since_pull += keep
            if self._buffered >= self.chunk_size:
                self._send()
            elif self._since_pull >= self.chunk_size:  # rows held for whole episodes: pull anyway
                self._pull_weights()

    # ------------------------------------------------------------------ replay side
    def _send(self) -> None:
        if not self._buffered:
            return
        names = (*_COLS, "policy_versions", *(("mc_returns",) if self._episodes is not None else ()))
        cols = {k: np.concatenate([r[k] for r in self._rows]) for k in names}
        frame = encode_chunk({k: v for k, v in cols.items() if k != "policy_versions"},
                             worker_id=self.worker_id, seq=self.seq,
                             policy_versions=cols["policy_versions"], episode_returns=self._returns)
        self.lag_hist.observe(max(0, self.weights.latest_seen - int(cols["policy_versions"].min())))
        self._rows, self._returns = [], []
        self.seq += 1
        self.sent_rows += self._buffered
        self._buffered = 0
        self._inflight.append(self.shard.insert.remote(frame))
        if len(self._inflight) >= self.max_inflight:  # backpressure: a slow shard slows this worker
            t0 = time.perf_counter()
            done, self._inflight = ray.wait(self._inflight, num_returns=1)
            self.blocked["replay"] += time.perf_counter() - t0
            self._ack(done)
        self._pull_weights()

    def _ack(self, refs: list) -> None:
        for n in ray.get(refs):
            self.inserted_rows += n
            self.rejected_chunks += n == 0

    def _drain(self) -> None:
        for i in range(self.num_envs if self._episodes is not None else 0):
            self._close_episode(i, cut=True)
        self._send()
        self._ack(self._inflight)
        self._inflight = []

    def _pull_weights(self) -> None:
        self._since_pull = 0
        got = self.weights.poll()
        if got is not None:
            self.policy.load(*got)

    # ------------------------------------------------------------------ public
    def collect(self, n_steps: int) -> dict[str, Any]:
        """Warmup share: exactly `n_steps` env steps, all of them acknowledged by the shard on return."""
        self.running = True
        try:
            self._take(int(n_steps))
            self._drain()
        finally:
            self.running = False
        return self.stats()

    def run(self) -> dict[str, Any]:
        """Online stage: step while the limiter grants env steps, until the budget is spent or stop()."""
        self.running = True
        try:
            if self.cfg.runtime.grant_wait_s > 0:
                self._run_waiting(self.cfg.runtime.grant_wait_s)
            else:
                self._run_polling()
            self._drain()
        finally:
            self.running = False
        return self.stats()

    def _run_waiting(self, wait_s: float) -> None:
        """Grants from learner.wait_for_env_steps: a refused worker waits in the learner, which
        wakes it when its updates make room, so it neither polls nor oversleeps. Rows still buffered
        here came from a partial grant (a full one ends on a chunk): the pool is short, so they go
        to the shard before the call, never held while the learner may be waiting for them."""
        while not self._stop.is_set():
            self._send()
            want = max(self.num_envs, self.chunk_size)
            g, waited = ray.get(self.learner.wait_for_env_steps.remote(want, self.num_envs, wait_s))
            self.blocked["limiter"] += waited
            if g < 0:
                break
            if g:
                self._take(g)
            else:
                self._pull_weights()

    def _run_polling(self) -> None:
        """Grants from learner.acquire_env_steps, sleeping between refused calls (grant_wait_s 0)."""
        blocked, backoff = 0.0, 0.0005
        while not self._stop.is_set():
            want = max(self.num_envs, self.chunk_size - self._buffered)  # >= one vector step
            g = ray.get(self.learner.acquire_env_steps.remote(want, self.num_envs, blocked))
            blocked = 0.0
            if g < 0:
                break
            if g == 0:
                self._send()  # never sit on rows the learner is waiting for
                t0 = time.perf_counter()
                time.sleep(backoff)
                # up to 50 ms: with the learner behind, 14 workers polling at ~1 kHz flooded
                # its actor with grant calls (GIL contention slowed its training loop); the
                # rollout slack (runtime.rollout_slack env steps) covers the later wake-up
                backoff = min(backoff * 2, 0.05)
                blocked = time.perf_counter() - t0
                self.blocked["limiter"] += blocked
                self._pull_weights()
                continue
            backoff = 0.001
            self._take(g)

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id, "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(), "restarted": self.restarted,
            "running": self.running, "env_steps": self.env_steps, "sent_rows": self.sent_rows,
            "inserted_rows": self.inserted_rows, "rejected_chunks": self.rejected_chunks,
            "chunks": self.seq, "episodes": self.episodes, "recent_returns": list(self.recent_returns),
            "version": self.policy.version, "policy_lag": self.weights.lag, "pulls": self.weights.pulls,
            "blocked_seconds": dict(self.blocked), "lag_hist": self.lag_hist.to_dict(),
        }

    def ping(self) -> int:
        return os.getpid()
