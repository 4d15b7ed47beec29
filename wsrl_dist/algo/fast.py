"""The learner's speed switch: run `update.sac_bundle` eagerly, or captured whole in one CUDA graph.

All speed tricks live here (STYLE: CleanRL/LeanRL). The graph path replays the exact eager math on
static input buffers; the agent must be made with `capturable=True` on a CUDA device.
Here: the makers that pick what runs for a mode (one seed, several seeds, pre-training). The modes
and Inductor options are in algo/fast_modes.py, CUDA-graph capture in algo/graph_capture.py, the
fused runners in algo/fused_bundles.py; all re-exported here, so callers import from algo/fast.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from wsrl_dist.algo import fused_offline
from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.cql import CQLConfig
from wsrl_dist.algo.fast_modes import (  # noqa: F401 (re-exported: callers import them from here)
    BF16_COMPILE_MIN_TORCH,
    FUSED_MODES,
    MODES,
    bf16_compile_supported,
    inductor_options,
    resolve_mode,
)
from wsrl_dist.algo.fused_bundles import (  # noqa: F401 (re-exported)
    FusedBundles,
    FusedOfflineSteps,
    OneSeedBundle,
    OneSeedOfflineStep,
)
from wsrl_dist.algo.graph_capture import BundleFn, GraphedBundle
from wsrl_dist.algo.iql import IQLConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch
from wsrl_dist.algo.update import offline_step, sac_bundle

MultiBundleFn = Callable[[list[Batch]], list[dict[str, torch.Tensor]]]


def make_bundle_fn(agent: Agent, cfg: SACConfig, mode: str, example: Batch | None = None,
                   matmul_dtype: torch.dtype = torch.float32, inductor: dict | None = None) -> BundleFn:
    """Return f(batch [utd*batch_size rows]) -> info tensors. `example` (any batch of the right
    shape) is needed for cuda_graph capture; its values do not change the agent. `matmul_dtype`
    bfloat16: the fused modes' bf16 matmuls (algo/fused.py). `inductor`: Inductor options on top of
    `inductor_options`' (fused compiled modes)."""
    mode = resolve_mode(mode, agent.device, matmul_dtype)
    if mode.startswith("fused"):
        return OneSeedBundle(FusedBundles([agent], cfg, mode, None if example is None else [example],
                                          matmul_dtype, inductor))

    def bundle(batch: Batch) -> dict[str, torch.Tensor]:
        return sac_bundle(agent, batch, cfg)

    fn: BundleFn = bundle
    if mode.startswith("compile"):
        # no cudagraphs inside compile: the whole bundle is captured below as ONE graph instead
        fn = torch.compile(bundle, mode="default", dynamic=False)
    if not mode.endswith("graph"):
        return fn
    if example is None:
        raise ValueError(f"{mode} needs an example batch to capture with")
    return GraphedBundle(agent, fn, example)


def make_offline_step_fn(agent: Agent, algo: str, sac: SACConfig, cql: CQLConfig, iql: IQLConfig,
                         mode: str, example: Batch | None = None, inductor: dict | None = None) -> BundleFn:
    """Pre-training step f(batch) -> info (`update.offline_step`: CQL / Cal-QL / IQL, UTD 1).

    - `fused*` modes (GPU `auto`: fused_compile_graph) run CQL / Cal-QL as algo/fused_offline.py's
      step (same math, flat buffers; compiled and/or captured in one CUDA graph): an eager CQL step
      launches ~1,000 small kernels one by one from Python (57 steps/s on an H100, docs/RESULTS.md;
      70.8 on an H200) and the eager step captured whole still replays them all (405 on an H200,
      BENCHMARKS.md). IQL has no fused step: in the fused graph modes it runs the eager step
      captured in one CUDA graph, in the other fused modes the eager step.
    - `cuda_graph` / `compile_graph`: the eager step captured whole in one CUDA graph (the agent
      needs capturable optimizers); `eager` / `compile`: the readable eager step itself.
    `example` (any batch of the right shape) is needed for the graph modes' capture."""
    mode = resolve_mode(mode, agent.device)
    if mode.startswith("fused") and algo in fused_offline.FUSED_OFFLINE_ALGOS:
        return OneSeedOfflineStep(FusedOfflineSteps([agent], algo, sac, cql, mode,
                                                    None if example is None else [example], inductor))

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        return offline_step(agent, batch, algo, sac, cql, iql)

    if not mode.endswith("graph"):
        return step
    if example is None:
        raise ValueError("a CUDA-graph pre-training step needs an example batch to capture with")
    return GraphedBundle(agent, step, example)


