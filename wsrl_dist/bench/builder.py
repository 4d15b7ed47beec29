"""Dataset-builder benchmark: the behaviour SAC's env steps/s and the dataset rollout's rows/s.

behaviour  one env, UTD 1 (the builder's loop: env step, insert, one update, next action) after
           `--random` uniform-random rows, eager (data/behaviour.py EagerLearner: host replay,
           op-by-op update, the baseline) vs FastLearner (device replay, one CUDA graph per step on
           a GPU; eager ops on CPU) with the update as sac_update's ops (`ops`) or as the fused
           compiled step (`fused`, the GPU default). `env` is the env step alone, the ceiling.
rollout    rows/s of the dataset rollout: one env stream in this process (builder.rollout_dataset,
           the baseline) vs `--envs` streams over `--workers` processes (parallel_rollout), with
           the time that rate gives for 1M rows. Parallel includes starting the workers.

  wsrl-dist bench builder [--task hopper-medium-v2] [--parts behaviour,rollout] [--steps 2000] [--eager-steps 300]
                          [--rows 200000] [--envs 16] [--workers auto] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from wsrl_dist.algo.agent import make_agent
from wsrl_dist.data import builder
from wsrl_dist.data.behaviour import make_learner
from wsrl_dist.data.parallel_rollout import init_actor_weights, rollout_parallel
from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.envs.make import make_env, obs_act_dims
from wsrl_dist.envs.tasks import get_task


def behaviour_rate(spec: builder.BuildSpec, path: str, steps: int, random_rows: int, warmup: int) -> float:
    """Learning env steps/s of one path ("env": the env step alone) after `random_rows` uniform rows
    and `warmup` untimed learning steps (CUDA-graph capture happens there)."""
    task, device = get_task(spec.task), torch.device(spec.device)
    obs_dim, act_dim = obs_act_dims(task)
    env, rng = make_env(task, seed=spec.seed), np.random.default_rng(spec.seed)
    torch.manual_seed(spec.seed)
    fast = path in ("ops", "fused")
    agent = make_agent(obs_dim, act_dim, spec.net_config(), spec.sac, device=device,
                       capturable=fast and device.type == "cuda")
    learner = make_learner(agent, spec.sac, RingBuffer(random_rows + warmup + steps, obs_dim, act_dim), rng,
                           builder.sac_update, fast, fused=path == "fused")
    obs, _ = env.reset()
    action, t0 = None, 0.0
    for i in range(random_rows + warmup + steps):
        if i == random_rows + warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        # the "env" path: uniform-random actions throughout, stored only before the timed steps
        obs, action = builder.behaviour_step(env, learner, rng, act_dim, obs, action,
                                             learning=i >= random_rows and path != "env",
                                             store=path != "env" or i < random_rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
    env.close()
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wsrl-dist bench builder")
    ap.add_argument("--task", default="hopper-medium-v2")
    ap.add_argument("--parts", default="behaviour,rollout")
    ap.add_argument("--device", default="auto", help="behaviour SAC device (auto: cuda if present)")
    ap.add_argument("--hidden", default="256,256")
    ap.add_argument("--steps", type=int, default=2000, help="timed behaviour env steps per path")
    ap.add_argument("--eager-steps", type=int, default=300,
                    help="timed steps of the eager baseline (~100 steps/s on a GPU: --steps 3000 there took "
                         "most of a 50 s device budget before any fast path ran)")
    ap.add_argument("--random", type=int, default=1000, help="uniform-random rows before learning")
    ap.add_argument("--warmup", type=int, default=50, help="untimed learning steps per path")
    ap.add_argument("--rows", type=int, default=200_000, help="parallel rollout rows")
    ap.add_argument("--serial-rows", type=int, default=20_000, help="single-stream baseline rows")
    ap.add_argument("--envs", type=int, default=16, help="rollout env streams (BuildSpec.rollout_envs)")
    ap.add_argument("--workers", default="auto", help="rollout worker processes (auto: one per core up to --envs)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the builder's tiny matmuls)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = [p for p in args.parts.split(",") if p]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    hidden = [int(h) for h in args.hidden.split(",")]
    spec = builder.BuildSpec(task=args.task, hidden=hidden, device=device).resolved()
    print(f"# command: wsrl-dist bench builder {' '.join(argv if argv is not None else sys.argv[1:])}")
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    print(f"# host: {os.cpu_count()} cores visible, torch {torch.__version__}, device {device}{gpu}; "
          f"task {args.task}, nets {hidden}, batch {spec.sac.batch_size}, UTD 1")
    if "behaviour" in parts:
        # each row printed as soon as its path is timed (a time limit then keeps what was measured);
        # a path that fails prints why and the others still run
        print(f"{'part':<10}{'path':<8}{'steps/s':>10}{'ms/step':>10}{'x eager':>9}", flush=True)
        eager = float("nan")
        for p in ("eager", "env", "ops", "fused"):  # the baseline first: every row prints its ratio
            try:
                r = behaviour_rate(spec, p, args.eager_steps if p == "eager" else args.steps, args.random, args.warmup)
            except Exception as e:
                print(f"{'behaviour':<10}{p:<8} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            eager = r if p == "eager" else eager
            print(f"{'behaviour':<10}{p:<8}{r:>10.1f}{1e3 / r:>10.3f}{r / eager:>9.2f}", flush=True)
    if "rollout" in parts:
        task = get_task(args.task)
        w = init_actor_weights(task, spec.net_config(), seed=1)
        policy = builder.policy_from_weights(task, spec.net_config(), w, seed=1)
        t0 = time.perf_counter()
        builder.rollout_dataset(policy, task, args.serial_rows, seed=1)
        serial = args.serial_rows / (time.perf_counter() - t0)
        workers = None if args.workers == "auto" else int(args.workers)
        t0 = time.perf_counter()
        rollout_parallel(w, spec.net_config(), task, args.rows, seed=1, num_envs=args.envs, workers=workers)
        par = args.rows / (time.perf_counter() - t0)
        if workers != 1:  # what starting the processes costs: one row per stream, same workers
            n_workers = min(args.envs, os.cpu_count() or 1) if workers is None else workers
            t0 = time.perf_counter()
            rollout_parallel(w, spec.net_config(), task, args.envs, seed=1, num_envs=args.envs, workers=n_workers)
            print(f"# {n_workers} worker processes: {time.perf_counter() - t0:.1f} s to start and write "
                  f"one row per stream (included in the parallel row below)")
        print(f"{'part':<10}{'path':<22}{'rows':>9}{'rows/s':>10}{'x serial':>9}{'s per 1M':>10}")
        label = f"{args.envs}envs/{args.workers}w"
        for name, rows, r in (("serial", args.serial_rows, serial), (label, args.rows, par)):
            print(f"{'rollout':<10}{name:<22}{rows:>9}{r:>10.1f}{r / serial:>9.2f}{1e6 / r:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
