"""ReplayFeed: replay shards -> one bundle's Batch on the learner's device (the learner's sampling).

Why its own piece: a GPU bundle takes ~1 ms, and the loop around it used to cost several times that
(BENCHMARKS.md, end-to-end time split): one Ray round trip per bundle, a numpy concatenation and
shuffle, and five pageable (synchronous) host->device copies. The feed instead
- asks for `bundles_per_request` (G) bundles' rows in ONE call per shard (rows split over the shards
  by their sizes), with `depth` such requests kept in flight while the learner updates;
- shuffles the shards' rows straight into one host buffer laid out field by field (observations,
  actions, rewards, next observations, masks), so every bundle's slice of every field is a
  contiguous view; on a GPU that buffer is pinned and goes to the device in ONE non-blocking copy;
- hands the G bundles out one at a time as views of the device buffer;
- for retention baselines (RLPD), draws the request's offline rows in ONE call of the offline
  sampler (G bundles' worth) and writes online + offline rows of every bundle side by side with one
  `torch.cat(out=)` per field. Mixing per bundle (one draw and a cat per field each) was ~12 kernel
  launches and their host time per bundle per seed: half of a 4-seed RLPD cell's online loop
  (186 of 380 s, docs/RESULTS.md).

Reuse is safe without extra syncs: every copy into the device buffer is queued on the stream that
runs the bundles, after the bundles that read the previous contents; a pinned host buffer is
refilled only after the event recorded behind its copy (two alternate, so that wait is ~never felt).

Staleness: a bundle's rows were sampled up to (depth + 1) * G bundles earlier, i.e. that many env
steps of the newest data cannot appear in it (the reference samples right before each update; with
a replay of >= 5,000 rows this shifts < 1% of the sampling distribution). G = 1 with depth = 0 is
the reference's lock-step sampling.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import ray
import torch

from wsrl_dist.algo.types import Batch

# (field, per-row shape key): obs_dim ("o"), act_dim ("a") or a scalar per row (None)
_FIELDS = (("observations", "o"), ("actions", "a"), ("rewards", None), ("next_observations", "o"),
           ("masks", None))


def split_rows(n: int, sizes: list[int]) -> np.ndarray:
    """n rows over shards in proportion to their sizes (largest remainders; equal when all empty)."""
    s = np.asarray(sizes, dtype=np.float64)
    share = s / s.sum() if s.sum() > 0 else np.full(len(s), 1.0 / len(s))
    counts = np.floor(share * n).astype(int)
    counts[np.argsort(-(share * n - counts))[: n - counts.sum()]] += 1
    return counts


class _Staging:
    """One request's rows: a host buffer (pinned on CUDA) and the device buffer its views come from."""

    def __init__(self, rows: int, widths: list[int | None], device: torch.device):
        self.rows, self.widths = rows, widths
        size = rows * _row_size(widths)
        cuda = device.type == "cuda"
        self.host = torch.empty(size, dtype=torch.float32, pin_memory=cuda)
        self.host_np = self.host.numpy()
        self.event = torch.cuda.Event() if cuda else None
        self.copied = False  # an async copy out of `host` was queued (event recorded behind it)

    def host_fields(self) -> list[np.ndarray]:
        return _field_views(self.host_np, self.rows, self.widths)

    def wait_reusable(self) -> None:
        if self.event is not None and self.copied:
            self.event.synchronize()
            self.copied = False


def _row_size(widths: list[int | None]) -> int:
    return sum(w or 1 for w in widths)


def _field_views(flat: Any, rows: int, widths: list[int | None]) -> list[Any]:
    """[rows, w] views ([rows] for scalar fields, w None) of consecutive field blocks of `flat`."""
    out, offset = [], 0
    for w in widths:
        block = flat[offset: offset + rows * (w or 1)]
        out.append(block.reshape(rows, w) if w is not None else block)
        offset += rows * (w or 1)
    return out


