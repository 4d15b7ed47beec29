"""The learner's speed switch: run `update.sac_bundle` eagerly, or captured whole in one CUDA graph.

All speed tricks live here (STYLE: CleanRL/LeanRL). The graph path replays the exact eager math on
static input buffers; the agent must be made with `capturable=True` on a CUDA device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from wsrl_dist.algo import fused as fused_lib
from wsrl_dist.algo import fused_offline
from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.cql import CQLConfig
from wsrl_dist.algo.iql import IQLConfig
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch
from wsrl_dist.algo.update import offline_step, sac_bundle

BundleFn = Callable[[Batch], dict[str, torch.Tensor]]
MultiBundleFn = Callable[[list[Batch]], list[dict[str, torch.Tensor]]]


MODES = ("eager", "compile", "cuda_graph", "compile_graph",
         "fused", "fused_compile", "fused_graph", "fused_compile_graph")
FUSED_MODES = tuple(m for m in MODES if m.startswith("fused"))  # the only ones with bf16 matmuls


def resolve_mode(mode: str, device: torch.device, matmul_dtype: torch.dtype = torch.float32) -> str:
    """auto -> fused_compile_graph on a GPU (the fastest measured, BENCHMARKS.md; ~30 s of
    compilation at start), eager on CPU (the fused formulation is no faster there). `compile` runs torch.compile (Inductor fuses the
    elementwise work); `compile_graph` captures the compiled bundle in one CUDA graph. The `fused*`
    modes run algo/fused.py's formulation of the same bundle (flat buffers, batched actor versions,
    seeds as a batch dim), eagerly, compiled, and/or captured.
    bf16 matmuls (`matmul_dtype`) exist only in the fused formulation: with them auto is `fused` on
    CPU (never a silent fp32 eager bundle), and a non-fused mode is refused; on a torch whose
    Inductor loses bf16 roundings (bf16_compile_supported) auto is `fused_graph` on a GPU and a
    compiled mode is refused."""
    bf16 = matmul_dtype == torch.bfloat16
    if mode == "auto":
        if device.type == "cuda":
            return "fused_graph" if bf16 and not bf16_compile_supported() else "fused_compile_graph"
        return "fused" if bf16 else "eager"
    if mode not in MODES:
        raise ValueError(f"fast path {mode!r} is not one of {MODES}")
    if mode.endswith("graph") and device.type != "cuda":
        raise ValueError(f"run.fast_path={mode} needs a CUDA device; use eager or compile on CPU")
    if bf16 and mode not in FUSED_MODES:
        raise ValueError(f"run.matmul_precision=bf16 runs only on the fused fast paths {FUSED_MODES} "
                         f"or auto, not run.fast_path={mode} (algo/update.py, fp32 only)")
    if bf16 and "compile" in mode and not bf16_compile_supported():
        raise ValueError(f"run.matmul_precision=bf16 with run.fast_path={mode} needs torch >= "
                         f"{'.'.join(map(str, BF16_COMPILE_MIN_TORCH))} (this is {torch.__version__}: its "
                         "Inductor drops bf16 roundings of the eager bf16 bundle); use fused_graph, fused or auto")
    return mode


# Inductor of torch 2.11 drops some of the bf16 round trips even with emulate_precision_casts: the
# compiled bf16 bundle's actor loss was 1.14305 against the eager bf16 bundle's 1.13769 (fp32:
# 1.15387), on the H100 image and on CPU (tests/algo/test_fused.py, 2026-12-06). torch 2.13 keeps
# them (1e-5). 2.12 was not checked, so the floor is the version seen right.
BF16_COMPILE_MIN_TORCH = (2, 13)


def bf16_compile_supported() -> bool:
    """Whether this torch's Inductor keeps the fused bundle's bf16 roundings (BF16_COMPILE_MIN_TORCH)."""
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= BF16_COMPILE_MIN_TORCH


def inductor_options(seeds: int, device: torch.device, matmul_dtype: torch.dtype = torch.float32,
                     overrides: dict | None = None) -> dict:
    """torch.compile options (Inductor config) for the fused bundle of `seeds` seeds.

    combo_kernels at one seed on a GPU: Inductor then launches independent small kernels (the
    column sums of bias and LayerNorm-parameter gradients, the updates of separate flat buffers) as
    one kernel. One seed's bundle is latency-bound, so fewer launches is time: on an H200 it went
    226 -> 154 kernels and 747 -> 659 us wall per bundle (BENCHMARKS.md, 2026-11-30 second session).
    At 8 seeds the bundle is memory-bound and the combined kernels measured 5% slower (2,276 ->
    2,388 us), so it is off for S > 1 (S = 2-4 not measured). CPU Inductor has no combo kernels.
    `overrides` (bench learner --inductor) go on top."""
    opts: dict = {}
    if device.type == "cuda" and seeds == 1:
        opts["combo_kernels"] = True
    if matmul_dtype == torch.bfloat16:
        # Inductor otherwise drops a round trip x.to(bf16).float() inside one fused kernel, and
        # the bf16 heads (fused._mm) would silently take fp32 inputs when compiled
        opts["emulate_precision_casts"] = True
    opts.update(overrides or {})
    return opts


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


def _optimizers(agent: Agent) -> list[torch.optim.Optimizer]:
    return [o for o in (agent.actor_opt, agent.critic_opt, agent.temperature_opt, agent.value_opt,
                        agent.lagrange_opt) if o is not None]


def _state_tensors(agent: Agent) -> list[torch.Tensor]:
    """Every tensor a bundle or pre-training step mutates: parameters, target parameters, the IQL
    value net and CQL Lagrange multiplier where present, Adam moments and counts."""
    out: list[torch.Tensor] = []
    for mod in (agent.actor, agent.critic, agent.target_critic, agent.temperature, agent.value,
                agent.lagrange):
        if mod is not None:
            out += [p.data for p in mod.parameters()]
    for opt in _optimizers(agent):
        for group in opt.param_groups:
            for p in group["params"]:
                out += [t for t in opt.state.get(p, {}).values() if torch.is_tensor(t)]
    return out


def _init_adam_state(opt: torch.optim.Optimizer) -> None:
    """Create Adam's lazily made state now, so capture sees final tensor addresses."""
    for group in opt.param_groups:
        for p in group["params"]:
            if not opt.state.get(p):
                opt.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }


