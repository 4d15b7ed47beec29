"""Which fast path runs: the mode names, their resolution against the device and matmul dtype, and
the Inductor options of the compiled fused modes.

Decisions only, no update math: config.py validates run.fast_path against MODES, the learner and
local.py resolve `auto` here, and algo/fast.py / algo/fused_bundles.py build what the resolved mode
names. Apart from the bundle makers so that a reader (and config.py) sees every mode and every
refusal in one short file. algo/fast.py re-exports all of it.
"""

from __future__ import annotations

import torch

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