def offline_step_kind(algo: str, mode: str) -> str:
    """What make_offline_step_fn runs for `algo` in the resolved `mode` (run.json's pretrain_step)."""
    if mode.startswith("fused") and algo in fused_offline.FUSED_OFFLINE_ALGOS:
        return f"{mode} (algo/fused_offline.py)"
    return "eager step in one CUDA graph" if mode.endswith("graph") else "eager step"


def make_offline_multiseed_fn(agents: list[Agent], algo: str, sac: SACConfig, cql: CQLConfig, iql: IQLConfig,
                              mode: str, examples: list[Batch] | None = None,
                              inductor: dict | None = None) -> MultiBundleFn:
    """S seeds' pre-training steps together: f([batch per seed]) -> [info per seed]. Fused modes
    (CQL / Cal-QL) make the seeds one batch dim of ONE fused step; otherwise each seed runs its own
    make_offline_step_fn, one after another."""
    mode = resolve_mode(mode, agents[0].device)
    if mode.startswith("fused") and algo in fused_offline.FUSED_OFFLINE_ALGOS:
        return FusedOfflineSteps(agents, algo, sac, cql, mode, examples, inductor)
    fns = [make_offline_step_fn(a, algo, sac, cql, iql, mode, None if examples is None else examples[i])
           for i, a in enumerate(agents)]

    def step(batches: list[Batch]) -> list[dict[str, torch.Tensor]]:
        if len(batches) != len(fns):
            raise ValueError(f"expected {len(fns)} batches (one per seed), got {len(batches)}")
        return [fn(b) for fn, b in zip(fns, batches)]

    return step


class MultiSeedBundles:
    """S independent learners (one Agent per seed) whose bundles run concurrently on the GPU.

    One env step's bundle is ~200 small kernels, far from filling an H100, so each seed's bundle is
    captured as its own CUDA graph and replayed on its own stream: the graphs overlap on the device.
    Same math per seed as `make_bundle_fn`; seeds share nothing but the GPU.
    """

    def __init__(self, agents: list[Agent], cfg: SACConfig, examples: list[Batch], compile: bool = False):
        if len(agents) != len(examples):
            raise ValueError("one example batch per seed")
        self.streams = [torch.cuda.Stream() for _ in agents]
        self.bundles = []
        for agent, example, stream in zip(agents, examples, self.streams):
            with torch.cuda.stream(stream):
                mode = "compile_graph" if compile else "cuda_graph"
                self.bundles.append(make_bundle_fn(agent, cfg, mode, example))
        torch.cuda.synchronize()

    def __call__(self, batches: list[Batch]) -> list[dict[str, torch.Tensor]]:
        main = torch.cuda.current_stream()
        outs = []
        for bundle, batch, stream in zip(self.bundles, batches, self.streams):
            stream.wait_stream(main)  # inputs written on the main stream first
            with torch.cuda.stream(stream):
                outs.append(bundle(batch))
        for stream in self.streams:
            main.wait_stream(stream)
        return outs


def make_multiseed_fn(agents: list[Agent], cfg: SACConfig, mode: str, examples: list[Batch] | None = None,
                      matmul_dtype: torch.dtype = torch.float32, inductor: dict | None = None) -> MultiBundleFn:
    """S independent learners of one config stepped together: f([batch per seed]) -> [info per seed].
    Seed i's bundle sees only agents[i] and batches[i]. On a GPU with a graph mode the seeds' graphs
    replay on concurrent streams; otherwise the seeds run one after another with the same math."""
    mode = resolve_mode(mode, agents[0].device, matmul_dtype)
    if mode.startswith("fused"):
        return FusedBundles(agents, cfg, mode, examples, matmul_dtype, inductor)
    if mode.endswith("graph"):
        if examples is None:
            raise ValueError(f"{mode} needs one example batch per seed to capture with")
        return MultiSeedBundles(agents, cfg, examples, compile=mode.startswith("compile"))
    fns = [make_bundle_fn(a, cfg, mode) for a in agents]

    def step(batches: list[Batch]) -> list[dict[str, torch.Tensor]]:
        if len(batches) != len(fns):
            raise ValueError(f"expected {len(fns)} batches (one per seed), got {len(batches)}")
        return [fn(b) for fn, b in zip(fns, batches)]

    return step