def capture(fn: Callable, static: Batch, state: list[torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, object]:
    """Capture fn(static) in one CUDA graph. The warm-up calls capture needs (and compilation, for a
    compiled fn) run on the real state, so `state` (every tensor fn mutates) is saved before and
    copied back in place after: the same addresses, the values from before. Returns (graph, the
    output tensors that each replay overwrites)."""
    saved = [t.clone() for t in state]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static)
    with torch.no_grad():
        for t, s in zip(state, saved):
            t.copy_(s)
    return graph, out


class GraphedBundle:
    """A bundle function captured in one CUDA graph. Warm-up iterations needed before capture run on
    the real agent, so its state is saved before and copied back in place after (same addresses).
    The returned info tensors are overwritten by the next call: read or clone them first."""

    def __init__(self, agent: Agent, fn: BundleFn, example: Batch):
        if agent.device.type != "cuda":
            raise ValueError("GraphedBundle needs the agent on a CUDA device")
        for opt in _optimizers(agent):
            if not all(g.get("capturable") for g in opt.param_groups):
                raise ValueError("GraphedBundle needs optimizers made with capturable=True")
            _init_adam_state(opt)
        self.static = Batch(*(t.clone() if t is not None else None for t in example))
        self.graph, self.out = capture(fn, self.static, _state_tensors(agent))

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        for dst, src in zip(self.static, batch):
            if dst is not None and src is not None:
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.out


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


def _compile_with_fallback(fn: Callable, options: dict, asked: dict) -> Callable:
    """torch.compile(fn) with `options`; if Inductor fails on the first call while combo kernels are
    on by default only (inductor_options; an experimental Inductor feature, measured on the
    locomotion sizes), warn and compile again without them instead of failing the job. The failure
    is raised at code generation, before any kernel has run, so the state is untouched."""
    import torch._dynamo.exc  # loaded with torch.compile; named here for the except below

    compiled = torch.compile(fn, dynamic=False, options=options or None)
    if not options.get("combo_kernels") or "combo_kernels" in asked:
        return compiled
    current = [compiled, True]  # the function to call, first call pending

    def call(*args):
        if not current[1]:
            return current[0](*args)
        try:
            out = current[0](*args)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            warnings.warn(f"fused bundle: Inductor failed with combo kernels ({str(e)[:300]}); "
                          "compiling without them (slower at one seed, same math)", RuntimeWarning, stacklevel=2)
            rest = {k: v for k, v in options.items() if k != "combo_kernels"}
            current[0] = torch.compile(fn, dynamic=False, options=rest or None)
            out = current[0](*args)
        current[1] = False
        return out

    return call


class OneSeedBundle:
    """One seed's fused bundle: f(batch) -> info, and `group` for G bundles in one call."""

    def __init__(self, fused: FusedBundles):
        self.fused = fused

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.fused([batch])[0]

    def group(self, batches: list[Batch]) -> Callable[[list[Batch]], dict[str, torch.Tensor]]:
        return self.fused.group(batches)


