"""Learner benchmark: critic updates/s of our update bundle against baselines measured in the same run.

Variants (same math, `algo.update.sac_bundle`): `naive-eager` swaps the stacked ensemble for a python
loop over E separate critics (the baseline); `stacked-eager`, `stacked-compile` (torch.compile),
`stacked-graph` (whole bundle in one CUDA graph), `stacked-compile-graph` (compiled, then captured),
and `fused-*` (algo/fused.py: flat buffers, batched actor versions; eager / compiled / captured).
`--seeds 1,2,4,8` adds multi-seed rows (aggregate bundles/s over S seeds in one process).
`--profile N` then profiles N calls of every row and prints the time per call by category (GEMMs,
Inductor's fused Triton kernels, copies, other) and the costliest kernels (ops on CPU): bench/kernel_profile.py.
`--pretrain cql,calql,iql` adds offline pre-training rows (one step = 1 critic update on 256 rows,
algo.fast.make_offline_step_fn), each with its ratio to the same algorithm's eager row of this run:
`pretrain-<algo>-eager` (update.offline_step), `-eager-graph` (it, captured in one CUDA graph; GPU),
`-fused` (algo/fused_offline.py) and `-fused-compile-graph` (compiled + one CUDA graph, the GPU
default; GPU). IQL has no fused step: its rows are eager and eager-graph only. With `--seeds` too,
`-fused*-S<n>` rows time n seeds' steps as ONE call (what a study's pre-training of a task runs,
local.pretrain_seeds): seed-steps/s of the n seeds together, against the one-seed eager row.
`--precision fp32|tf32|bf16` sets the matmuls (`--tf32` = `--precision tf32`); bf16 exists in the
fused variants and fused `--seed-modes` only (bf16 GEMM inputs, fp32 sums and state; algo/fused.py).
With `--anchor PATH` the reference anchor (../shared/anchors/learner_bench.py: PyTorch variants and a
JAX jit of the same update) runs in the same process tree and its rows join the table with ratios.

  wsrl-dist bench learner [--sizes locomotion,antmaze,adroit,kitchen] [--seconds 3] [--anchor PATH]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import torch
import torch.nn as nn

from wsrl_dist.algo.agent import make_agent
from wsrl_dist.algo.fast import make_bundle_fn
from wsrl_dist.algo.nets import EnsembleCritic, NetConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch
from wsrl_dist.bench.kernel_profile import _sync, kernel_category, print_profile, profile_calls  # noqa: F401 (kernel_category: re-exported)
from wsrl_dist.bench.row_sets import SAMPLED_ROWS, inductor_sets, job_batches

# (obs_dim, act_dim, actor hidden, critic hidden, max_target_backup): the reference's family sizes
SIZES = {
    "locomotion": (17, 6, [256, 256], [256, 256], False),
    "antmaze": (29, 8, [256, 256], [256, 256, 256, 256], True),
    "adroit": (39, 28, [512, 512], [512, 512, 512], False),
    "kitchen": (60, 9, [512, 512, 512], [512, 512, 512], False),
    "tiny": (5, 2, [32, 32], [32, 32], False),  # not a task: the CPU smoke tests' size
}


VARIANT_MODES = {"naive-eager": "eager", "stacked-eager": "eager", "stacked-compile": "compile",
                 "stacked-graph": "cuda_graph", "stacked-compile-graph": "compile_graph",
                 "fused-eager": "fused", "fused-compile": "fused_compile", "fused-graph": "fused_graph",
                 "fused-compile-graph": "fused_compile_graph"}


SETUP_S: dict[tuple[str, str], float] = {}  # build + compile + capture + 3 warm-up bundles
PROFILE_CALLS = 0  # --profile N: after timing, profile N calls of each row and print where time goes


class LoopEnsemble(nn.Module):
    """Baseline: E independent critics evaluated one after another (what stacking replaces)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], ensemble: int, layer_norm: bool):
        super().__init__()
        self.members = nn.ModuleList(
            EnsembleCritic(obs_dim, act_dim, hidden, 1, layer_norm) for _ in range(ensemble)
        )
        for m in self.members[1:]:  # one Q head shared by all members, as the stacked critic's
            m.head_weight, m.head_bias = self.members[0].head_weight, self.members[0].head_bias

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, members: torch.Tensor | None = None
                ) -> torch.Tensor:
        q = torch.cat([m(obs, actions) for m in self.members], 0)
        return q if members is None else q.index_select(0, members)


