"""Flat-buffer layouts of the fused formulation: where each parameter lives in a network's ONE flat buffer.

algo/fused.py keeps each network's parameters, Adam moments and step count in one flat buffer per
role; FlatLayout maps parameter names to aligned slices of such a buffer (and back), CriticLayout
does the same for the ensemble critic (per-member trunks + one shared Q head). Pure bookkeeping of
shapes and offsets, no update math: apart from algo/fused.py so the bundle's math reads without it.
algo/fused.py re-exports these names.
"""

from __future__ import annotations

import math

import torch

Tensors = dict[str, torch.Tensor]
_ALIGN = 8  # flat-buffer alignment in elements: 32 bytes of fp32 (FlatLayout)


class FlatLayout:
    """Named per-unit shapes packed along one flat last dim; `views` unpacks without copying.

    `align`: every slice starts, and the unit's row ends, at a multiple of `align` elements. cuBLAS
    runs its vectorised tensor-core GEMMs only on 16-byte-aligned matrices: with one 1-wide Q-head
    bias in the middle, an unaligned member size (73,217 floats at locomotion sizes) put every other
    ensemble member at a 4-byte offset and sent the batched GEMMs to scalar align1 kernels.
    `stored`: a larger shape to keep for a name (more leading rows, the extra ones zero), so that a
    GEMM can read the parameter padded to an aligned width without a copy; `views` gives the stored
    shapes, `param_views` the parameters' own (the leading rows of the stored ones).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], align: int = 1,
                 stored: dict[str, tuple[int, ...]] | None = None):
        self.param_shapes = shapes
        self.shapes = {n: (stored or {}).get(n, shape) for n, shape in shapes.items()}
        for n, shape in (stored or {}).items():
            if len(shape) != len(shapes[n]) or shape[1:] != shapes[n][1:] or shape[0] < shapes[n][0]:
                raise ValueError(f"stored shape {shape} of {n} does not extend {shapes[n]} by leading rows")
        self.slices: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            self.slices[name] = (offset, offset + n)
            offset = -(-(offset + n) // align) * align
        self.size = offset

    def views(self, flat: torch.Tensor) -> Tensors:
        lead = flat.shape[:-1]
        return {n: flat[..., a:b].view((*lead, *self.shapes[n])) for n, (a, b) in self.slices.items()}

    def param_views(self, flat: torch.Tensor) -> Tensors:
        """The parameters' own shapes: the leading rows of each stored view."""
        lead = len(flat.shape[:-1])
        return {n: v[(slice(None),) * lead + (slice(0, self.param_shapes[n][0]),)] if v.dim() > lead else v
                for n, v in self.views(flat).items()}

    def flatten(self, parts: Tensors, lead: int) -> torch.Tensor:
        """Inverse of views for tensors with `lead` leading dims (one concatenation kernel; the
        alignment gaps are zeros)."""
        pieces, end = [], 0
        for n, (a, b) in self.slices.items():
            x = parts[n]
            if a > end:
                pieces.append(x.new_zeros(*x.shape[:lead], a - end))
            pieces.append(x.reshape(*x.shape[:lead], -1))
            end = b
        if self.size > end:
            pieces.append(pieces[-1].new_zeros(*pieces[-1].shape[:lead], self.size - end))
        return torch.cat(pieces, -1)


class CriticLayout:
    """The critic's flat row [..., size]: E per-member trunks (a FlatLayout `trunk` each, packed as
    [..., E, trunk.size]), then the one Q head all members share (`head`, official layout; empty
    with per-member heads, net.shared_q_head=false, whose heads are in the trunk). One buffer per
    role still takes one Adam or Polyak update.

    `views` / `param_views`: trunk tensors [..., E, ...], head tensors [..., ...]; `gather`: views
    with only the chosen members' trunks [S, k, ...] (the target critic's sampled subset) and the
    shared head; `flatten`: inverse of `views` for S seeds."""

    def __init__(self, trunk: FlatLayout, head: FlatLayout, ensemble: int):
        self.trunk, self.head, self.ensemble = trunk, head, ensemble
        self.trunk_size = ensemble * trunk.size  # a multiple of the alignment, so the head is aligned
        self.size = self.trunk_size + head.size

    def _split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = flat.shape[:-1]
        return flat[..., :self.trunk_size].view(*lead, self.ensemble, self.trunk.size), flat[..., self.trunk_size:]

    def views(self, flat: torch.Tensor) -> Tensors:
        trunk, head = self._split(flat)
        return {**self.trunk.views(trunk), **self.head.views(head)}

    def param_views(self, flat: torch.Tensor) -> Tensors:
        trunk, head = self._split(flat)
        return {**self.trunk.param_views(trunk), **self.head.param_views(head)}

    def gather(self, flat: torch.Tensor, members: torch.Tensor) -> Tensors:
        """flat [S, size], members [S, k] -> views of a copy holding the k members' trunks and the head."""
        trunk, head = self._split(flat)
        chosen = torch.gather(trunk, 1, members.unsqueeze(-1).expand(-1, -1, trunk.shape[-1]))
        return {**self.trunk.views(chosen), **self.head.views(head)}

    def flatten(self, parts: Tensors, lead: int = 1) -> torch.Tensor:
        """parts with `lead` seed dims ([S, E, ...] trunk, [S, ...] head) -> [S, size]."""
        if lead != 1:
            raise ValueError("CriticLayout.flatten: lead counts the seed dims only (one): the critic "
                             "buffer is [S, size] since the Q head is shared")
        trunk = self.trunk.flatten({n: parts[n] for n in self.trunk.slices}, 2)
        pieces = [trunk.reshape(trunk.shape[0], -1)]
        if self.head.size:
            pieces.append(self.head.flatten({n: parts[n] for n in self.head.slices}, 1))
        return torch.cat(pieces, -1)
