"""Weight-publishing benchmark: what publishing weight versions costs the learner's training loop.

A stand-in loop holds the GIL for `--work-ms` per iteration (the learner's host side: sampling,
launching, bookkeeping) and publishes the actor's exported arrays (`--task` sizes) every
`--every` iterations to a real WeightStore actor, three ways, measured in the same run:
  none     no publishing (the baseline)
  inline   ray.put + store call on the loop's thread (the learner before weights.WeightPublisher)
  thread   weights.WeightPublisher: the put and the store call on their own thread
and prints iterations/s, x none, and the loop time each publish costs.

  wsrl-dist bench publish [--task hopper-medium-v2] [--work-ms 1.0] [--every 8] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import ray
import torch

from wsrl_dist.algo.nets import NetConfig, TanhGaussianActor
from wsrl_dist.envs.make import obs_act_dims
from wsrl_dist.envs.tasks import get_task
from wsrl_dist.runtime.datapath.weights import WeightPublisher, WeightStore


def _busy(seconds: float, x: np.ndarray) -> None:
    """Hold the GIL for `seconds` with small numpy ops, like a Python loop launching work."""
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        x @ x


def run_mode(mode: str, weights: dict, store, seconds: float, work_s: float, every: int) -> float:
    """Loop iterations per second publishing `weights` every `every` iterations in `mode`."""
    x = np.ones((64, 64), np.float32)
    pub = WeightPublisher(store) if mode == "thread" else None
    acks: list = []
    n, version, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _busy(work_s, x)
        n += 1
        if n % every == 0:
            version += 1
            if mode == "inline":
                acks.append(store.publish.remote(version, [ray.put(weights)], n))
                if len(acks) > 8:
                    acks = ray.wait(acks, num_returns=len(acks), timeout=0)[1]
            elif mode == "thread":
                pub.submit(weights, version, n)
    rate = n / (time.perf_counter() - t0)
    if pub is not None:
        pub.flush(wait_store=True)
        pub.close()
    ray.get(acks)
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wsrl-dist bench publish")
    ap.add_argument("--task", default="hopper-medium-v2")
    ap.add_argument("--hidden", default="256,256", help="actor hidden sizes")
    ap.add_argument("--work-ms", type=float, default=1.0, help="GIL-holding loop work per iteration")
    ap.add_argument("--every", type=int, default=8, help="iterations per published version (runtime.publish_every)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per mode and repeat")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    obs_dim, act_dim = obs_act_dims(get_task(args.task))
    hidden = [int(h) for h in args.hidden.split(",")]
    actor = TanhGaussianActor(obs_dim, act_dim, NetConfig(actor_hidden=hidden, critic_hidden=hidden))
    weights = {k: v.detach().numpy().copy() for k, v in actor.state_dict().items()}
    floats = sum(v.size for v in weights.values())
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    sys.setswitchinterval(0.001)  # as the learner sets it (runtime/datapath/learner.py)
    try:
        store = ray.remote(WeightStore).options(num_cpus=0).remote()
        ray.get(store.get_version.remote())
        print(f"# command: wsrl-dist bench publish {' '.join(argv if argv is not None else sys.argv[1:])}")
        print(f"# host: {os.cpu_count()} cores visible, torch {torch.__version__}, ray {ray.__version__}")
        print(f"# actor {args.task} ({obs_dim} -> {hidden} -> {act_dim}): {len(weights)} arrays, "
              f"{floats} floats; a version every {args.every} iterations of {args.work_ms} ms GIL-held work")
        rates: dict[str, list[float]] = {m: [] for m in ("none", "inline", "thread")}
        for _ in range(args.repeats):
            for mode in rates:
                rates[mode].append(run_mode(mode, weights, store, args.seconds, args.work_ms / 1e3, args.every))
        base = float(np.mean(rates["none"]))
        print(f"{'mode':<8}{'iter/s':>10}{'x none':>9}{'ms of loop per version':>25}")
        for mode, rs in rates.items():
            r = float(np.mean(rs))
            cost = (1 / r - 1 / base) * args.every * 1e3
            print(f"{mode:<8}{r:>10.1f}{r / base:>9.3f}{cost:>25.3f}")
    finally:
        if started:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
