"""The fused fast paths' runners: S seeds' SAC bundles (FusedBundles) or CQL / Cal-QL pre-training
steps (FusedOfflineSteps) as ONE fused update, run eagerly, through torch.compile and/or captured in a
CUDA graph, plus their one-seed adapters and the compile-with-fallback wrapper.

The math is algo/fused.py's and algo/fused_offline.py's; this file holds how it is run (flat state
written back in place, noise draws, static input buffers, per-seed output views, bundle groups).
Apart from algo/fast.py, which picks a runner for a mode (make_bundle_fn and friends) and re-exports
these classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from wsrl_dist.algo import fused as fused_lib
from wsrl_dist.algo import fused_offline
from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.cql import CQLConfig
from wsrl_dist.algo.fast_modes import FUSED_MODES, inductor_options, resolve_mode
from wsrl_dist.algo.graph_capture import capture
from wsrl_dist.algo.sac import SACConfig
from wsrl_dist.algo.types import Batch


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


def copy_rows(rows: list[list[tuple[torch.Tensor, int]]], batches: list[Batch]) -> None:
    """Each seed's batch fields into its rows of a graph's input buffers (rows[i]: (destination,
    field index) pairs of seed i) as ONE multi-tensor copy: S seeds x 5 fields copied one by one
    were ~20 launches, 0.88 ms of host time per bundle call in a 4-seed study cell, whose loop sets
    the cell's pace (BENCHMARKS.md, "A study cell")."""
    dsts, srcs = [], []
    for seed_rows, batch in zip(rows, batches):
        for dst, j in seed_rows:
            if batch[j] is not None:
                dsts.append(dst)
                srcs.append(batch[j])
    torch._foreach_copy_(dsts, srcs, non_blocking=True)


class FusedBundles:
    """S seeds' bundles as ONE fused update (algo/fused.py): f([batch per seed]) -> [info per seed].

    `fused` runs it eagerly (CPU or GPU), `fused_compile` through torch.compile (Inductor fuses the
    elementwise work and the Adam/Polyak updates into the flat buffers), and the `*_graph` modes
    capture noise draws + update + state write-back in one CUDA graph. Info tensors are views that
    the next call overwrites: read or clone them first. `matmul_dtype` bfloat16: bf16 matmuls with
    fp32 sums, everything else fp32 (algo/fused.py `_mm`)."""

    def __init__(self, agents: list[Agent], cfg: SACConfig, mode: str, examples: list[Batch] | None = None,
                 matmul_dtype: torch.dtype = torch.float32, inductor: dict | None = None,
                 full_min: bool = False):
        mode = resolve_mode(mode, agents[0].device, matmul_dtype)
        self.device = agents[0].device
        self.spec = fused_lib.make_spec(agents[0], cfg, matmul_dtype, full_min)
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
        copy_rows(self._static_rows, batches)
        self._graph.replay()
        return self._per_seed_out  # the same dicts every call, their tensors overwritten by the next

    def group(self, batches: list[Batch]) -> Callable[[list[Batch]], dict[str, torch.Tensor]]:
        """G consecutive bundles of one seed as one call: run(batches) -> the last bundle's info,
        the same math as G calls in order. Graph modes capture all G bundles in ONE CUDA graph
        that reads `batches`' own tensors: given the learner's feed buffer (runtime/datapath/feed.py, whose
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
            self._static_rows = [[(dst[i], j) for j, dst in enumerate(self._static) if dst is not None]
                                 for i in range(self.seeds)]

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
        copy_rows(self._static_rows, batches)
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
