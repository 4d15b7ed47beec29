"""Dataset rollouts as parallel env streams (the builder's rollout side, numpy policy).

`rollout_parallel`: `num_envs` streams, stream i = the policy acting in make_env(task, seed + i)
with its own noise generator (seed, i), one row at a time, like builder.rollout_dataset's single
env. The streams are concatenated in env order, so episodes never interleave (D4RL readers split
episodes at terminals / timeouts) and each stream's last row closes its partial episode as a
timeout. Streams are spread over worker processes (spawned, ~2-3 s each: they import torch) when
the rollout is large enough to pay for starting them; the rows depend on (seed, num_envs) only,
bit for bit, not on how many processes ran them.

Deviation from a gymnasium vector env with one batched policy forward per vector step: numpy's
matmul rounds a row differently at different batch sizes (seen: 1 element in 2,412 off by 1e-9
between batches of 4 and 2), so the rows would depend on how envs were grouped, i.e. on the
core count. One stream per env at batch 1 keeps them reproducible everywhere; on the 16-core
target box each process runs one env anyway, so batching would buy nothing there.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wsrl_dist.algo.nets import NetConfig, TanhGaussianActor
from wsrl_dist.algo.policy import Policy, pin_blas_threads
from wsrl_dist.data.schema import COLUMN_NAMES
from wsrl_dist.envs.make import make_env, obs_act_dims
from wsrl_dist.envs.tasks import TaskSpec, get_task
from wsrl_dist.ops.bars import bar_options

# below this many rows a rollout runs in the calling process: starting workers costs more
MIN_ROWS_PER_PROCESS = 20_000
PROGRESS_EVERY = 5_000  # rows between a worker's progress messages


def init_actor_weights(task: TaskSpec, net: NetConfig, seed: int) -> dict[str, np.ndarray]:
    """The seeded random-init actor (D4RL's "random" policy) as numpy arrays: the same draws as
    builder.policy_from_weights(task, net, None, seed)."""
    obs_dim, act_dim = obs_act_dims(task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        actor = TanhGaussianActor(obs_dim, act_dim, net)
    return {k: v.detach().numpy().copy() for k, v in actor.state_dict().items()}


def env_stream(policy: Policy, spec: TaskSpec, n: int, seed: int, deterministic: bool = False,
               progress: Any = None) -> dict[str, np.ndarray]:
    """`n` rows (D4RL columns, raw rewards) of `policy` acting in make_env(spec, seed): timeouts at
    TimeLimit truncations and on the last row (a partial episode) unless it terminated.
    `progress`: anything with put(rows), given row counts as they are done."""
    obs_dim, act_dim = obs_act_dims(spec)
    cols = {k: np.zeros((n, obs_dim) if k in ("observations", "next_observations")
                        else (n, act_dim) if k == "actions" else (n,), np.float32) for k in COLUMN_NAMES}
    o, a, r, o2, term, tout = (cols[k] for k in COLUMN_NAMES)
    env = make_env(spec, seed=seed)
    try:
        obs, _ = env.reset()
        for i in range(n):
            action = policy.act(obs[None], deterministic=deterministic)[0]
            next_obs, reward, terminated, truncated, _ = env.step(action)
            o[i], a[i], r[i], o2[i] = obs, action, reward, next_obs
            term[i], tout[i] = terminated, truncated and not terminated  # terminated wins
            obs = env.reset()[0] if (terminated or truncated) else next_obs
            if progress is not None and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 == n):
                progress.put(PROGRESS_EVERY if (i + 1) % PROGRESS_EVERY == 0 else (i + 1) % PROGRESS_EVERY)
    finally:
        env.close()
    if n and not term[-1]:
        tout[-1] = 1.0
    return cols


def stream_group(task: str, net: NetConfig, weights: dict[str, np.ndarray], seed: int,
                 first: int, counts: list[int], deterministic: bool,
                 progress: Any = None) -> dict[str, np.ndarray]:
    """Streams first .. first + len(counts) - 1 (stream first + j: counts[j] rows), concatenated."""
    spec = get_task(task)
    # OpenBLAS would thread the policy's products over every core: at these sizes much slower (on a
    # busy 2-core box 10 ms per [16, 256] @ [256, 256] product, measured), so one thread, as
    # policy.py's rollout workers; here it also holds for the calling process when workers == 1
    pin_blas_threads(1)
    parts = []
    for j, c in enumerate(counts):
        policy = Policy(*obs_act_dims(spec), net, seed=[seed, first + j])  # stream i's noise: (seed, i)
        policy.load(weights, version=0)
        parts.append(env_stream(policy, spec, c, seed + first + j, deterministic, progress))
    return {k: np.concatenate([p[k] for p in parts]) for k in COLUMN_NAMES}


class _Direct:
    """stream_group's progress queue when it runs in this process: put() advances the bar directly."""

    def __init__(self, fn):
        self.put = fn


def _worker_init() -> None:
    torch.set_num_threads(1)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rollout_parallel(weights: dict[str, np.ndarray], net: NetConfig, task: str | TaskSpec, n_transitions: int,
                   seed: int, num_envs: int = 16, workers: int | None = None, deterministic: bool = False,
                   *, progress: bool = False, report: Any = None, report_every: int = 10_000
                   ) -> dict[str, np.ndarray]:
    """`n_transitions` rows (D4RL columns, raw rewards) of the policy `weights` in `num_envs` env
    streams (module docstring); stream i writes n // num_envs rows (+1 for the first n % num_envs),
    streams concatenated in env order. `workers`: processes (None: one per core up to
    num_envs, 1 below MIN_ROWS_PER_PROCESS rows; 1 runs here). `report(done, total)`: row counts."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    n, num_envs = int(n_transitions), int(num_envs)
    if n <= 0 or num_envs <= 0:
        raise ValueError(f"rollout_parallel: n_transitions ({n}) and num_envs ({num_envs}) must be > 0")
    counts = [n // num_envs + (i < n % num_envs) for i in range(num_envs)]
    if workers is None:
        workers = 1 if n < MIN_ROWS_PER_PROCESS else min(num_envs, _cores())
    workers = max(1, min(int(workers), num_envs))
    bounds = np.linspace(0, num_envs, workers + 1).round().astype(int)
    jobs = [(spec.name, net, weights, seed, int(lo), counts[lo:hi], deterministic)
            for lo, hi in zip(bounds[:-1], bounds[1:])]
    bar = tqdm(total=n, desc=f"rollout {spec.name}", disable=not progress, **bar_options())
    done, last = 0, 0

    def advance(rows: int) -> None:
        nonlocal done, last
        done += rows
        bar.update(rows)
        if report is not None and (done - last >= report_every or done == n):
            report(done, n)
            last = done

    try:
        if workers == 1:
            parts = [stream_group(*jobs[0], progress=_Direct(advance))]
        else:
            ctx = mp.get_context("spawn")  # no fork of a process holding torch / CUDA state
            with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx,
                                                               initializer=_worker_init) as pool:
                q = manager.Queue()
                futures = [pool.submit(stream_group, *job, progress=q) for job in jobs]
                while not all(f.done() for f in futures) or not q.empty():
                    try:
                        advance(q.get(timeout=0.2))
                    except queue.Empty:
                        pass
                parts = [f.result() for f in futures]
    finally:
        bar.close()
    return {k: np.concatenate([p[k] for p in parts]) for k in COLUMN_NAMES}
