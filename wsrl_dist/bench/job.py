"""Job benchmark: the same real job (driver.launch: learner, shards, rollout workers on Ray) run under
several override sets ("variants"), in turns, in one run; the first variant is the baseline of the
ratios. Prints per variant: online env steps/s and critic updates/s (summed over the seeds of a
`run.seeds` variant), the learner loop's ms per step (one bundle of every seed) and its split, grant calls/s and the refused share, the learner process's CPU cores, and x the baseline.

  wsrl-dist bench job [CONFIG.yaml ...] [key=value ...] [--variants 'A; B; ...'] [--repeats 2]

A variant is space-separated key=value overrides on top of the job's. The default compares rollout
workers that poll the learner for env-step grants (runtime.grant_wait_s=0, the baseline) with workers
that wait in it (0.1 s); e.g. --variants 'runtime.replay_groups=false; runtime.replay_groups=true'
compares bundle groups, and --variants 'run.seeds=[0]; run.seeds=[0,1,2,3] runtime.num_workers=3'
one seed against four in one learner (a study cell). With no config the job is a small CPU one that fits a 2-core box
(InvertedPendulum, 32x32 nets, 2 workers); on the device machine pass configs/runtime/cluster.yaml
and the task's overrides.
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


def run_job(configs: list[str], overrides: list[str], run_dir: Path) -> dict:
    """One job; the numbers of its online stage from run.json."""
    from wsrl_dist.runtime.orchestration import driver

    cfg = load(configs, overrides=[*overrides, f"run.run_dir={run_dir}", "run.progress=false",
                                   "runtime.metrics_port=0"])
    top = driver.launch(cfg, "bench job")
    # several run.seeds: one learner, a seed-<s>/ run dir per seed; the learner's split and process
    # counters are the shared step's (every seed's run.json has the same), env steps and updates add up
    seeds = json.loads((top / "run.json").read_text()).get("seeds") or []
    infos = [json.loads((top / f"seed-{s}" / "run.json").read_text()) for s in seeds] if len(seeds) > 1 \
        else [json.loads((top / "run.json").read_text())]
    info = infos[0]
    online, proc = info["stages"]["online"], info["learner_process"]
    wall, bundles = online["wall_s"], max(1, online["bundles"])
    online_steps = sum(i["env_steps"] - i["stages"]["warmup"]["env_steps"] for i in infos)
    updates = sum(i["critic_updates"] - i["stages"]["warmup"]["critic_updates"] for i in infos)
    split = info["learner_time_split_s"]
    return {
        "seeds": len(infos),
        "env_steps_per_s": online_steps / wall,  # all seeds together
        "updates_per_s": updates / wall,
        "ms_per_bundle": sum(split[k] for k in SPLIT) / bundles * 1e3,
        **{f"ms_{k}": split[k] / bundles * 1e3 for k in SPLIT},
        **{f"ms_feed_{k}": v / bundles * 1e3 for k, v in info.get("learner_feed_split_s", {}).items()},
        "bundle_groups": online.get("bundle_groups", 0),
        "grant_calls_per_s": proc["grant_calls"] / wall,
        "refused_share": proc["grant_refusals"] / max(1, proc["grant_calls"]),
        "learner_cores": proc["cpu_seconds"] / wall,  # from learner start: warmup's share is small
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wsrl-dist bench job")
    ap.add_argument("args", nargs="*", help="config YAML files and key=value overrides")
    ap.add_argument("--variants", default="runtime.grant_wait_s=0; runtime.grant_wait_s=0.1",
                    help="';'-separated override sets (space-separated key=value); the first is the baseline")
    ap.add_argument("--repeats", type=int, default=2, help="jobs per variant, variants in turns")
    args = ap.parse_args(argv)
    configs = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if not configs:
        overrides = [*SMALL_JOB, *overrides]
    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    if len(variants) < 2:
        raise SystemExit("--variants needs at least two override sets: a baseline and one to compare")
    for v in variants:  # a bad key fails here, before any job runs
        load(configs, overrides=[*overrides, *v.split()])
    started = not ray.is_initialized()
    if started:
        # as driver._connect sizes a local Ray: every worker gets scheduled on a small box
        need = 1.0
        for v in variants:  # the largest variant: its seeds x (workers + shards)
            c = load(configs, overrides=[*overrides, *v.split()])
            rt = c.runtime
            need = max(need, 1 + (len(c.run.seeds) or 1) * (rt.num_workers * rt.worker_cpus
                                                             + rt.num_shards * rt.shard_cpus))
        ray.init(num_cpus=max(os.cpu_count() or 1, int(np.ceil(need))), include_dashboard=False,
                 logging_level="WARNING", log_to_driver=False, namespace="wsrl_dist")
    print(f"# command: wsrl-dist bench job {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"# host: {os.cpu_count()} cores visible, torch {torch.__version__}, ray {ray.__version__}")
    print(f"# job: {' '.join(configs) or 'small CPU job'} {' '.join(overrides)}")
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        with tempfile.TemporaryDirectory(prefix="wsrl-bench-job-") as tmp:
            for rep in range(args.repeats):
                for i, v in enumerate(variants):
                    r = run_job(configs, [*overrides, *v.split()], Path(tmp) / f"v{i}-{rep}")
                    rows[v].append(r)
                    print(f"# measured [{v}] repeat {rep}: " + ", ".join(f"{k} {x:.4g}" for k, x in r.items()),
                          flush=True)
    finally:
        if started:
            ray.shutdown()
    mean = {v: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for v, rs in rows.items()}
    base = mean[variants[0]]
    head = ("variant", "seeds", "env steps/s", "x base", "updates/s", "ms/step", "assemble", "launch", "publish",
            "grant calls/s", "refused", "learner cores")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for v, m in mean.items():
        name = f"{v} (baseline)" if v == variants[0] else v
        print(f"| {name} | {m['seeds']:.0f} | {m['env_steps_per_s']:,.1f} | {m['env_steps_per_s'] / base['env_steps_per_s']:.3f} "
              f"| {m['updates_per_s']:,.1f} | {m['ms_per_bundle']:.3f} | {m['ms_assemble_to_device']:.3f} "
              f"| {m['ms_update_launch']:.3f} | {m['ms_publish']:.3f} | {m['grant_calls_per_s']:,.1f} "
              f"| {m['refused_share']:.1%} | {m['learner_cores']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
