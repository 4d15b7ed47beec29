"""How the learner bench varies its rows: Inductor option sets (--inductor) and batches drawn as
the pre-training loop draws them (--pretrain-sampled). Kept apart from bench/learner.py's timing."""

from __future__ import annotations

import ast

import torch
import torch._inductor.config  # --inductor keys are checked against it

from wsrl_dist.algo.types import Batch


def inductor_sets(spec: str, compiled: bool) -> list[tuple[str, dict]]:
    """--inductor 'default;combo_kernels=1,aggressive_fusion=1' -> [(row label suffix, options)].
    Values parse as Python literals where they can (1, True, 'x'), else stay strings. Rows that do not
    compile run once, unpatched."""
    if not spec or not compiled:
        return [("", {})]
    sets = []
    for part in (p.strip() for p in spec.split(";")):
        if part in ("", "default"):
            sets.append(("", {}))
            continue
        opts = {}
        for kv in part.split(","):
            key, sep, val = kv.partition("=")
            if not sep or not hasattr(torch._inductor.config, key.strip().split(".")[0]):
                raise ValueError(f"--inductor: {kv!r} is not key=value with a torch._inductor.config key")
            try:
                opts[key.strip()] = ast.literal_eval(val.strip())
            except (ValueError, SyntaxError):
                opts[key.strip()] = val.strip()
        # labelled by key alone where the value is True, else key=value (combo_kernels=False)
        sets.append(("+" + "+".join(k.rsplit(".", 1)[-1] + ("" if v is True else f"={v}") for k, v in opts.items()),
                     opts))
    return sets


SAMPLED_ROWS = 1_000_000  # a D4RL-sized dataset for --pretrain-sampled rows (on a GPU)


def job_batches(data: Batch, device: torch.device, how: str):
    """next_batch() drawing batch-256 steps from `data` (a dataset's rows on `device`) as the
    pre-training loop does: "chunked" (pretrain.ChunkedBatches) or "perstep" (one sample call a step)."""
    from wsrl_dist.pretrain import CHUNK_ROWS, ChunkedBatches, DeviceSampler

    if how not in ("chunked", "perstep"):
        raise ValueError(f"sampled must be chunked or perstep, got {how!r}")
    cols = {"observations": data.observations, "actions": data.actions, "rewards": data.rewards,
            "next_observations": data.next_observations, "masks": data.masks,
            "mc_returns": torch.zeros(len(data.rewards), device=device)}
    draws = ChunkedBatches(DeviceSampler(cols, device, seed=0), 256, steps=10 ** 12,
                           chunk_rows=CHUNK_ROWS if how == "chunked" else 256)
    step = [0]

    def next_batch() -> Batch:
        step[0] += 1
        return draws.at(step[0])

    return next_batch
