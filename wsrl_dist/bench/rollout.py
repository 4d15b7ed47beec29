"""Rollout benchmark: env steps/s at the acting end of the data path, against baselines of the same run.

Part `single` (one process, no Ray, torch and numpy-BLAS threads = 1 as in a worker): `raw-env` steps the task's vector
env with uniform random actions (the baseline); `policy` acts with the CPU `Policy` at the task's net
sizes; `worker` runs `RolloutWorker._step` (policy, true next obs, row bookkeeping) and packs + msgpack
encodes a chunk every `chunk_size` rows. Rates per wall second and per CPU second of this process (the
loop is single-threaded, so the latter is what one dedicated core gives, even on a shared machine);
x raw and overhead % (= raw / path - 1, the time the path adds per env step) use the CPU rates.
Part `scaling`: N real Ray `RolloutWorker` actors (1, 2, 4, ... `--max-workers`) feed `--shards` Ray
`ReplayShard` actors through `collect()`; env steps/s counted at the shards; % linear = rate / (N x the
1-worker rate of this run).

  wsrl-dist bench rollout [--task hopper-medium-v2] [--envs-per-worker 1] [--sweep-envs 4,16]
                          [--seconds 2] [--max-workers CPUS-2] [--shards 2] [--parts single,scaling]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import deque

import numpy as np
import torch

from wsrl_dist.algo.nets import TanhGaussianActor
from wsrl_dist.algo.policy import Policy, pin_blas_threads
from wsrl_dist.config import RunConfig, load
from wsrl_dist.envs.make import make_vector_env, obs_act_dims
from wsrl_dist.runtime.datapath.rollout import _COLS, RolloutWorker
from wsrl_dist.runtime.datapath.wire import encode_chunk

PATHS = ("raw-env", "policy", "worker")


def host_line() -> str:
    """CPU model, visible cores and load: the 1-minute load says how much of the box was ours."""
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"# host: {model}, {cores} cores visible, load(1 min) {load1:.1f} at start, "
            f"torch {torch.__version__}")


def run_config(task: str, envs: int, chunk: int) -> RunConfig:
    """The job's resolved config for `task` (its family's net sizes) with this worker shape."""
    return load(overrides=[f"task.name={task}", f"runtime.envs_per_worker={envs}",
                           f"runtime.chunk_size={chunk}", "runtime.rollout_slack=null"])


# ---------------------------------------------------------------------------------------- single
def bare_worker(cfg: RunConfig, seed: int) -> RolloutWorker:
    """A RolloutWorker's acting state without its constructor, which needs Ray (actor context, a
    weight store to pull from). Sets exactly what `_step` reads and writes."""
    rt, task = cfg.runtime, cfg.task.spec()
    w = RolloutWorker.__new__(RolloutWorker)
    w.num_envs, w.chunk_size, w.worker_id, w.seq = rt.envs_per_worker, rt.chunk_size, 0, 0
    w.venv = make_vector_env(task, w.num_envs, seed=seed)
    w.obs, _ = w.venv.reset(seed=seed)
    w.policy = Policy(*obs_act_dims(task), cfg.net, seed=seed)
    w._rows, w._buffered, w._returns = [], 0, []
    w._episodes = None  # rows go out per chunk (a Cal-QL loss kept online would hold episodes)
    w._ep_return = np.zeros(w.num_envs)
    w.recent_returns = deque(maxlen=20)
    w.episodes = w.env_steps = 0
    return w


def pack(w: RolloutWorker) -> bytes:
    """What `RolloutWorker._send` does before its Ray call: concatenate the rows, encode one frame."""
    cols = {k: np.concatenate([r[k] for r in w._rows]) for k in (*_COLS, "policy_versions")}
    frame = encode_chunk({k: cols[k] for k in _COLS}, worker_id=w.worker_id, seq=w.seq,
                         policy_versions=cols["policy_versions"], episode_returns=w._returns)
    w._rows, w._returns, w._buffered = [], [], 0
    w.seq += 1
    return frame


def time_path(w: RolloutWorker, path: str, seconds: float,
              rng: np.random.Generator) -> tuple[float, float]:
    """(env steps per wall second, per CPU second) of one path on worker state `w`, after warm-up."""
    E, act_dim = w.num_envs, int(w.venv.single_action_space.shape[0])

    def one() -> None:
        if path == "raw-env":
            w.obs, *_ = w.venv.step(rng.uniform(-1.0, 1.0, (E, act_dim)).astype(np.float32))
        elif path == "policy":
            w.obs, *_ = w.venv.step(w.policy.act(w.obs))
        else:
            w._step(E)
            if w._buffered >= w.chunk_size:
                pack(w)

    for _ in range(20):
        one()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            one()
        n += 10
    return n * E / (time.perf_counter() - t0), n * E / (time.process_time() - c0)


def run_single(cfg: RunConfig, sweep: list[int], seconds: float,
               repeats: int) -> dict[int, dict[str, tuple[float, float]]]:
    """Median (wall, CPU) env steps/s of every path for each envs-per-worker value; paths interleaved
    per repeat so a burst of load from elsewhere hits all of them alike."""
    torch.set_num_threads(1)  # as RolloutWorker.__init__
    pin_blas_threads(1)
    out = {}
    for E in sweep:
        c = run_config(cfg.task.name, E, cfg.runtime.chunk_size)
        w, rng = bare_worker(c, seed=c.run.seed), np.random.default_rng(0)
        rates: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
        for _ in range(repeats):
            for p in PATHS:
                rates[p].append(time_path(w, p, seconds, rng))
        w.venv.close()
        out[E] = {p: (statistics.median(x for x, _ in r), statistics.median(c for _, c in r))
                  for p, r in rates.items()}
    return out


def print_single(res: dict[int, dict[str, tuple[float, float]]]) -> None:
    print(f"{'envs':<6}{'path':<10}{'env steps/s':>13}{'steps/cpu-s':>13}{'x raw':>8}{'overhead %':>12}")
    for E, rates in res.items():
        raw = rates["raw-env"][1]
        for p, (wall, cpu) in rates.items():
            over = f"{(raw / cpu - 1) * 100:>12.1f}" if p != "raw-env" else f"{'-':>12}"
            print(f"{E:<6}{p:<10}{wall:>13.1f}{cpu:>13.1f}{cpu / raw:>8.2f}{over}")
    print()
    for E, rates in res.items():
        over = (rates["raw-env"][1] / rates["policy"][1] - 1) * 100
        print(f"# envs {E}: policy-inference overhead {over:.1f}% "
              f"({'meets' if over <= 30 else 'misses'} the <= 30% target)")


# --------------------------------------------------------------------------------------- scaling
def worker_counts(max_workers: int) -> list[int]:
    """1, 2, 4, ... below max_workers, then max_workers itself."""
    counts, n = [], 1
    while n < max_workers:
        counts.append(n)
        n *= 2
    return [*counts, max_workers]


def _measure(workers: list, shards: list, steps: int, warmup: float,
             seconds: float) -> dict[str, float]:
    """Keep one collect(steps) call per worker going (as the driver does in warmup); count the rows
    the shards acknowledged over `seconds` after `warmup`, and the time workers waited on acks."""
    import ray

    def snapshot() -> tuple[float, int, float]:
        # stats() answers while collect() runs: the workers are threaded actors (max_concurrency=2)
        stats = ray.get([w.stats.remote() for w in workers])
        rows = sum(ray.get([s.env_steps.remote() for s in shards]))
        return time.perf_counter(), rows, sum(st["blocked_seconds"]["replay"] for st in stats)

    pending = {w.collect.remote(steps): w for w in workers}
    t_start, mark = time.perf_counter(), None
    while True:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=0.05)
        for ref in done:
            w = pending.pop(ref)
            ray.get(ref)
            pending[w.collect.remote(steps)] = w
        now = time.perf_counter()
        if mark is None and now - t_start >= warmup:
            mark = snapshot()
        elif mark is not None and now - mark[0] >= seconds:
            end = snapshot()
            break
    ray.get(list(pending))
    dt = end[0] - mark[0]
    return {"rate": (end[1] - mark[1]) / dt, "replay_wait": (end[2] - mark[2]) / (len(workers) * dt)}


def run_scaling(cfg: RunConfig, max_workers: int, num_shards: int, steps: int, warmup: float,
                seconds: float) -> list[tuple[int, dict[str, float]]]:
    """Env steps/s of N Ray RolloutWorkers for N in worker_counts(max_workers)."""
    import ray

    from wsrl_dist.runtime.datapath.replay import ReplayShard
    from wsrl_dist.runtime.datapath.weights import WeightStore

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(os.cpu_count() or 1, max_workers), include_dashboard=False,
                 logging_level="WARNING", log_to_driver=False)
    actors: list = []
    try:
        task, rt = cfg.task.spec(), cfg.runtime
        obs_dim, act_dim = obs_act_dims(task)
        store = ray.remote(WeightStore).options(num_cpus=0).remote()
        actor = TanhGaussianActor(obs_dim, act_dim, cfg.net)
        weights = {k: v.detach().numpy().copy() for k, v in actor.state_dict().items()}  # = export_policy()
        ray.get(store.publish.remote(0, [ray.put(weights)]))
        capacity = -(-cfg.finetune.replay_capacity // num_shards)
        shards = [ray.remote(ReplayShard).options(num_cpus=rt.shard_cpus).remote(
            capacity, obs_dim, act_dim, cfg.run.seed + 101 * i, reward_scale=task.reward_scale,
            reward_bias=task.reward_bias, max_frame_bytes=rt.max_frame_bytes, shard_id=i)
            for i in range(num_shards)]
        # as supervisor.py makes them (max_concurrency=2); learner=None: collect() never asks it
        workers = [ray.remote(RolloutWorker).options(num_cpus=rt.worker_cpus, max_concurrency=2)
                   .remote(cfg.to_dict(), wid, shards[wid % num_shards], store, None)
                   for wid in range(max_workers)]
        actors = [store, *shards, *workers]
        ray.get([w.ping.remote() for w in workers])
        return [(n, _measure(workers[:n], shards, steps, warmup, seconds))
                for n in worker_counts(max_workers)]
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
        if started:
            ray.shutdown()


def print_scaling(res: list[tuple[int, dict[str, float]]], num_shards: int) -> None:
    base = res[0][1]["rate"] / res[0][0]
    print(f"{'workers':<9}{'shards':<8}{'env steps/s':>13}{'per worker':>12}{'% linear':>10}")
    for n, m in res:
        print(f"{n:<9}{num_shards:<8}{m['rate']:>13.1f}{m['rate'] / n:>12.1f}"
              f"{100 * m['rate'] / (n * base):>10.1f}")
    print()
    print("# time workers spent waiting on replay acks (% of worker time): "
          + ", ".join(f"{n}w {100 * m['replay_wait']:.1f}%" for n, m in res))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wsrl-dist bench rollout")
    ap.add_argument("--task", default="hopper-medium-v2")
    ap.add_argument("--envs-per-worker", type=int, default=1, help="vector envs per worker (both parts)")
    ap.add_argument("--sweep-envs", default="4,16", help="extra envs-per-worker values for `single`")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="`single`: interleaved rounds, median kept")
    ap.add_argument("--warmup", type=float, default=1.0, help="`scaling`: seconds before counting")
    ap.add_argument("--max-workers", type=int, default=max(1, (os.cpu_count() or 1) - 2))
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--collect-steps", type=int, default=2048, help="`scaling`: env steps per collect()")
    ap.add_argument("--parts", default="single,scaling")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    cfg = run_config(args.task, args.envs_per_worker, args.chunk_size)
    task = cfg.task.spec()
    obs_dim, act_dim = obs_act_dims(task)
    shown = sys.argv[1:] if argv is None else argv
    print(f"# command: wsrl-dist bench rollout {' '.join(shown)}".rstrip())
    print(host_line())
    print(f"# task {task.name} ({task.env_id}, obs {obs_dim}, act {act_dim}), actor "
          f"{cfg.net.actor_hidden} layer_norm {cfg.net.layer_norm}, chunk {args.chunk_size} rows, "
          f"config {cfg.hash()}")
    single = None
    if "single" in parts:
        sweep = [args.envs_per_worker] + [int(e) for e in args.sweep_envs.split(",") if e
                                          and int(e) != args.envs_per_worker]
        print("# single worker, no Ray, torch + BLAS threads 1; x raw, overhead % = raw-env / path - 1: "
              "per CPU second")
        single = run_single(cfg, sweep, args.seconds, args.repeats)
        print_single(single)
    if "scaling" in parts:
        print(f"# Ray RolloutWorker actors x N -> {args.shards} ReplayShard actors, envs/worker "
              f"{args.envs_per_worker}, collect({args.collect_steps}) calls; rows counted at the shards")
        res = run_scaling(cfg, args.max_workers, args.shards, args.collect_steps, args.warmup,
                          args.seconds)
        print_scaling(res, args.shards)
        if single is not None:  # what Ray (remote inserts, weight polls) costs one worker
            inproc = single[args.envs_per_worker]["worker"][0]
            print(f"# 1 Ray worker: {res[0][1]['rate']:.1f} env steps/s = "
                  f"{res[0][1]['rate'] / inproc:.2f} x the in-process worker path ({inproc:.1f}, wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
