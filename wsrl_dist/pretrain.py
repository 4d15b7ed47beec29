"""Offline pre-training stage (dataset -> CQL / Cal-QL / IQL updates -> agent to fine-tune).

Shared by the single-process pipeline (local.py) and the Ray learner (runtime/datapath/learner.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wsrl_dist.algo.agent import Agent
from wsrl_dist.algo.fast import make_offline_multiseed_fn, make_offline_step_fn
from wsrl_dist.algo.types import Batch
from wsrl_dist.config import RunConfig
from wsrl_dist.data.returns import mc_returns_to_go
from wsrl_dist.data.schema import OfflineDataset
from wsrl_dist.durable import replace_durably

# rows drawn at once by ChunkedBatches (256 steps at batch 256): ~11 MB for locomotion's 43 floats a row
CHUNK_ROWS = 65_536
ACTION_CLIP = 0.99999  # dataset actions kept off +-1 so log pi stays finite (reference gotcha 8)
PARTIAL = "pretrain-partial.pt"  # in <run_dir>/checkpoints/: pre-training in progress (pretrain_agent)


def training_arrays(dataset: OfflineDataset, task, discount: float) -> dict[str, np.ndarray]:
    """Offline columns as the learner sees them: scaled rewards, clipped actions, masks, MC returns."""
    rewards = task.scale_reward(dataset.rewards).astype(np.float32)
    return {
        "observations": dataset.observations.astype(np.float32, copy=False),
        "actions": np.clip(dataset.actions, -ACTION_CLIP, ACTION_CLIP).astype(np.float32),
        "rewards": rewards,
        "next_observations": dataset.next_observations.astype(np.float32, copy=False),
        "terminals": dataset.terminals.astype(np.float32, copy=False),
        "masks": (1.0 - dataset.terminals).astype(np.float32),
        "mc_returns": mc_returns_to_go(
            rewards, dataset.terminals, dataset.timeouts, discount,
            sparse_negative_reward=task.sparse_negative_reward if task.sparse_reward else None,
        ).astype(np.float32),
    }


class DeviceSampler:
    """Uniform sampling with replacement from arrays kept on the learner's device (no host copies)."""

    def __init__(self, arrays: dict[str, np.ndarray | torch.Tensor], device: torch.device, seed: int):
        # tensors already on `device` (another seed's sampler's cols) are shared, not copied
        self.cols = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
        self.n = int(self.cols["rewards"].shape[0])
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(self.n, (batch_size,), device=self.gen.device, generator=self.gen)
        c = {k: v.index_select(0, idx) for k, v in self.cols.items()}
        return Batch(c["observations"], c["actions"], c["rewards"], c["next_observations"],
                     c["masks"], c.get("mc_returns"))


