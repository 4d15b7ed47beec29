"""Prometheus metrics for a wsrl_dist job: every metric is defined once here (the ops layer, off the data path).

Ray actors never serve metrics: rollout workers, replay shards and the learner return plain stats dicts,
the job driver merges them into one SNAPSHOT dict, and `MetricsServer` exports the latest snapshot
through a custom collector at scrape time (no prometheus_client objects cross process boundaries).

SNAPSHOT schema (every key optional; a missing key is simply not exported):
    phase                     str  "pretrain" | "warmup" | "online" | "done"
    env_steps_total           int  env steps taken by all rollout workers since the job started
    env_steps_by_worker       {worker_id: int}  the same, per rollout worker (cumulative)
    env_steps_per_second      float  recent rate, all workers together
    critic_updates_total      int  critic gradient steps since the job started
    critic_updates_per_second float  recent rate
    utd_actual                float  critic updates per env step, measured over the recent window
    utd_target                float  the configured update-to-data ratio
    limiter_blocked_seconds   {"learner": s, "rollout": s}  cumulative seconds each side waited on the
                              UTD rate limiter
    replay                    {shard_id: {"size": int, "inserts": int, "samples": int,
                                          "rejected": {reason: int}}}  size in transitions; inserts,
                              samples and rejected are cumulative (inserts/samples in transitions,
                              rejected in chunks)
    rejected_chunks           {reason: int}  cumulative chunks dropped job-wide (all shards and the
                              driver's own checks), by reason, e.g. "stale_version", "bad_shape"
    policy_lag                histogram dict (see `Histogram.to_dict`), in weight versions between the
                              policy that acted and the learner's version when the chunk was inserted
    weight_publish_seconds    histogram dict, learner publish -> ray.put done
    weights_version           int  latest published weights version
    worker_restarts_total     int  rollout worker restarts since the job started
    replay_rows_lost_total    int  replay rows that died with restarted replay shards (inserted after
                              the shard's last snapshot; runtime.replay_snapshot_s bounds them)
    replay_restarts_total     int  replay shard restarts since the job started
    workers_alive             int  rollout workers currently alive
    workers_pending           int  rollout workers Ray has not placed yet (no resources free;
                              runtime/orchestration/placement.py)
    episode_return            float  mean undiscounted return of recently finished episodes
    normalized_score          float  the same, normalized per task (D4RL convention, 0-100)
    learner_step_seconds      histogram dict, wall time of one learner update step
    gpu_memory_bytes          int  learner GPU memory allocated (torch.cuda.memory_allocated)
    learner_device_busy       float  share of wall time the learner's device spends running update
                              bundles (sampled bundle device time x bundles/s): ~1 = device-bound
    learner_cpu_seconds       float  cumulative CPU seconds of the learner's process, all threads
                              (runtime/instrumentation/procstats.py; a multi-seed learner's seeds share one process)
    learner_gc_seconds        float  cumulative seconds that process spent in garbage collection
    learner_grant_calls       {"granted": int, "refused": int}  cumulative env-step grant requests
                              from rollout workers the learner answered, by outcome
    learner_loop_seconds      {part: s}  cumulative wall seconds of the learner's training loop by
                              part: limiter_wait, sample_wait, assemble_to_device, update_launch,
                              publish (runtime/datapath/learner.py time split)
    stage                     str  one of STAGES: "prepare" (the learner's prepare before any build or
                              pre-training step), "build", "pretrain", "warmup", "online", "done"
    stage_progress            float  the stage's share done, 0..1
    stage_steps_per_second    float  the stage's recent rate (behaviour / pre-training / env steps per s)
    stage_eta_seconds         float  seconds left in the stage at that rate
A multi-seed job serves one snapshot per seed, each series with a leading `seed` label
(`labelled_metric_families`); a single-seed job's series carry no seed label.
A histogram dict is {"buckets": [upper bounds, +Inf excluded], "counts": [non-cumulative count per
bucket, len(buckets) + 1, the last one for values above the last bound], "sum": float, "count": int}
(ops/histogram.py, re-exported here with its bucket bounds).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from wsrl_dist.ops.histogram import POLICY_LAG_BUCKETS, SECONDS_BUCKETS, Histogram  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("pretrain", "warmup", "online", "done")
# finer than PHASES: the "pretrain" phase is the learner's prepare, which builds a dataset and pre-trains
STAGES: tuple[str, ...] = ("prepare", "build", "pretrain", "warmup", "online", "done")


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric. `name` is the name PromQL sees (counters end in `_total`).

    `source` says how to read it from the snapshot: "scalar" (snapshot[key]), "map" (snapshot[key] is
    {label_value: number}, one label), "replay" (per-shard field `field` of snapshot["replay"]),
    "replay_rejected" (per shard and reason), "phase" (one-hot over PHASES), "stage" (one-hot over
    STAGES), "histogram".
    """

    name: str
    type: str  # "counter" | "gauge" | "histogram"
    help: str
    key: str
    source: str = "scalar"
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    field: str | None = None


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("wsrl_phase", "gauge", "1 for the job's current stage (pretrain, warmup, online, done), 0 for the others.",
               "phase", "phase", ("phase",)),
    MetricSpec("wsrl_stage", "gauge",
               "1 for the job's current stage (prepare, build, pretrain, warmup, online, done), 0 for the others.",
               "stage", "stage", ("stage",)),
    MetricSpec("wsrl_stage_progress", "gauge", "Share of the current stage done (0..1).", "stage_progress"),
    MetricSpec("wsrl_stage_steps_per_second", "gauge",
               "Recent steps per second of the current stage (behaviour, pre-training or env steps).",
               "stage_steps_per_second"),
    MetricSpec("wsrl_stage_eta_seconds", "gauge", "Seconds left in the current stage at its recent rate.",
               "stage_eta_seconds"),
    MetricSpec("wsrl_env_steps_total", "counter", "Environment steps taken by all rollout workers.",
               "env_steps_total"),
    MetricSpec("wsrl_worker_env_steps_total", "counter", "Environment steps taken, per rollout worker.",
               "env_steps_by_worker", "map", ("worker_id",)),
    MetricSpec("wsrl_env_steps_per_second", "gauge", "Recent environment steps per second, all workers.",
               "env_steps_per_second"),
    MetricSpec("wsrl_critic_updates_total", "counter", "Critic gradient steps taken by the learner.",
               "critic_updates_total"),
    MetricSpec("wsrl_critic_updates_per_second", "gauge", "Recent critic gradient steps per second.",
               "critic_updates_per_second"),
    MetricSpec("wsrl_utd_actual", "gauge", "Measured critic updates per environment step (recent window).",
               "utd_actual"),
    MetricSpec("wsrl_utd_target", "gauge", "Configured critic updates per environment step.", "utd_target"),
    MetricSpec("wsrl_limiter_blocked_seconds_total", "counter",
               "Seconds a side (learner or rollout) waited on the UTD rate limiter.",
               "limiter_blocked_seconds", "map", ("side",)),
    MetricSpec("wsrl_replay_size", "gauge", "Transitions held by a replay shard.",
               "replay", "replay", ("shard",), field="size"),
    MetricSpec("wsrl_replay_inserts_total", "counter", "Transitions inserted into a replay shard.",
               "replay", "replay", ("shard",), field="inserts"),
    MetricSpec("wsrl_replay_samples_total", "counter", "Transitions sampled from a replay shard.",
               "replay", "replay", ("shard",), field="samples"),
    MetricSpec("wsrl_replay_rejected_total", "counter", "Chunks a replay shard refused, by reason.",
               "replay", "replay_rejected", ("shard", "reason")),
    MetricSpec("wsrl_rejected_chunks_total", "counter", "Chunks dropped job-wide, by reason.",
               "rejected_chunks", "map", ("reason",)),
    MetricSpec("wsrl_policy_lag_versions", "histogram",
               "Weight versions between the acting policy and the learner when a chunk was inserted.",
               "policy_lag", "histogram", buckets=POLICY_LAG_BUCKETS),
    MetricSpec("wsrl_weight_publish_seconds", "histogram", "Seconds to publish one weights version.",
               "weight_publish_seconds", "histogram", buckets=SECONDS_BUCKETS),
    MetricSpec("wsrl_weights_version", "gauge", "Latest published weights version.", "weights_version"),
    MetricSpec("wsrl_worker_restarts_total", "counter", "Rollout worker restarts.", "worker_restarts_total"),
    MetricSpec("wsrl_replay_rows_lost_total", "counter",
               "Replay rows lost with restarted replay shards (inserted after their last snapshot).",
               "replay_rows_lost_total"),
    MetricSpec("wsrl_replay_restarts_total", "counter", "Replay shard restarts.", "replay_restarts_total"),
    MetricSpec("wsrl_workers_alive", "gauge", "Rollout workers currently alive.", "workers_alive"),
    MetricSpec("wsrl_workers_pending", "gauge",
               "Rollout workers waiting for Ray to place them (resources asked not free).",
               "workers_pending"),
    MetricSpec("wsrl_episode_return", "gauge", "Mean undiscounted return of recently finished episodes.",
               "episode_return"),
    MetricSpec("wsrl_normalized_score", "gauge", "Recent episode return, normalized per task (0-100).",
               "normalized_score"),
    MetricSpec("wsrl_learner_step_seconds", "histogram", "Wall time of one learner update step.",
               "learner_step_seconds", "histogram", buckets=SECONDS_BUCKETS),
    MetricSpec("wsrl_gpu_memory_bytes", "gauge", "Learner GPU memory allocated by torch.", "gpu_memory_bytes"),
    MetricSpec("wsrl_learner_device_busy", "gauge",
               "Share of wall time the learner's device runs update bundles (1 = device-bound).",
               "learner_device_busy"),
    MetricSpec("wsrl_learner_cpu_seconds_total", "counter",
               "CPU seconds used by the learner's process (all its threads).", "learner_cpu_seconds"),
    MetricSpec("wsrl_learner_gc_seconds_total", "counter",
               "Seconds the learner's process spent in Python garbage collection.", "learner_gc_seconds"),
    MetricSpec("wsrl_learner_grant_calls_total", "counter",
               "Env-step grant requests from rollout workers answered by the learner, by outcome.",
               "learner_grant_calls", "map", ("outcome",)),
    MetricSpec("wsrl_learner_loop_seconds_total", "counter",
               "Wall seconds of the learner's training loop, by part (waiting on the limiter, waiting "
               "for samples, assembling batches, launching updates, publishing weights).",
               "learner_loop_seconds", "map", ("part",)),
)

METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
HISTOGRAM_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS if m.type == "histogram")


def series_names() -> frozenset[str]:
    """Every series name PromQL can see: METRIC_NAMES plus `_bucket`, `_sum`, `_count` of histograms."""
    extra = {h + s for h in HISTOGRAM_NAMES for s in ("_bucket", "_sum", "_count")}
    return frozenset(METRIC_NAMES) | extra


def _family(spec: MetricSpec, extra: tuple[str, ...] = ()) -> Metric:
    labels = [*extra, *spec.labels]
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    if spec.type == "gauge":
        return GaugeMetricFamily(spec.name, spec.help, labels=labels)
    return HistogramMetricFamily(spec.name, spec.help, labels=labels)


def _fmt_le(x: float) -> str:
    return str(float(x))


def _add_histogram(fam: HistogramMetricFamily, spec: MetricSpec, d: Mapping[str, Any],
                   pre: list[str]) -> None:
    h = Histogram(spec.buckets or d["buckets"]).merge(d)  # validates buckets match the definition
    cum = np.cumsum(h.counts)
    buckets = [(_fmt_le(b), float(c)) for b, c in zip(h.buckets, cum[:-1], strict=True)]
    buckets.append(("+Inf", float(cum[-1])))
    fam.add_metric(pre, buckets, h.sum)