class ReplayFeed:
    """Batches of `rows` online rows for one learner from its replay shards (see module docstring).

    `next()` -> Batch of views valid until the bundle that reads it has been queued (the next call
    may overwrite them on CPU). `env_steps` / `shard_sizes`: the shards' counters as of the newest
    answer (each sample call also reports them)."""

    def __init__(self, shards: list, rows: int, obs_dim: int, act_dim: int, device: torch.device,
                 rng: np.random.Generator, bundles_per_request: int = 1, depth: int = 0,
                 shard_sizes: list[int] | None = None, mc_returns: bool = False,
                 offline: Any = None, offline_rows: int = 0):
        """`offline` (a pretrain.DeviceSampler, or anything whose sample(n) gives a Batch on `device`)
        and `offline_rows`: each bundle is `rows` online rows followed by `offline_rows` offline rows
        (the reference's concatenation order, local.py); a field the offline side lacks (mc_returns)
        is None in the bundle."""
        if not shards:
            raise ValueError("ReplayFeed needs at least one replay shard")
        if rows < 1 or bundles_per_request < 1 or depth < 0:
            raise ValueError(f"ReplayFeed: rows ({rows}) and bundles_per_request "
                             f"({bundles_per_request}) must be >= 1, depth ({depth}) >= 0")
        if offline_rows < 0 or (offline_rows > 0) != (offline is not None):
            raise ValueError(f"ReplayFeed: offline_rows ({offline_rows}) must be > 0 exactly when an "
                             f"offline sampler is given")
        self.shards, self.rows, self.device, self.rng = list(shards), int(rows), device, rng
        self.group, self.depth = int(bundles_per_request), int(depth)
        dims = {"o": int(obs_dim), "a": int(act_dim), None: None}
        # Batch's field order; mc_returns (Cal-QL kept online) is its sixth field
        self.fields = _FIELDS + ((("mc_returns", None),) if mc_returns else ())
        self.widths = [dims[w] for _, w in self.fields]
        n = self.rows * self.group
        self._staging = [_Staging(n, self.widths, device) for _ in range(2)]
        self._next_staging = 0
        # on a CPU learner the host buffer IS the batch memory: no device copy at all
        self._device_flat = (torch.empty(n * _row_size(self.widths), dtype=torch.float32, device=device)
                             if device.type == "cuda" else None)
        self._pending: deque = deque()  # sample requests in flight, oldest first
        self._ready: deque[Batch] = deque()  # bundles of the current request not handed out yet
        self.shard_sizes = list(shard_sizes) if shard_sizes is not None else [0] * len(self.shards)
        self.offline, self.offline_rows = offline, int(offline_rows)
        # bundle-major [G, rows + offline_rows, width] buffers the mixed bundles are views of (their
        # addresses stay fixed request after request, like the device buffer's)
        self._mixed = ([torch.empty(self.group, self.rows + self.offline_rows, w or 1, device=device)
                        for w in self.widths] if offline is not None else None)
        self.env_steps = 0
        self.requests = 0
        self.wait_seconds = 0.0  # time next() spent blocked on sample answers
        # where the rest of next() goes, summed over requests (the learner's assemble_to_device):
        # submitting the prefetched sample calls (and any top-up), waiting for a pinned buffer's
        # last copy, the shuffle into it, queueing the host->device copy, making the bundles' views
        self.split = dict.fromkeys(("submit", "reuse_wait", "shuffle", "copy", "views"), 0.0)

    # ------------------------------------------------------------------ learner side
    def next(self) -> Batch:
        """One bundle's rows on the device; blocks on the oldest request when none is buffered."""
        if not self._ready:
            t0 = time.perf_counter()
            parts = ray.get(self._pending.popleft() if self._pending else self._request())
            self.wait_seconds += time.perf_counter() - t0
            self._fill(parts)
        return self._ready.popleft()

    def at_request_start(self) -> bool:
        """Whether next_group() can hand out a whole request (no bundle of the current one taken)."""
        return len(self._ready) in (0, self.group)

    def next_group(self) -> list[Batch]:
        """The next request's G bundles at once (their views keep the same addresses request
        after request on a GPU: the device buffer's G slices). Only at a request start."""
        if not self.at_request_start():
            raise RuntimeError("next_group() in the middle of a request: take its bundles with next()")
        out = [self.next()]
        out += [self._ready.popleft() for _ in range(self.group - 1)]
        return out

    def close(self) -> None:
        """Wait for the requests still in flight (their rows are dropped)."""
        while self._pending:
            ray.get(self._pending.popleft())
        self._ready.clear()

    # ------------------------------------------------------------------ internals
    def _request(self) -> list:
        counts = split_rows(self.rows * self.group, self.shard_sizes)
        self.requests += 1
        return [s.sample.remote(int(k)) for s, k in zip(self.shards, counts)]

    def _fill(self, parts: list[dict]) -> None:
        t0 = time.perf_counter()
        # keep `depth` requests in flight while this one is unpacked and updated on
        while len(self._pending) < self.depth:
            self._pending.append(self._request())
        self.shard_sizes = [int(p["size"]) for p in parts]
        self.env_steps = max(self.env_steps, sum(int(p["env_steps"]) for p in parts))
        rows = [p for p in parts if "rewards" in p]
        n = self.rows * self.group
        short = n - sum(len(p["rewards"]) for p in rows)
        if short > 0:  # a split made on stale sizes hit an empty shard: top up from the fullest
            rows.append(ray.get(self.shards[int(np.argmax(self.shard_sizes))].sample.remote(short)))
        stage = self._staging[self._next_staging]
        self._next_staging ^= 1
        t1 = time.perf_counter()
        stage.wait_reusable()
        t2 = time.perf_counter()
        dst = stage.host_fields()
        if len(rows) == 1:
            # one shard's answer: rows drawn uniformly with replacement, i.e. i.i.d., so their order
            # is already random and a permutation would not change the batch's distribution; plain
            # copies cost ~4 us a bundle where the scatter below measured ~150 us on the GPU host
            # (14 s of a 4-seed study cell's 380 s host loop, per seed: BENCHMARKS.md "A study cell")
            for (name, _), view in zip(self.fields, dst):
                view[:] = rows[0][name]
        else:
            # a random permutation of the concatenated rows, written in place: row i of part k goes
            # to position perm[offset + i] (mixes shards inside every critic minibatch)
            perm, offset = self.rng.permutation(n), 0
            for part in rows:
                k = len(part["rewards"])
                where = perm[offset: offset + k]
                for (name, _), view in zip(self.fields, dst):
                    view[where] = part[name]
                offset += k
        t3 = time.perf_counter()
        if self._device_flat is None:
            flat = stage.host
        else:
            self._device_flat.copy_(stage.host, non_blocking=True)
            stage.event.record()
            stage.copied = True
            flat = self._device_flat
        t4 = time.perf_counter()
        fields = _field_views(flat, n, self.widths)
        if self.offline is not None:
            self._ready.extend(self._mix(fields))
        else:
            for g in range(self.group):
                sl = slice(g * self.rows, (g + 1) * self.rows)
                self._ready.append(Batch(*(f[sl] for f in fields)))
        t5 = time.perf_counter()
        for key, dt in zip(self.split, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            self.split[key] += dt

    def _mix(self, fields: list[torch.Tensor]) -> list[Batch]:
        """The request's G bundles, each its online rows then offline rows: one offline draw of
        G * offline_rows rows and one cat per field into the bundle-major buffers."""
        g, on, off = self.group, self.rows, self.offline_rows
        drawn = self.offline.sample(g * off)
        cols = []
        for (name, _), w, f, buf in zip(self.fields, self.widths, fields, self._mixed):
            o = getattr(drawn, name)
            if o is None:
                cols.append(None)
                continue
            torch.cat([f.reshape(g, on, -1), o.reshape(g, off, -1)], dim=1, out=buf)
            cols.append(buf if w is not None else buf[:, :, 0])  # scalar fields: [G, rows]
        return [Batch(*(None if c is None else c[i] for c in cols)) for i in range(g)]
