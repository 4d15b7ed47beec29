"""Capturing an update in one CUDA graph: the state it mutates, Adam's state made up front, capture().

Shared by every graphed path: GraphedBundle below (algo/fast.py's eager or compiled bundle or
pre-training step captured whole), algo/fused_bundles.py (the fused update and bundle groups) and
data/behaviour.py's FastLearner (the builder's behaviour SAC). Apart from the bundle makers because
it is the one piece of CUDA-graph mechanics they all lean on, with no update math of its own.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.types import Batch

BundleFn = Callable[[Batch], dict[str, torch.Tensor]]


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
    # An unreachable reference cycle holding an older graph (a dropped FusedBundles: its step
    # closure refers back to it) must not be collected during this capture: the old graph's
    # reset() then runs while the stream is capturing, which invalidates the capture ("operation
    # not permitted when stream is capturing (function reset)", and the CUDA RNG is left in capture
    # state for every later draw: the likely cause of a tests/algo failure on an H100, 2026-12-06,
    # whose CUDA warning named a reset() during the capture; not reproduced yet). torch.cuda.graph no longer
    # collects garbage itself (torch.compiler.config.force_cudagraph_gc), so: collect now, and keep
    # the collector off until the capture ends.
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(graph):
            out = fn(static)
    finally:
        if collecting:
            gc.enable()
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