def _fill(fam: Metric, spec: MetricSpec, val: Any, pre: list[str]) -> None:
    """Add the samples of one snapshot value; `pre` = values of labels put before the spec's own."""
    if spec.source == "scalar":
        fam.add_metric(pre, float(val))
    elif spec.source == "map":
        for k, v in sorted(val.items(), key=lambda kv: str(kv[0])):
            fam.add_metric([*pre, str(k)], float(v))
    elif spec.source in ("phase", "stage"):
        values = PHASES if spec.source == "phase" else STAGES
        if val not in values:
            raise ValueError(f"{spec.source} must be one of {values}, got {val!r}")
        for p in values:
            fam.add_metric([*pre, p], 1.0 if p == val else 0.0)
    elif spec.source == "replay":
        for shard, st in sorted(val.items(), key=lambda kv: str(kv[0])):
            if spec.field in st:
                fam.add_metric([*pre, str(shard)], float(st[spec.field]))
    elif spec.source == "replay_rejected":
        for shard, st in sorted(val.items(), key=lambda kv: str(kv[0])):
            for reason, n in sorted(st.get("rejected", {}).items()):
                fam.add_metric([*pre, str(shard), str(reason)], float(n))
    elif spec.source == "histogram":
        _add_histogram(fam, spec, val, pre)
    else:  # pragma: no cover - guarded by the METRICS table
        raise AssertionError(spec.source)