class ChunkedBatches:
    """Pre-training batches drawn `CHUNK_ROWS // batch_size` steps at a time: ONE sample call (a
    randint and an index_select per field) for the whole chunk, each step a slice of it (views).

    Why: drawing every step's batch on its own is ~7 small kernels a step, beside a graphed CQL step
    of ~450 us on an H100. A 250k-step job measured 1,974 steps/s where the bench's step on a fixed
    batch ran 2,207 (BENCHMARKS.md); those draws are the likely difference (`bench learner
    --pretrain-sampled` times both ways). The rows are the same distribution (uniform with
    replacement); the draws themselves differ from per-step sampling.

    A chunk never crosses a partial-checkpoint step (`checkpoint_every`) or the last step, so the
    sampler's RNG state saved at a checkpoint is at a chunk boundary and a resumed run draws exactly
    what the uninterrupted one draws from there on. The chunks follow pretrain.checkpoint_every even
    where no checkpoint file is written, so the batches never depend on that (on a GPU, Philox draws
    of one chunk differ from the same rows drawn in two)."""

    def __init__(self, sampler: DeviceSampler, batch_size: int, steps: int, checkpoint_every: int = 0,
                 chunk_rows: int = CHUNK_ROWS):
        self.sampler, self.batch, self.steps, self.every = sampler, int(batch_size), int(steps), int(checkpoint_every)
        self.chunk = max(1, int(chunk_rows) // self.batch)
        self._drawn: Batch | None = None
        self._first = self._last = 0  # steps the current chunk covers (inclusive)
        self.draws = 0  # sample calls made (the tests count them)

    def chunk_end(self, step: int) -> int:
        """Last step of the chunk that starts at `step`."""
        end = min(step + self.chunk - 1, self.steps)
        if self.every > 0:
            end = min(end, ((step - 1) // self.every + 1) * self.every)
        return end

    def at(self, step: int) -> Batch:
        """Step `step`'s batch (steps are taken in order, from any start: a resume's)."""
        if not self._first <= step <= self._last:
            self._first, self._last = step, self.chunk_end(step)
            self._drawn = self.sampler.sample((self._last - step + 1) * self.batch)
            self.draws += 1
        i = (step - self._first) * self.batch
        return Batch(*(None if t is None else t[i: i + self.batch] for t in self._drawn))


class StepClock:
    """The pre-training loop's times, as run.json records them (`pretrain_` + key): the whole loop
    (loop_s, steps_per_s), the first step alone (first_step_s: compilation, autotuning and CUDA-graph
    capture happen there: ~25 s, or ~190 s with pretrain.max_autotune_gemm, on an H100) and the steps
    after it (steady_steps_per_s, which the bench's rows compare with). One device sync, at the end."""

    def __init__(self, device: torch.device, start: int, note: Callable[[str], None] | None = None,
                 first_note: str = ""):
        self.device, self.start, self.note = device, start, note
        self.t0 = time.perf_counter()
        self.t_first: float | None = None
        if note is not None and first_note:
            note(first_note)

    def stepped(self, step: int) -> None:
        if step == self.start:
            self.t_first = time.perf_counter()
            if self.note is not None:
                self.note("")

    def report(self, steps: int, into: dict[str, float] | None) -> None:
        if into is None or self.t_first is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        into["loop_s"] = now - self.t0
        into["steps_per_s"] = (steps - self.start + 1) / max(now - self.t0, 1e-9)
        into["first_step_s"] = self.t_first - self.t0
        if steps > self.start:
            into["steady_steps_per_s"] = (steps - self.start) / max(now - self.t_first, 1e-9)


def pretrain_agent(
    agent: Agent,
    sampler: DeviceSampler,
    cfg: RunConfig,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    mode: str = "eager",
    partial: Path | None = None,
    resume: bool = False,
    timing: dict[str, float] | None = None,
    note: Callable[[str], None] | None = None,
) -> int:
    """Run cfg.pretrain.steps offline updates (UTD 1, batch pretrain.batch_size) in place. `mode`:
    the resolved run.fast_path (algo.fast.make_offline_step_fn): the fused modes (GPU default:
    fused_compile_graph) run CQL / Cal-QL as algo/fused_offline.py's step; a graph mode needs an
    agent with capturable optimizers.

    `partial`: a file written every pretrain.checkpoint_every steps (agent with its optimizers, the
    step, and the torch and sampler RNG states) and removed once pre-training is done; with `resume`
    an existing one is continued from, so a run killed during pre-training loses at most one interval.
    Continuing draws the same batches and noise as the uninterrupted run would have. `timing`, when
    given, receives `StepClock`'s times (whole loop, first step, steady rate). `note(text)`: what the loop is
    doing where its step count cannot move (compiling the step, which can take minutes), "" after.
    Returns the first step this call ran (1 unless resumed)."""
    pcfg = cfg.pretrain
    if pcfg.algo == "none" or pcfg.steps <= 0:
        return 1
    start = 1
    if resume and partial is not None and partial.is_file():
        start = _load_partial(partial, agent, sampler, pcfg.steps, pcfg.algo) + 1
        if progress is not None:
            progress(start - 1)
    step_fn = None
    draws = ChunkedBatches(sampler, pcfg.batch_size, pcfg.steps, pcfg.checkpoint_every)
    clock = StepClock(agent.device, start, note, first_step_note(mode, pcfg))
    for step in range(start, pcfg.steps + 1):
        batch = draws.at(step)
        if step_fn is None:  # built on the first batch: a CUDA graph captures with a real one
            step_fn = make_offline_step_fn(agent, pcfg.algo, cfg.sac, pcfg.cql, pcfg.iql, mode, batch,
                                           inductor_overrides(pcfg))
        info = step_fn(batch)
        clock.stepped(step)
        if on_log is not None and (step % cfg.run.log_every == 0 or step == pcfg.steps):
            on_log(step, {k: float(v) for k, v in info.items()})  # CPU-GPU sync, once per log interval
        if progress is not None:
            progress(1)
        if partial is not None and pcfg.checkpoint_every and step % pcfg.checkpoint_every == 0 \
                and step < pcfg.steps:
            _save_partial(partial, agent, sampler, step, pcfg.algo)
    if partial is not None:
        partial.unlink(missing_ok=True)  # done: the caller saves the pre-trained agent itself
    clock.report(pcfg.steps, timing)
    return start


def pretrain_agents(
    agents: list[Agent],
    samplers: list[DeviceSampler],
    cfg: RunConfig,
    mode: str,
    partials: list[Path] | None = None,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    on_log: Callable[[int, list[dict[str, float]]], None] | None = None,
    timing: dict[str, float] | None = None,
    note: Callable[[str], None] | None = None,
) -> int:
    """S seeds' pre-training stepped together: each step samples one batch per seed from that seed's
    own sampler and runs ONE call of algo.fast.make_offline_multiseed_fn (in the fused modes one
    S-seed fused step; otherwise the seeds' steps one after another). The policy noise of all seeds
    comes from the one process-wide torch stream, so a seed's result differs from a single-seed
    run of that seed (which draws its own). `partials[i]`: seed i's partial checkpoint, all written
    at the same step (pretrain_agent's format); with `resume` they are continued from when every
    seed has one. `progress(n)`: n more steps done; `on_log(step, [losses per seed])` (as pretrain_agent's). Returns the first step this call ran (1 unless resumed)."""
    pcfg = cfg.pretrain
    if pcfg.algo == "none" or pcfg.steps <= 0:
        return 1
    start = 1
    if resume and partials is not None and all(p.is_file() for p in partials):
        done = {_load_partial(p, a, s, pcfg.steps, pcfg.algo) for p, a, s in zip(partials, agents, samplers)}
        if len(done) != 1:
            raise ValueError(f"seeds' pre-training checkpoints {[str(p) for p in partials]} are at different "
                             f"steps {sorted(done)}; remove them to pre-train from scratch")
        start = done.pop() + 1
        if progress is not None:
            progress(start - 1)
    step_fn = None
    draws = [ChunkedBatches(s, pcfg.batch_size, pcfg.steps, pcfg.checkpoint_every)
             for s in samplers]
    clock = StepClock(agents[0].device, start, note, first_step_note(mode, pcfg))
    for step in range(start, pcfg.steps + 1):
        batches = [d.at(step) for d in draws]
        if step_fn is None:  # built on the first batches: a CUDA graph captures with real ones
            step_fn = make_offline_multiseed_fn(agents, pcfg.algo, cfg.sac, pcfg.cql, pcfg.iql, mode, batches,
                                                inductor_overrides(pcfg))
        infos = step_fn(batches)
        clock.stepped(step)
        if on_log is not None and (step % cfg.run.log_every == 0 or step == pcfg.steps):
            on_log(step, [{k: float(v) for k, v in info.items()} for info in infos])  # one sync per interval
        if progress is not None:
            progress(1)
        if partials is not None and pcfg.checkpoint_every and step % pcfg.checkpoint_every == 0 \
                and step < pcfg.steps:
            for p, a, s in zip(partials, agents, samplers):
                _save_partial(p, a, s, step, pcfg.algo)
    for p in partials or []:
        p.unlink(missing_ok=True)
    clock.report(pcfg.steps, timing)
    return start


def first_step_note(mode: str, pcfg) -> str:
    """What the progress line says while the first step builds (resolved `mode`): compiled modes
    compile for ~25 s on a GPU, minutes with GEMM autotuning; graph modes capture."""
    if "compile" in mode:
        return "compiling the step" + (" with GEMM autotuning (minutes on a cold cache)" if pcfg.max_autotune_gemm else "")
    return "capturing the step's CUDA graph" if mode.endswith("graph") else ""


# Inductor prints every autotuned GEMM's table of timings (27 tables, ~100 KB, for one CQL step) to
# stderr; the progress line already says it is autotuning. Keys a torch lacks are left out.
QUIET_AUTOTUNE = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


def inductor_overrides(pcfg) -> dict | None:
    """pretrain.max_autotune_gemm -> Inductor options for the compiled pre-training step (None: the
    defaults of algo.fast_modes.inductor_options), quiet."""
    if not pcfg.max_autotune_gemm:
        return None
    import torch._inductor.config as inductor_config

    _drop_benign_autotune_errors()
    return {"max_autotune_gemm": True, **{k: v for k, v in QUIET_AUTOTUNE.items() if hasattr(inductor_config, k)}}


class _BenignAutotuneErrors(logging.Filter):
    """Inductor logs an ERROR for each candidate GEMM kernel that needs more shared memory than the GPU
    has ("out of resource"), then ignores that candidate: 62 three-line errors for a CQL step on an H100.
    Only those are dropped; any other autotuning error still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("Runtime error during autotuning" in str(record.msg) and "out of resource" in record.getMessage())


def _drop_benign_autotune_errors() -> None:
    log = logging.getLogger("torch._inductor.select_algorithm")
    if not any(isinstance(f, _BenignAutotuneErrors) for f in log.filters):
        log.addFilter(_BenignAutotuneErrors())


def _rng_states(agent: Agent, sampler: DeviceSampler) -> dict[str, torch.Tensor]:
    states = {"torch_cpu": torch.get_rng_state(), "sampler": sampler.gen.get_state()}
    if agent.device.type == "cuda":  # policy noise in the CQL / Cal-QL losses
        states["torch_cuda"] = torch.cuda.get_rng_state(agent.device)
    return states


def _save_partial(path: Path, agent: Agent, sampler: DeviceSampler, step: int, algo: str) -> None:
    """Atomically (temp file + rename): a kill while writing leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"agent": agent.state_dict(), "step": step, "algo": algo, "n": sampler.n,
             "rng": _rng_states(agent, sampler)}
    replace_durably(path, lambda f: torch.save(state, f))  # fsynced before the rename


def _load_partial(path: Path, agent: Agent, sampler: DeviceSampler, steps: int, algo: str) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["algo"] != algo:
        raise ValueError(f"{path}: written by {state['algo']} pre-training, this run pre-trains with {algo}; "
                         f"remove the file to pre-train from scratch")
    if state["n"] != sampler.n:
        raise ValueError(f"{path}: written for an offline dataset of {state['n']} transitions, this run's "
                         f"has {sampler.n}; remove the file to pre-train from scratch")
    if not 0 < state["step"] < steps:
        raise ValueError(f"{path}: step {state['step']} is outside this run's 1..{steps - 1}")
    agent.load_state_dict(state["agent"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch_cpu"])
    sampler.gen.set_state(rng["sampler"])
    if "torch_cuda" in rng and agent.device.type == "cuda":
        torch.cuda.set_rng_state(rng["torch_cuda"], agent.device)
    return int(state["step"])