def _agent(size: str, variant: str, device: torch.device, sac: SACConfig):
    obs, act, actor_h, critic_h, mtb = SIZES[size]
    net = NetConfig(actor_hidden=actor_h, critic_hidden=critic_h)
    sac = SACConfig(**{**sac.__dict__, "max_target_backup": mtb})
    agent = make_agent(obs, act, net, sac, device=device, capturable=variant.endswith("graph") and device.type == "cuda")
    if variant.startswith("naive"):
        agent.critic = LoopEnsemble(obs, act, critic_h, sac.critic_ensemble_size, True).to(device)
        agent.target_critic = LoopEnsemble(obs, act, critic_h, sac.critic_ensemble_size, True).to(device)
        agent.target_critic.load_state_dict(agent.critic.state_dict())
        agent.critic_opt = torch.optim.Adam(agent.critic.parameters(), sac.critic_lr, foreach=True)
        for p in agent.critic.parameters():
            p.grad = torch.zeros_like(p)
    return agent, sac


def _batch(size: str, n: int, device: torch.device) -> Batch:
    obs, act = SIZES[size][:2]
    g = torch.Generator(device=device).manual_seed(1)
    return Batch(torch.randn(n, obs, device=device, generator=g),
                 torch.rand(n, act, device=device, generator=g) * 2 - 1,
                 torch.randn(n, device=device, generator=g),
                 torch.randn(n, obs, device=device, generator=g),
                 (torch.rand(n, device=device, generator=g) > 0.01).float())


def _fresh_compile() -> None:
    """Forget Dynamo's compiled code before a row. Every row builds the same bundle function (one
    code object), so without this a row could reuse an earlier row's compiled code when its guards
    pass, silently ignoring an --inductor patch, or, after 8 recompiles, run uncompiled. Inductor's
    on-disk cache is keyed by its config, so a reset row with the same config still loads fast."""
    torch._dynamo.reset()


def time_variant(size: str, variant: str, device: torch.device, sac: SACConfig, seconds: float,
                 matmul_dtype: torch.dtype = torch.float32, key: str | None = None,
                 inductor: dict | None = None) -> float:
    """Bundles per second, measured after warm-up for about `seconds`."""
    agent, sac = _agent(size, variant, device, sac)
    batch = _batch(size, sac.utd * sac.batch_size, device)
    t_setup = time.perf_counter()
    fn = make_bundle_fn(agent, sac, VARIANT_MODES[variant], example=batch, matmul_dtype=matmul_dtype,
                        inductor=inductor)
    return _calls_per_second(lambda: [fn(batch)], device, seconds, (size, key or variant), t_setup)


def time_group(size: str, variant: str, device: torch.device, sac: SACConfig, seconds: float, group: int,
               matmul_dtype: torch.dtype = torch.float32, key: str | None = None,
               inductor: dict | None = None) -> float:
    """Bundles per second with `group` bundles per call (runtime.replay_groups: on a GPU one CUDA
    graph of `group` bundles reading its batches in place, algo/fused_bundles.py FusedBundles.group)."""
    agent, sac = _agent(size, variant, device, sac)
    batches = [_batch(size, sac.utd * sac.batch_size, device) for _ in range(group)]
    t_setup = time.perf_counter()
    fn = make_bundle_fn(agent, sac, VARIANT_MODES[variant], example=batches[0], matmul_dtype=matmul_dtype,
                        inductor=inductor)
    run = fn.group(batches)
    return group * _calls_per_second(lambda: [run(batches)], device, seconds, (size, key or variant), t_setup)


def _calls_per_second(call, device: torch.device, seconds: float, key: tuple[str, str], t_setup: float) -> float:
    """Calls/s of `call` (returning a list of info dicts) for about `seconds` after 3 warm-up calls;
    the time from `t_setup` to the end of the warm-up goes to SETUP_S[key]."""
    for _ in range(3):
        call()
    _sync(device)
    SETUP_S[key] = time.perf_counter() - t_setup
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            out = call()
        n += 10
        _sync(device)
    rate = n / (time.perf_counter() - t0)
    if not all(torch.isfinite(v).all() for info in out for v in info.values()):
        raise RuntimeError(f"{key[0]}/{key[1]}: non-finite losses")
    print(f"# measured {key[0]}/{key[1]}: {rate:.1f} calls/s, setup {SETUP_S[key]:.1f} s", flush=True)
    if PROFILE_CALLS:
        print_profile(profile_calls(call, device, PROFILE_CALLS), f"{key[0]}/{key[1]}",
                      "kernels" if device.type == "cuda" else "ops", wall_us=1e6 / rate)
    return rate