def metric_families(snapshot: Mapping[str, Any], strict: bool = False) -> list[Metric]:
    """Turn one snapshot into metric families; keys absent from the snapshot are skipped.

    A malformed value (wrong type, histogram with foreign buckets, unknown phase) raises when `strict`,
    else it is logged and only that metric is dropped, so one bad stat never blanks the whole scrape.
    """
    return _families({(): snapshot}, (), strict)


def labelled_metric_families(label: str, snapshots: Mapping[Any, Mapping[str, Any]],
                             strict: bool = False) -> list[Metric]:
    """Several snapshots in one scrape, told apart by `label` (the first label of every series):
    {label value: snapshot}, e.g. one snapshot per seed of a multi-seed job (label "seed")."""
    return _families({(str(k),): s for k, s in snapshots.items()}, (label,), strict)


def _families(snapshots: Mapping[tuple[str, ...], Mapping[str, Any]], extra: tuple[str, ...],
              strict: bool) -> list[Metric]:
    out: list[Metric] = []
    for spec in METRICS:
        fam = None
        for pre, snapshot in snapshots.items():
            val = snapshot.get(spec.key)
            if val is None:
                continue
            part = _family(spec, extra)
            try:
                _fill(part, spec, val, list(pre))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                where = f"{dict(zip(extra, pre))} " if pre else ""
                if strict:
                    raise ValueError(f"{where}snapshot[{spec.key!r}] -> {spec.name}: {e}") from e
                log.error("dropping %s: bad %ssnapshot[%r]: %s", spec.name, where, spec.key, e)
                continue
            if fam is None:
                fam = part
            else:
                fam.samples.extend(part.samples)
        if fam is not None:
            out.append(fam)
    return out


class SnapshotCollector(Collector):
    """Custom collector: reads the latest snapshot at scrape time via `snapshot_fn`.

    `snapshot_fn` runs on the HTTP server's thread; it must be cheap and thread-safe (e.g. return a
    dict the driver replaces wholesale, never one it mutates in place).
    """

    def __init__(self, snapshot_fn: Callable[[], Mapping[str, Any]], label: str | None = None) -> None:
        self._snapshot_fn = snapshot_fn
        self._label = label  # set: snapshot_fn returns {label value: snapshot} (labelled_metric_families)

    def collect(self) -> Iterable[Metric]:
        if self._label is not None:
            return labelled_metric_families(self._label, self._snapshot_fn() or {})
        return metric_families(self._snapshot_fn() or {})

    def describe(self) -> Iterator[Metric]:
        # Lets the registry check name clashes without calling snapshot_fn at register time.
        return iter([_family(spec) for spec in METRICS])


class MetricsServer:
    """HTTP /metrics exporter for one job, with its own registry (never the global one)."""

    def __init__(
        self, snapshot_fn: Callable[[], Mapping[str, Any]], host: str = "127.0.0.1", port: int = 0,
        label: str | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot_fn, label))
        self.host, self.port = host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Start serving; returns the bound (host, port) (port 0 picks a free port)."""
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = int(self._server.server_port)
        log.info("metrics exporter on http://%s:%d/metrics", self.host, self.port)
        return self.host, self.port

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
