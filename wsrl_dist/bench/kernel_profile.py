"""Where a benchmarked call's time goes: torch.profiler over N calls, kernels (GPU) or ops (CPU) sorted
by time per call, grouped as gemm / fused (Inductor's Triton kernels) / copy / other.

Used by `wsrl-dist bench learner --profile N` (bench/learner.py) after each row is timed. Apart from
bench/learner.py because reading a profile is its own job, not part of timing the variants;
bench/learner.py re-exports print_profile, profile_calls and kernel_category.
"""

from __future__ import annotations

import re

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# kernel-name patterns of matrix multiplies: cuBLAS (incl. Hopper's nvjet), CUTLASS, xmma
_GEMM = re.compile(r"gemm|cutlass|xmma|nvjet|cublas|ampere_|sm90_|sm80_|^aten::(bmm|baddbmm|mm|addmm|matmul)$",
                   re.IGNORECASE)


def kernel_category(name: str) -> str:
    """gemm | fused (Inductor-generated Triton kernels) | copy | other."""
    if _GEMM.search(name):
        return "gemm"
    if name.startswith("triton"):
        return "fused"
    if re.search(r"memcpy|memset|copy|CatArray|aten::(cat|clone|contiguous|copy_)$", name, re.IGNORECASE):
        return "copy"
    return "other"


def profile_calls(call, device: torch.device, n: int) -> list[tuple[str, float, float]]:
    """(kernel or op name, launches per call, microseconds per call) over `n` profiled calls, most
    time first: GPU kernels' device time on CUDA (graph replays included), ops' self CPU time on CPU."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            call()
        _sync(device)
    rows = []
    for ev in prof.key_averages():
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if us > 0 and (not cuda or ev.device_type == torch.autograd.DeviceType.CUDA):
            rows.append((ev.key, ev.count / n, us / n))
    return sorted(rows, key=lambda r: -r[2])


def print_profile(rows: list[tuple[str, float, float]], label: str, unit: str, top: int = 12,
                  wall_us: float | None = None) -> None:
    """`wall_us`: the timed wall time per call; on a GPU, wall minus kernel time is what the host
    (Python, launches, input copies) adds on top of the device's work."""
    total_n, total_us = sum(r[1] for r in rows), sum(r[2] for r in rows)
    by_cat: dict[str, list[float]] = {}
    for name, cnt, us in rows:
        acc = by_cat.setdefault(kernel_category(name), [0.0, 0.0])
        acc[0] += cnt
        acc[1] += us
    cats = ", ".join(f"{c} {v[1]:.0f} us / {v[0]:.0f}" for c, v in sorted(by_cat.items(), key=lambda kv: -kv[1][1]))
    print(f"# profile {label}: {total_n:.0f} {unit}, {total_us:.0f} us per call ({cats})")
    if wall_us is not None and unit == "kernels":
        print(f"#   wall {wall_us:.0f} us per call: device busy {min(total_us / wall_us, 1.0):.0%}")
    for name, cnt, us in rows[:top]:
        print(f"#   {us:>9.1f} us {cnt:>6.1f}x  {kernel_category(name):<6} {name[:90]}")