def time_multiseed(size: str, seeds: int, device: torch.device, sac: SACConfig, seconds: float,
                   mode: str = "fused_graph", matmul_dtype: torch.dtype = torch.float32,
                   key: str | None = None, inductor: dict | None = None) -> float:
    """Aggregate bundles/s of `seeds` independent learners in one process (algo.fast.make_multiseed_fn:
    fused modes batch the seeds into every matmul; cuda_graph replays per-seed graphs on streams)."""
    from wsrl_dist.algo.fast import make_multiseed_fn

    agents, batches = [], []
    for i in range(seeds):
        torch.manual_seed(i)
        agents.append(_agent(size, "stacked-graph" if "graph" in mode else "stacked-eager", device, sac)[0])
        batches.append(_batch(size, sac.utd * sac.batch_size, device))
    t_setup = time.perf_counter()
    multi = make_multiseed_fn(agents, sac, mode, batches, matmul_dtype, inductor)
    return seeds * _calls_per_second(lambda: multi(batches), device, seconds,
                                     (size, key or f"seeds-{mode}-S{seeds}"), t_setup)


PRETRAIN_LABELS = {"eager": "eager", "cuda_graph": "eager-graph", "fused": "fused",
                   "fused_compile_graph": "fused-compile-graph"}


def pretrain_modes(device: torch.device, algo: str = "cql") -> tuple[str, ...]:
    """The first is the eager baseline every row of the algorithm is divided by."""
    modes = ("eager", "cuda_graph", "fused", "fused_compile_graph") if device.type == "cuda" else ("eager", "fused")
    return tuple(m for m in modes if algo != "iql" or not m.startswith("fused"))  # IQL: no fused step


def time_pretrain(size: str, algo: str, mode: str, device: torch.device, sac: SACConfig,
                  seconds: float, seeds: int = 0, key: str | None = None, inductor: dict | None = None,
                  row_split: int = 0, sampled: str = "") -> float:
    """Offline pre-training steps/s (batch 256) of make_offline_step_fn in `mode`; with `seeds` S >= 1,
    make_offline_multiseed_fn over S agents (one S-seed fused step in the fused modes, as a study
    pre-trains a task's seeds): S x its calls/s, the seed-steps/s of all seeds together.

    `sampled` (one seed): each step's batch drawn as a job's loop draws it, from a DeviceSampler over
    SAMPLED_ROWS random rows on the device: "chunked" (pretrain.ChunkedBatches, the loop's way) or
    "perstep" (one sample call per step, the loop before it). Without it every step reuses one batch,
    which leaves the draws' kernels out of the rate."""
    from wsrl_dist.algo.cql import CQLConfig
    from wsrl_dist.algo.fast import make_offline_multiseed_fn, make_offline_step_fn
    from wsrl_dist.algo.iql import IQLConfig

    obs, act, actor_h, critic_h, _ = SIZES[size]
    # antmaze pre-trains with the Lagrange multiplier (configs/tasks/antmaze.yaml)
    cql = CQLConfig(use_calql=algo == "calql", cql_autotune_alpha=size == "antmaze", fused_row_split=row_split)
    agents = [make_agent(obs, act, NetConfig(actor_hidden=actor_h, critic_hidden=critic_h), sac,
                         with_value=algo == "iql", device=device, capturable=mode.endswith("graph"),
                         lagrange_init=1.0 if (cql.cql_autotune_alpha and algo != "iql") else None)
              for _ in range(max(1, seeds))]
    batches = []
    for _ in agents:
        b = _batch(size, 256, device)
        batches.append(Batch(*b[:5], torch.zeros(256, device=device)))  # + MC returns (Cal-QL's bound)
    key = (size, key or f"pretrain-{algo}-{mode}" + (f"-S{seeds}" if seeds else ""))
    t_setup = time.perf_counter()
    if not seeds:
        fn = make_offline_step_fn(agents[0], algo, sac, cql, IQLConfig(), mode, batches[0], inductor)
        if sampled:
            rows = SAMPLED_ROWS if device.type == "cuda" else 20_000  # CPU smoke runs: a small table
            next_batch = job_batches(_batch(size, rows, device), device, sampled)
            return _calls_per_second(lambda: [fn(next_batch())], device, seconds, key, t_setup)
        return _calls_per_second(lambda: [fn(batches[0])], device, seconds, key, t_setup)
    multi = make_offline_multiseed_fn(agents, algo, sac, cql, IQLConfig(), mode, batches, inductor)
    return seeds * _calls_per_second(lambda: multi(batches), device, seconds, key, t_setup)


