"""Grant benchmark: the same real job (driver.launch: learner, shards, rollout workers on Ray) run with
rollout workers that wait in the learner for env-step grants (runtime.grant_wait_s > 0,
learner.wait_for_env_steps) and with workers that poll it (grant_wait_s = 0, the baseline), in turns,
in one run. Prints per mode: online env steps/s, critic updates/s, the learner loop's ms per bundle
and its split, grant calls/s and the refused share, the learner process's CPU cores, and x polling.

  wsrl-dist bench grants [CONFIG.yaml ...] [key=value ...] [--waits 0.1,0] [--repeats 2]

With no config the job is a small CPU one that fits a 2-core box (InvertedPendulum, 32x32 nets,
2 workers); on the device machine pass configs/runtime/cluster.yaml and the task's overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import ray
import torch

from wsrl_dist.config import load

SMALL_JOB = [
    "task.name=inverted-pendulum-v5", "finetune.method=sac_scratch", "pretrain.algo=none",
    "net.actor_hidden=[32,32]", "net.critic_hidden=[32,32]", "sac.critic_ensemble_size=4",
    "sac.batch_size=32", "finetune.replay_capacity=20000", "finetune.warmup_steps=500",
    "finetune.online_steps=4000", "finetune.eval_every=1000000", "finetune.eval_episodes=1",
    "runtime.num_workers=2", "runtime.worker_cpus=0.5", "runtime.chunk_size=16", "run.device=cpu",
]
SPLIT = ("limiter_wait", "sample_wait", "assemble_to_device", "update_launch", "publish")


def run_job(configs: list[str], overrides: list[str], wait_s: float, run_dir: Path) -> dict:
    """One job; the numbers of its online stage from run.json."""
    from wsrl_dist.runtime import driver

    cfg = load(configs, overrides=[*overrides, f"runtime.grant_wait_s={wait_s}", f"run.run_dir={run_dir}",
                                   "run.progress=false", "runtime.metrics_port=0"])
    info = json.loads((driver.launch(cfg, "bench grants") / "run.json").read_text())
    online, proc = info["stages"]["online"], info["learner_process"]
    wall, bundles = online["wall_s"], max(1, online["bundles"])
    online_steps = info["env_steps"] - info["stages"]["warmup"]["env_steps"]
    split = info["learner_time_split_s"]
    return {
        "env_steps_per_s": online_steps / wall,
        "updates_per_s": (info["critic_updates"] - info["stages"]["warmup"]["critic_updates"]) / wall,
        "ms_per_bundle": sum(split[k] for k in SPLIT) / bundles * 1e3,
        **{f"ms_{k}": split[k] / bundles * 1e3 for k in SPLIT},
        **{f"ms_feed_{k}": v / bundles * 1e3 for k, v in info.get("learner_feed_split_s", {}).items()},
        "grant_calls_per_s": proc["grant_calls"] / wall,
        "refused_share": proc["grant_refusals"] / max(1, proc["grant_calls"]),
        "learner_cores": proc["cpu_seconds"] / wall,  # from learner start: warmup's share is small
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wsrl-dist bench grants")
    ap.add_argument("args", nargs="*", help="config YAML files and key=value overrides")
    ap.add_argument("--waits", default="0.1,0", help="runtime.grant_wait_s values; 0 = polling (baseline)")
    ap.add_argument("--repeats", type=int, default=2, help="jobs per mode, modes in turns")
    args = ap.parse_args(argv)
    configs = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if not configs:
        overrides = [*SMALL_JOB, *overrides]
    waits = [float(w) for w in args.waits.split(",")]
    if 0.0 not in waits:
        raise SystemExit("--waits must include 0 (polling): it is the baseline of the ratios")
    runtime_cfg = load(configs, overrides=overrides).runtime
    started = not ray.is_initialized()
    if started:
        # as driver._connect sizes a local Ray: every worker gets scheduled on a small box
        need = 1 + runtime_cfg.num_workers * runtime_cfg.worker_cpus + runtime_cfg.num_shards * runtime_cfg.shard_cpus
        ray.init(num_cpus=max(os.cpu_count() or 1, int(np.ceil(need))), include_dashboard=False,
                 logging_level="WARNING", log_to_driver=False, namespace="wsrl_dist")
    print(f"# command: wsrl-dist bench grants {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"# host: {os.cpu_count()} cores visible, torch {torch.__version__}, ray {ray.__version__}")
    print(f"# job: {' '.join(configs) or 'small CPU job'} {' '.join(overrides)}")
    rows: dict[float, list[dict]] = {w: [] for w in waits}
    try:
        with tempfile.TemporaryDirectory(prefix="wsrl-bench-grants-") as tmp:
            for rep in range(args.repeats):
                for w in waits:
                    r = run_job(configs, overrides, w, Path(tmp) / f"wait{w}-{rep}")
                    rows[w].append(r)
                    print(f"# measured wait {w:g} s, repeat {rep}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in r.items()), flush=True)
    finally:
        if started:
            ray.shutdown()
    base = {k: float(np.mean([r[k] for r in rows[0.0]])) for k in rows[0.0][0]}
    head = ("grant wait", "env steps/s", "x poll", "updates/s", "ms/bundle", "assemble", "launch", "publish",
            "grant calls/s", "refused", "learner cores")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for w, rs in rows.items():
        m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
        name = "poll (baseline)" if w == 0 else f"wait {w:g} s"
        print(f"| {name} | {m['env_steps_per_s']:,.1f} | {m['env_steps_per_s'] / base['env_steps_per_s']:.3f} "
              f"| {m['updates_per_s']:,.1f} | {m['ms_per_bundle']:.3f} | {m['ms_assemble_to_device']:.3f} "
              f"| {m['ms_update_launch']:.3f} | {m['ms_publish']:.3f} | {m['grant_calls_per_s']:,.1f} "
              f"| {m['refused_share']:.1%} | {m['learner_cores']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
