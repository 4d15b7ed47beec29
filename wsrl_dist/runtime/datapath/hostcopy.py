"""HostCopy: read a GPU tensor on the host without stalling the learner's stream of bundles.

`tensor.cpu()` waits for every bundle queued before it: once per published weight version that drains
the GPU queue and leaves the GPU idle while Python samples and launches the next bundle (3.3 ms of a
7.7 ms loop in the end-to-end split of BENCHMARKS.md). Here the values are snapshotted on the compute
stream (one small device copy, so later bundles may overwrite the source), copied to pinned host
memory on a side stream, and collected once an event says they have arrived. One copy is in flight
at a time; `start` while one is still running returns False and the caller skips that copy (a
newer one will follow). On a CPU device `start` copies at once and `poll` returns it immediately.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class HostCopy:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self.cuda else None
        self._event = torch.cuda.Event() if self.cuda else None
        self._host: torch.Tensor | None = None
        self._snapshot: torch.Tensor | None = None  # kept alive until its copy has landed
        self._tag: Any = None
        self._busy = False
        self.skipped = 0  # start() calls refused because a copy was still in flight

    @property
    def busy(self) -> bool:
        return self._busy

    def start(self, tensors: list[torch.Tensor], tag: Any = None) -> bool:
        """Begin copying `tensors` (any device), flattened and concatenated as float32, to the host;
        False (skipped, nothing queued) while the previous copy has not been collected by poll()."""
        if self._busy:
            self.skipped += 1
            return False
        # one concatenation on the compute stream: a snapshot later bundles may not overwrite
        snap = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        if self._host is None or self._host.numel() != snap.numel():
            self._host = torch.empty(snap.numel(), dtype=torch.float32, pin_memory=self.cuda)
        self._tag, self._busy = tag, True
        if not self.cuda:
            self._host.copy_(snap)
            return True
        self._snapshot = snap
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            self._host.copy_(snap, non_blocking=True)
            self._event.record()
        return True

    def poll(self, block: bool = False) -> tuple[Any, np.ndarray] | None:
        """(tag, host values) of the copy in flight once it has landed (block: wait for it), else
        None. The array is a view of the pinned buffer, valid until the next start()."""
        if not self._busy:
            return None
        if self.cuda:
            if not block and not self._event.query():
                return None
            self._event.synchronize()
            self._snapshot = None
        self._busy = False
        return self._tag, self._host.numpy()