def run_anchor(path: str) -> dict[str, float]:
    """Run the reference anchor script and parse its 'variant bundles/s critic upd/s' rows."""
    proc = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=900)
    rows = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\S+)\s+([\d.]+)\s+([\d.]+)$", line.strip())
        if m:
            rows[f"anchor:{m.group(1)}"] = float(m.group(2))
            print(f"# measured anchor:{m.group(1)}: {float(m.group(2)):.1f} bundles/s", flush=True)
    if not rows:
        print(f"anchor produced no table:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wsrl-dist bench learner")
    ap.add_argument("--sizes", default="locomotion")
    ap.add_argument("--variants", default=None, help="comma list ('' for none); default: all that run on the device")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--anchor", default=None, help="path to shared/anchors/learner_bench.py")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default=None,
                    help="fp32 (default, like the anchor) | tf32 | bf16 (fused variants and seed modes only; "
                         "their fp32 head GEMMs on bf16 values run as TF32, which holds bf16 exactly)")
    ap.add_argument("--tf32", action="store_true", help="same as --precision tf32")
    ap.add_argument("--seeds", default="", help="multi-seed rows on GPU, e.g. 1,2,4,8 (aggregate rate; with "
                    "--pretrain also S-seed pre-training rows in the fused modes)")
    ap.add_argument("--pretrain", default="", help="offline rows, e.g. cql,calql,iql (eager, and graph on GPU)")
    ap.add_argument("--pretrain-modes", default="",
                    help="only these of the pre-training rows' modes, e.g. eager,fused_compile_graph (default: all)")
    ap.add_argument("--row-split", default="0",
                    help="cql.fused_row_split values for the fused pre-training rows, e.g. 0,1,4,8 (0 = automatic; "
                         "more than one value, or one other than 0, labels the rows -splitN)")
    ap.add_argument("--pretrain-sampled", action="store_true",
                    help="also time each one-seed pre-training row with its batches drawn as the job's loop "
                         "draws them: -sampled-chunked (pretrain.ChunkedBatches) and -sampled-perstep (one draw "
                         "a step), from a 1M-row random dataset on the device")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after timing each row, profile N calls and print kernels (ops on CPU) by time")
    ap.add_argument("--inductor", default="",
                    help="';'-separated Inductor option sets to compare, each 'key=value,...' or 'default' "
                         "(algo.fast.inductor_options alone), e.g. 'default;combo_kernels=False;max_autotune=1': "
                         "compiled rows run once per set, the set on top of the default options")
    ap.add_argument("--group", type=int, default=0, metavar="G",
                    help="also time each fused-* variant with G bundles per call (runtime.replay_groups)")
    ap.add_argument("--seed-modes", default="fused_graph",
                    help="fast paths for the --seeds rows (fused_graph, fused_compile_graph, cuda_graph, fused)")
    args = ap.parse_args(argv)
    if args.tf32 and args.precision not in (None, "tf32"):
        ap.error(f"--tf32 contradicts --precision {args.precision}")
    precision = "tf32" if args.tf32 else (args.precision or "fp32")
    global PROFILE_CALLS
    PROFILE_CALLS = args.profile
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "bf16")
    torch.backends.cudnn.allow_tf32 = precision in ("tf32", "bf16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    variants = ([v for v in args.variants.split(",") if v] if args.variants is not None else
                ["naive-eager", "stacked-eager", "fused-eager"]
                + (["stacked-graph", "fused-graph", "fused-compile-graph"] if device.type == "cuda" else []))
    if precision == "bf16" and args.variants is None:  # the other variants have no bf16 (they would fail)
        variants = [v for v in variants if v.startswith("fused")]
    sac = SACConfig()
    print(f"# command: wsrl-dist bench learner {' '.join(argv or sys.argv[1:])}")
    print(f"# device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, precision {precision}")
    print(f"# bundle = {sac.utd} critic updates (batch {sac.batch_size}, ensemble "
          f"{sac.critic_ensemble_size}, subsample {sac.critic_subsample_size}) + 1 actor + 1 alpha "
          f"on {sac.utd * sac.batch_size} rows; ghost Adam steps {sac.ghost_adam_steps}")
    anchor = run_anchor(args.anchor) if args.anchor else {}
    jax = anchor.get("anchor:jax-jit")
    print(f"{'size':<11}{'variant':<36}{'bundles/s':>11}{'critic upd/s':>14}{'x naive':>9}"
          f"{'x jax':>8}{'setup s':>9}")
    for size in args.sizes.split(","):
        rates: dict[str, float] = {}
        per_call: dict[str, int] = {}  # critic updates per timed call: utd (bundles), 1 (pre-training)
        pre_algo: dict[str, str] = {}  # pre-training row -> its algorithm's eager row
        splits = [int(x) for x in args.row_split.split(",") if x]
        label_splits = len(splits) > 1 or splits != [0]
        only = {m for m in args.pretrain_modes.split(",") if m}
        for algo in [a for a in args.pretrain.split(",") if a]:
            modes = [m for m in pretrain_modes(device, algo) if not only or m in only]
            for mode in modes:
                for split in splits if mode.startswith("fused") else [0]:
                    split_label = f"-split{split}" if label_splits and mode.startswith("fused") else ""
                    for label, opts in inductor_sets(args.inductor, "compile" in mode):
                        base = f"pretrain-{algo}-{PRETRAIN_LABELS[mode]}{split_label}{label}"
                        # --pretrain-sampled: the same row with the job loop's draws, chunked and per step
                        for how in ("", *(("chunked", "perstep") if args.pretrain_sampled else ())):
                            name = f"{base}-sampled-{how}" if how else base
                            pre_algo[name] = f"pretrain-{algo}-eager"
                            try:
                                if "compile" in mode:
                                    _fresh_compile()
                                rates[name] = time_pretrain(size, algo, mode, device, sac, args.seconds, key=name,
                                                            inductor=opts, row_split=split, sampled=how)
                                per_call[name] = 1
                            except Exception as e:
                                print(f"{size:<11}{name:<36} failed: {type(e).__name__}: {str(e)[:200]}")
            # --seeds with --pretrain: S seeds' steps in one call (fused modes: one S-seed step)
            for n in [int(x) for x in args.seeds.split(",") if x]:
                for mode in [m for m in modes if m.startswith("fused")]:
                    for split in splits:
                        split_label = f"-split{split}" if label_splits else ""
                        name = f"pretrain-{algo}-{PRETRAIN_LABELS[mode]}{split_label}-S{n}"
                        pre_algo[name] = f"pretrain-{algo}-eager"
                        try:
                            if "compile" in mode:
                                _fresh_compile()
                            rates[name] = time_pretrain(size, algo, mode, device, sac, args.seconds, n, key=name,
                                                        row_split=split)
                            per_call[name] = 1
                        except Exception as e:
                            print(f"{size:<11}{name:<36} failed: {type(e).__name__}: {str(e)[:200]}")
        for v in variants:
            for label, opts in inductor_sets(args.inductor, "compile" in v):
                name = v + label
                try:
                    _fresh_compile()
                    rates[name] = time_variant(size, v, device, sac, args.seconds, dtype, key=name, inductor=opts)
                except Exception as e:  # report and continue: one failing variant must not hide the rest
                    print(f"{size:<11}{name:<36} failed: {type(e).__name__}: {str(e)[:200]}")
                if args.group > 1 and v.startswith("fused"):
                    name = f"{v}-x{args.group}{label}"
                    try:
                        _fresh_compile()
                        rates[name] = time_group(size, v, device, sac, args.seconds, args.group, dtype,
                                                 key=name, inductor=opts)
                    except Exception as e:
                        print(f"{size:<11}{name:<36} failed: {type(e).__name__}: {str(e)[:200]}")
        for s in [int(x) for x in args.seeds.split(",") if x]:
            for mode in args.seed_modes.split(","):
                for label, opts in inductor_sets(args.inductor, "compile" in mode):
                    name = f"seeds-{mode}-S{s}{label}"
                    try:
                        _fresh_compile()
                        rates[name] = time_multiseed(size, s, device, sac, args.seconds, mode, dtype,
                                                     key=name, inductor=opts)
                    except Exception as e:
                        print(f"{size:<11}{name:<36} failed: {type(e).__name__}: {str(e)[:200]}")
        if size == "locomotion":
            rates.update(anchor)  # the anchor measures locomotion sizes only
        base = rates.get("naive-eager")
        pre = {name: rates.pop(name) for name in per_call}
        for name, r in pre.items():  # steps/s in the bundles/s column; x naive: vs its own eager row
            eager = pre.get(pre_algo[name])
            xe = f"{r / eager:>9.2f}" if eager else f"{'':>9}"
            print(f"{size:<11}{name:<36}{r:>11.1f}{r:>14.1f}{xe}{'':>8}{SETUP_S.get((size, name), 0.0):>9.1f}")
        for v, r in rates.items():
            xn = f"{r / base:>9.2f}" if base else f"{'':>9}"
            xj = f"{r / jax:>8.2f}" if (jax and size == "locomotion") else f"{'':>8}"
            setup = SETUP_S.get((size, v))
            st = f"{setup:>9.1f}" if setup is not None else f"{'':>9}"
            print(f"{size:<11}{v:<36}{r:>11.1f}{sac.utd * r:>14.1f}{xn}{xj}{st}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