class FusedBundles:
    """S seeds' bundles as ONE fused update (algo/fused.py): f([batch per seed]) -> [info per seed].

    `fused` runs it eagerly (CPU or GPU), `fused_compile` through torch.compile (Inductor fuses the
    elementwise work and the Adam/Polyak updates into the flat buffers), and the `*_graph` modes
    capture noise draws + update + state write-back in one CUDA graph. Info tensors are views that
    the next call overwrites: read or clone them first. `matmul_dtype` bfloat16: bf16 matmuls with
    fp32 sums, everything else fp32 (algo/fused.py `_mm`)."""

    def __init__(self, agents: list[Agent], cfg: SACConfig, mode: str, examples: list[Batch] | None = None,
                 matmul_dtype: torch.dtype = torch.float32, inductor: dict | None = None):
        mode = resolve_mode(mode, agents[0].device, matmul_dtype)
        self.device = agents[0].device
        self.spec = fused_lib.make_spec(agents[0], cfg, matmul_dtype)
        self.state = fused_lib.FusedState(agents, self.spec)
        self.seeds = len(agents)
        spec, state = self.spec, self.state

        def update(st: dict[str, torch.Tensor], batch: Batch, noise: fused_lib.Noise) -> dict[str, torch.Tensor]:
            new, info = fused_lib.fused_bundle(spec, st, batch, noise)
            for k in fused_lib.STATE_KEYS:  # in place: the agents' parameters are views of these
                st[k].copy_(new[k])
            return info

        if "compile" in mode:
            self.inductor = inductor_options(len(agents), self.device, matmul_dtype, inductor)
            update = _compile_with_fallback(update, self.inductor, asked=inductor or {})

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            return update(state.t, batch, fused_lib.draw_noise(spec, self.seeds, self.device))

        self._step = step
        self._graph: torch.cuda.CUDAGraph | None = None
        if mode.endswith("graph"):
            if examples is None:
                raise ValueError(f"{mode} needs one example batch per seed to capture with")
            self._check(examples)
            self._static = self._stack(examples)  # a fresh tensor: the graph's own input buffers
            self._graph, self._out = capture(self._step, self._static, list(self.state.t.values()))
            # every replay overwrites the same output tensors, so their per-seed views and the input
            # buffers' per-seed rows are made once here, not as ~S x 15 indexing ops in every call
            # (the GPU job's Python loop, not the GPU, sets its pace: BENCHMARKS.md, end to end)
            self._per_seed_out = self._split(self._out)
            self._static_rows = [[(dst[i], j) for j, dst in enumerate(self._static) if dst is not None]
                                 for i in range(self.seeds)]

    def _check(self, batches: list[Batch]) -> None:
        if len(batches) != self.seeds:
            raise ValueError(f"expected {self.seeds} batches (one per seed), got {len(batches)}")

    def _stack(self, batches: list[Batch]) -> Batch:
        return Batch(*(torch.stack(cols) if cols[0] is not None else None for cols in zip(*batches)))

    def __call__(self, batches: list[Batch]) -> list[dict[str, torch.Tensor]]:
        self._check(batches)
        if self._graph is None:
            return self._split(self._step(self._stack(batches)))
        for rows, batch in zip(self._static_rows, batches):
            for dst, j in rows:
                if batch[j] is not None:
                    dst.copy_(batch[j], non_blocking=True)
        self._graph.replay()
        return self._per_seed_out  # the same dicts every call, their tensors overwritten by the next

    def group(self, batches: list[Batch]) -> Callable[[list[Batch]], dict[str, torch.Tensor]]:
        """G consecutive bundles of one seed as one call: run(batches) -> the last bundle's info,
        the same math as G calls in order. Graph modes capture all G bundles in ONE CUDA graph
        that reads `batches`' own tensors: given the learner's feed buffer (runtime/feed.py, whose
        addresses never change) a replay needs no input copies and the host launches once per G
        bundles, where the per-bundle Python loop around a graphed bundle (~1.1 ms on the H200 job)
        took longer than the bundle itself (0.74 ms). Batches at other addresses are copied into
        the captured ones first (overwriting what `batches` held). Other modes loop over the
        bundles."""
        if self.seeds != 1:
            raise ValueError("bundle groups are one seed's: several seeds are already one call")
        if self._graph is None:
            def loop(bs: list[Batch]) -> dict[str, torch.Tensor]:
                return [self([b])[0] for b in bs][-1]

            return loop
        views = [Batch(*(t.unsqueeze(0) if t is not None else None for t in b)) for b in batches]

        def steps(_: object) -> dict[str, torch.Tensor]:
            info = {}
            for v in views:
                info = self._step(v)
            return info

        graph, out = capture(steps, None, list(self.state.t.values()))
        info = self._split(out)[0]

        def ptrs(bs: list[Batch]) -> list[int]:
            return [t.data_ptr() for b in bs for t in b if t is not None]

        captured = ptrs(batches)

        def replay(bs: list[Batch]) -> dict[str, torch.Tensor]:
            if len(bs) != len(views):
                raise ValueError(f"this group runs {len(views)} bundles, got {len(bs)}")
            if ptrs(bs) != captured:  # not the captured buffers: copy the rows in
                for view, b in zip(views, bs):
                    for dst, src in zip(view, b):
                        if dst is not None and src is not None:
                            dst[0].copy_(src, non_blocking=True)
            graph.replay()
            return info

        return replay

    def _split(self, info: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{k: v[i] for k, v in info.items()} for i in range(self.seeds)]

    def rebind(self) -> None:
        """Call after loading new state into the agents (checkpoint restore)."""
        self.state.rebind()


