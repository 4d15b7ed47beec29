"""Replay benchmark: transitions/s into and out of the replay stage of the data path (wire frames ->
ReplayShard -> learner batches), against the raw RingBuffer measured in the same run.

Part `local` (no Ray): `ring` = `RingBuffer.insert/sample` on ready numpy columns (the baseline: no wire
decoding); `shard` = `ReplayShard.insert(frame)` (msgpack decode + checks + reward scale + ring insert)
and `ReplayShard.sample`. Part `ray`: S ReplayShard actors, each fed by `--feeders-per-shard` feeder
actors pumping pre-encoded frames (`--window` inserts in flight each, as a rollout worker's
max_inflight_chunks); batches sampled learner-style: batch/S rows from each shard in parallel,
gathered and concatenated, one batch in flight (`ray-serial`) or `--window` (`ray-window`: prefetch).

  wsrl-dist bench replay [--task hopper-medium-v2] [--chunks 64,256,1024] [--batch 1024]
                         [--shards 1,2,4] [--capacity 1000000] [--seconds 2] [--window 4]
                         [--feeders-per-shard 1] [--parts local,ray]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from wsrl_dist.data.ring import RingBuffer
from wsrl_dist.envs.make import obs_act_dims
from wsrl_dist.envs.tasks import TaskSpec, get_task
from wsrl_dist.runtime.datapath.replay import ReplayShard
from wsrl_dist.runtime.datapath.wire import encode_chunk

N_FRAMES = 8  # distinct pre-encoded chunks cycled through per chunk size
_EXTRA = {"policy_versions": ((), np.int64)}


def make_columns(n: int, obs_dim: int, act_dim: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible transition columns [n, ...] (1% terminals, 0.1% timeouts) + policy_versions [n]."""
    term = (rng.random(n) < 0.01).astype(np.float32)
    return {
        "observations": rng.standard_normal((n, obs_dim), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(n, dtype=np.float32),
        "next_observations": rng.standard_normal((n, obs_dim), dtype=np.float32),
        "terminals": term,
        "timeouts": ((rng.random(n) < 0.001) & (term == 0)).astype(np.float32),
        "policy_versions": np.full(n, 3, dtype=np.int64),
    }


def encode(cols: dict[str, np.ndarray], seq: int) -> bytes:
    return encode_chunk({k: v for k, v in cols.items() if k != "policy_versions"}, worker_id=0,
                        seq=seq, policy_versions=cols["policy_versions"])


def timed_calls(fn: Callable[[int], int], seconds: float) -> tuple[float, float, np.ndarray]:
    """Call fn(i) -> rows for `seconds` of wall time (after 5 warm-up calls): (rows per wall second,
    rows per CPU second of this process, per-call wall seconds)."""
    for i in range(5):
        fn(i)
    lat, rows, i, t0, c0 = [], 0, 0, time.perf_counter(), time.process_time()
    while (t := time.perf_counter()) - t0 < seconds:
        rows += fn(i)
        lat.append(time.perf_counter() - t)
        i += 1
    return rows / (time.perf_counter() - t0), rows / (time.process_time() - c0), np.asarray(lat)


# op, path, S, rows per call, rows/s (wall), rows/cpu-s (None: multi-process), x ring, latencies
Row = tuple[str, str, int, int, float, float | None, float, np.ndarray | None]


def run_local(task: TaskSpec, chunks: list[int], batch: int, capacity: int,
              seconds: float) -> list[Row]:
    obs_dim, act_dim = obs_act_dims(task)
    rng = np.random.default_rng(0)
    out: list[Row] = []
    ring = RingBuffer(capacity, obs_dim, act_dim, extra_fields=_EXTRA)
    shard = ReplayShard(capacity, obs_dim, act_dim, seed=0, reward_scale=task.reward_scale,
                        reward_bias=task.reward_bias)
    for c in chunks:
        cols = [make_columns(c, obs_dim, act_dim, rng) for _ in range(N_FRAMES)]
        frames = [encode(x, i) for i, x in enumerate(cols)]
        wall, base, lat = timed_calls(lambda i, cols=cols: ring.insert(cols[i % N_FRAMES]), seconds)
        out.append(("insert", "ring", 1, c, wall, base, 1.0, lat))
        wall, cpu, lat = timed_calls(lambda i, frames=frames: shard.insert(frames[i % N_FRAMES]),
                                     seconds)
        out.append(("insert", "shard", 1, c, wall, cpu, cpu / base, lat))
    fill = [make_columns(1024, obs_dim, act_dim, rng) for _ in range(N_FRAMES)]
    for i in range(-(-capacity // 1024)):  # sample full buffers: gathers miss the cache as in a run
        ring.insert(fill[i % N_FRAMES])
        shard.insert(encode(fill[i % N_FRAMES], i))
    sample_rng = np.random.default_rng(1)
    wall, base, lat = timed_calls(lambda i: len(ring.sample(batch, sample_rng)["rewards"]), seconds)
    out.append(("sample", "ring", 1, batch, wall, base, 1.0, lat))
    wall, cpu, lat = timed_calls(lambda i: len(shard.sample(batch)["rewards"]), seconds)
    out.append(("sample", "shard", 1, batch, wall, cpu, cpu / base, lat))
    return out


class Feeder:
    """Load generator standing in for rollout workers: pumps ready frames into one shard actor."""

    def __init__(self, frames: dict[int, list[bytes]]):
        self.frames = frames  # rows per frame -> frames

    def pump(self, shard, chunk: int, seconds: float, window: int,
             max_rows: int | None = None) -> tuple[int, float]:
        """Insert `chunk`-row frames for `seconds` (or until `max_rows` are acknowledged) with
        `window` calls in flight; returns (rows acknowledged, elapsed seconds)."""
        import ray

        frames, inflight = self.frames[chunk], []
        rows, i, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds and (max_rows is None or rows < max_rows):
            while len(inflight) < window:
                inflight.append(shard.insert.remote(frames[i % len(frames)]))
                i += 1
            done, inflight = ray.wait(inflight, num_returns=1)
            rows += sum(ray.get(done))
        rows += sum(ray.get(inflight))
        return rows, time.perf_counter() - t0


def _pump(feeders: list, shards: list, chunk: int, seconds: float, window: int,
          max_rows: int | None = None) -> float:
    """Aggregate rows/s of all feeders pumping at once, feeder i into shard i % S."""
    import ray

    got = ray.get([f.pump.remote(shards[i % len(shards)], chunk, seconds, window, max_rows)
                   for i, f in enumerate(feeders)])
    return sum(r for r, _ in got) / max(t for _, t in got)


def parallel_sample(shards: list, batch: int, seconds: float, window: int) -> tuple[float, np.ndarray]:
    """Learner-style batches: batch/S rows from each shard at once, gathered and concatenated, with
    `window` batches in flight. Returns (rows/s, per-batch latency seconds)."""
    import ray

    per = [batch // len(shards) + (i < batch % len(shards)) for i in range(len(shards))]

    def request() -> tuple[float, list]:
        return time.perf_counter(), [s.sample.remote(k) for s, k in zip(shards, per, strict=True)]

    def finish(refs: list) -> int:
        parts = ray.get(refs)
        return len(np.concatenate([p["rewards"] for p in parts]))

    for _ in range(3):
        finish(request()[1])
    inflight = [request() for _ in range(window)]
    lat, rows, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t, refs = inflight.pop(0)
        rows += finish(refs)
        lat.append(time.perf_counter() - t)
        inflight.append(request())
    for _, refs in inflight:
        ray.get(refs)
    return rows / (time.perf_counter() - t0), np.asarray(lat)


def run_ray(task: TaskSpec, shard_counts: list[int], chunks: list[int], batch: int, capacity: int,
            seconds: float, window: int, feeders_per_shard: int,
            base: dict[tuple[str, int], float]) -> list[Row]:
    import ray

    obs_dim, act_dim = obs_act_dims(task)
    rng = np.random.default_rng(2)
    frames = {c: [encode(make_columns(c, obs_dim, act_dim, rng), i) for i in range(N_FRAMES)]
              for c in sorted({*chunks, 1024})}
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    out: list[Row] = []
    try:
        for S in shard_counts:
            cap = -(-capacity // S)
            shards = [ray.remote(ReplayShard).options(num_cpus=0).remote(
                cap, obs_dim, act_dim, seed=i, reward_scale=task.reward_scale,
                reward_bias=task.reward_bias, shard_id=i) for i in range(S)]
            feeders = [ray.remote(Feeder).options(num_cpus=0).remote(frames)
                       for _ in range(S * feeders_per_shard)]
            try:
                for c in chunks:
                    rate = _pump(feeders, shards, c, seconds, window)
                    x = rate / base["insert", c]
                    out.append(("insert", "ray-feeders", S, c, rate, None, x, None))
                _pump(feeders[:S], shards, 1024, 1e9, window, max_rows=cap)  # fill before sampling
                for name, w in (("ray-serial", 1), ("ray-window", window)):
                    rate, lat = parallel_sample(shards, batch, seconds, w)
                    x = rate / base["sample", batch]
                    out.append(("sample", name, S, batch, rate, None, x, lat))
            finally:
                for a in [*shards, *feeders]:
                    ray.kill(a, no_restart=True)
    finally:
        if started:
            ray.shutdown()
    return out


def print_rows(rows: list[Row]) -> None:
    print(f"{'op':<8}{'path':<13}{'S':>3}{'rows/call':>11}{'transitions/s':>15}{'per cpu-s':>12}"
          f"{'x ring':>8}{'p50 us':>10}{'p99 us':>10}")
    for op, path, S, n, wall, cpu, x, lat in rows:
        q = (f"{np.percentile(lat, 50) * 1e6:>10.1f}{np.percentile(lat, 99) * 1e6:>10.1f}"
             if lat is not None and len(lat) else f"{'-':>10}{'-':>10}")
        c = f"{cpu:>12.0f}" if cpu is not None else f"{'-':>12}"
        # x ring to 3 significant digits: a slow path on a loaded machine (a few hundred rows/s
        # against millions) is a small positive ratio, never a printed 0.00
        print(f"{op:<8}{path:<13}{S:>3}{n:>11}{wall:>15.0f}{c}{x:>8.3g}{q}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wsrl-dist bench replay")
    ap.add_argument("--task", default="hopper-medium-v2")
    ap.add_argument("--chunks", default="64,256,1024", help="rows per inserted frame")
    ap.add_argument("--batch", type=int, default=1024, help="rows per sampled batch (utd x batch_size)")
    ap.add_argument("--shards", default="1,2,4", help="`ray`: shard counts S")
    ap.add_argument("--capacity", type=int, default=1_000_000, help="rows in all shards together")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row")
    ap.add_argument("--window", type=int, default=4, help="`ray`: calls in flight per feeder / sampler")
    ap.add_argument("--feeders-per-shard", type=int, default=1, help="`ray`: insert load generators")
    ap.add_argument("--parts", default="local,ray", help="`local` (always run: the baseline), `ray`")
    args = ap.parse_args(argv)
    # imported here: feeder actors import this module and need neither torch nor the rollout code
    from wsrl_dist.bench.rollout import host_line

    parts = set(args.parts.split(","))
    task = get_task(args.task)
    chunks = [int(c) for c in args.chunks.split(",")]
    obs_dim, act_dim = obs_act_dims(task)
    shown = sys.argv[1:] if argv is None else argv
    print(f"# command: wsrl-dist bench replay {' '.join(shown)}".rstrip())
    print(host_line())
    print(f"# task {task.name} (obs {obs_dim}, act {act_dim}; "
          f"{len(encode(make_columns(1, obs_dim, act_dim, np.random.default_rng(0)), 0))} B frame "
          f"for 1 row), capacity {args.capacity} rows in all shards, sampled from full shards")
    print("# transitions/s per wall second; per cpu-s: per CPU second of this process (one core's "
          "worth, robust to a shared machine; '-' for multi-process rows)")
    print("# x ring: rate (cpu-s; wall for ray rows) / RingBuffer rate per cpu-s (no wire) at the same "
          "rows per call; p50/p99: wall time per call (sample: per batch, incl. gather + concat for ray)")
    rows = run_local(task, chunks, args.batch, args.capacity, args.seconds)  # always: the baseline
    base = {(op, n): cpu for op, path, _, n, _, cpu, _, _ in rows if path == "ring"}
    print_rows(rows)
    if "ray" in parts:
        shard_counts = [int(s) for s in args.shards.split(",")]
        print_rows(run_ray(task, shard_counts, chunks, args.batch, args.capacity, args.seconds,
                           args.window, args.feeders_per_shard, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