class FusedOfflineSteps:
    """S seeds' pre-training steps (CQL / Cal-QL) as ONE fused step (algo/fused_offline.py):
    f([batch per seed]) -> [info per seed]. Modes as FusedBundles: `fused` eager, `fused_compile`
    through torch.compile, `*_graph` noise draws + step + state write-back captured in one CUDA
    graph. The agents' parameters and Adam states become views of the flat buffers (checkpoints see
    them). Info tensors are overwritten by the next call: read or clone them first."""

    def __init__(self, agents: list[Agent], algo: str, sac: SACConfig, cql: CQLConfig, mode: str,
                 examples: list[Batch] | None = None, inductor: dict | None = None):
        mode = resolve_mode(mode, agents[0].device)
        if not mode.startswith("fused"):
            raise ValueError(f"FusedOfflineSteps runs the fused modes {FUSED_MODES}, not {mode}")
        self.device, self.seeds = agents[0].device, len(agents)
        self.spec = fused_offline.make_offline_spec(agents[0], algo, sac, cql)
        if any((a.lagrange is None) != (agents[0].lagrange is None) for a in agents):
            raise ValueError("every seed's agent needs the same networks (Lagrange multiplier or none)")
        self.state = fused_offline.OfflineState(agents, self.spec.net)
        spec, state = self.spec, self.state

        def update(st: dict[str, torch.Tensor], batch: Batch, noise: fused_offline.OfflineNoise
                   ) -> dict[str, torch.Tensor]:
            new, info = fused_offline.fused_offline_step(spec, st, batch, noise)
            for k, v in new.items():  # in place: the agents' parameters are views of these
                st[k].copy_(v)
            return info

        if "compile" in mode:
            self.inductor = inductor_options(self.seeds, self.device, torch.float32, inductor)
            update = _compile_with_fallback(update, self.inductor, asked=inductor or {})

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            rows = batch.observations.shape[1]
            return update(state.t, batch, fused_offline.draw_noise(spec, self.seeds, rows, self.device))

        self._step = step
        self._graph: torch.cuda.CUDAGraph | None = None
        if mode.endswith("graph"):
            if examples is None:
                raise ValueError(f"{mode} needs one example batch per seed to capture with")
            self._static = self._stack(examples)  # the graph's own input buffers
            self._graph, out = capture(self._step, self._static, list(self.state.t.values()))
            self._per_seed_out = self._split(out)

    def _stack(self, batches: list[Batch]) -> Batch:
        if len(batches) != self.seeds:
            raise ValueError(f"expected {self.seeds} batches (one per seed), got {len(batches)}")
        return Batch(*(torch.stack(cols) if cols[0] is not None else None for cols in zip(*batches)))

    def _split(self, info: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{k: v[i] for k, v in info.items()} for i in range(self.seeds)]

    def __call__(self, batches: list[Batch]) -> list[dict[str, torch.Tensor]]:
        if self._graph is None:
            return self._split(self._step(self._stack(batches)))
        if len(batches) != self.seeds:
            raise ValueError(f"expected {self.seeds} batches (one per seed), got {len(batches)}")
        for i, batch in enumerate(batches):
            for dst, src in zip(self._static, batch):
                if dst is not None and src is not None:
                    dst[i].copy_(src, non_blocking=True)
        self._graph.replay()
        return self._per_seed_out

    def rebind(self) -> None:
        """Call after loading new state into the agents (checkpoint restore)."""
        self.state.rebind()


class OneSeedOfflineStep:
    """One seed's fused pre-training step: f(batch) -> info."""

    def __init__(self, steps: FusedOfflineSteps):
        self.steps = steps

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.steps([batch])[0]
