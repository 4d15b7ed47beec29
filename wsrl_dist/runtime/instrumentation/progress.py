"""Progress of a distributed job's stages, for the person who launched it (off the data path).

Stages: build (the offline dataset, by the D4RL-recipe builder), pretrain, warmup, online. Build and
pre-training run inside the learner actor during one blocking `prepare` call: `StageRecord` is the
small thread-safe record the learner fills from the builder's events (data.builder.BuildReport) and
pretrain_agent's callbacks, and serves from a concurrency group of its own (PROGRESS) while prepare
runs. The driver reads it every monitor tick; `StageProgress` turns that and the driver's own env-step
counts into the stage fields of the status, the metrics.jsonl rows and Prometheus (ops/metrics.py:
stage, stage_progress, stage_steps_per_second, stage_eta_seconds), and `StageLines` prints one live
line per stage (tqdm on a terminal; under `ray job submit` or a pipe, a plain line every PLAIN_EVERY
seconds plus the stage's last one). `format_status` is `wsrl-dist status`'s human summary.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import deque
from typing import IO, Any

from tqdm import tqdm

from wsrl_dist.ops.bars import PLAIN_EVERY
from wsrl_dist.ops.metrics import STAGES

__all__ = ["PROGRESS", "STAGES", "StageLines", "StageProgress", "StageRecord", "announce_metrics", "format_status"]
PROGRESS = "progress"  # Ray concurrency group of the learner's progress() (answers while prepare runs)
RATE_WINDOW = 10.0  # seconds of recent counts the steps/s (and so the ETA) is measured over


class StageRecord:
    """The learner's build / pre-training progress: written by the prepare thread, read by progress()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rec: dict[str, Any] = {}
        # the last record of each stage / part that ended, so a driver polling every second still
        # shows its final count (a part can start and end between two polls: the build's rollout)
        self._ended: list[dict[str, Any]] = []

    def _replace(self, rec: dict[str, Any]) -> None:  # caller holds the lock
        if self._rec and (self._rec.get("stage"), self._rec.get("part")) != (rec["stage"], rec.get("part")):
            self._ended.append(self._rec)
        self._rec = rec

    def start(self, stage: str, total: int, **info: Any) -> None:
        with self._lock:
            self._replace({"stage": stage, "done": 0, "total": int(total), **info})

    def set(self, **fields: Any) -> None:
        with self._lock:
            self._rec.update(fields)

    def add(self, n: int) -> None:
        """pretrain_agent's `progress` callback: n more steps (once per step; a resume passes its start)."""
        with self._lock:
            self._rec["done"] = self._rec.get("done", 0) + int(n)

    def build_event(self, ev: dict[str, Any]) -> None:
        """data.builder.BuildReport: {"part": behaviour | rollout, done, total, eval_return, target_return}."""
        with self._lock:
            self._replace({**ev, "stage": "build"})

    def pretrain_log(self, step: int, info: dict[str, float]) -> None:
        """pretrain_agent's `on_log` callback: the latest losses (every run.log_every steps)."""
        with self._lock:
            self._rec["losses"] = dict(info)
            self._rec["loss_step"] = int(step)

    def read(self) -> dict[str, Any]:
        with self._lock:
            return {**self._rec, "ended": list(self._ended)}


def _fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    h, m = divmod(s, 3600)
    m, sec = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class _Rate:
    """Steps per second over the last RATE_WINDOW seconds of (time, count) samples."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> float | None:
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()  # the count went back (a new part): start over
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None


class StageLines:
    """One live line per stage (and part): tqdm on a terminal, plain lines elsewhere. `show` the
    latest count; a line ends when the stage (or part) changes or its count reaches its total."""

    def __init__(self, file: IO[str] | None = None, label: str = "", enabled: bool = True,
                 plain_every: float = PLAIN_EVERY) -> None:
        self.file = file if file is not None else sys.stdout
        self.label, self.enabled, self.plain_every = label, enabled, plain_every
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.key: tuple[str, str] | None = None
        self.closed: set[tuple[str, str]] = set()
        self.bar: tqdm | None = None
        self.last: dict[str, Any] = {}
        self.last_plain = 0.0
        self.printed: int | None = None  # the count of the current line's last plain print

    def _desc(self, stage: str, part: str) -> str:
        name = f"{stage} {part}" if part else stage
        return f"{self.label} {name}".strip()

    def show(self, stage: str, part: str, done: int, total: int, postfix: str = "") -> None:
        if not self.enabled or total <= 0:
            return
        key = (stage, part)
        if key in self.closed:
            return
        if key != self.key:
            self.close()
            self.key, self.last_plain, self.printed = key, 0.0, None
            if self.tty:
                # a terminal that reports no size (a pty from `script`, some CI runners) makes tqdm
                # hide every bar (nrows -1): Python's size query falls back to 100 x 20 there
                size = shutil.get_terminal_size((100, 20))
                # initial: tqdm's own rate counts from the first count seen, not from 0
                self.bar = tqdm(total=total, initial=min(int(done), int(total)), desc=self._desc(stage, part),
                                file=self.file, mininterval=0.5, ncols=size.columns, nrows=size.lines)
        done = min(int(done), int(total))
        self.last = {"done": done, "total": int(total), "postfix": postfix}
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()
        elif time.time() - self.last_plain >= self.plain_every and done < total and done != self.printed:
            self._plain()
        if done >= total:
            self.close()

    def _plain(self) -> None:
        d, t = self.last["done"], self.last["total"]
        pct = 100.0 * d / t if t else 0.0
        tail = f"  {self.last['postfix']}" if self.last["postfix"] else ""
        print(f"{self._desc(*self.key)}: {d}/{t} ({pct:.0f}%){tail}", file=self.file, flush=True)
        self.last_plain, self.printed = time.time(), d

    def close(self, done: int | None = None) -> None:
        """End the current line (with `done` as its final count when given)."""
        if self.key is None:
            return
        if done is not None:
            self.last["done"] = int(done)
            self.last["total"] = max(self.last.get("total", 0), int(done))
        if self.bar is not None:
            self.bar.n = self.last["done"]
            self.bar.set_postfix_str(self.last["postfix"], refresh=False)
            self.bar.close()
            self.bar = None
        elif self.last:
            self._plain()
        self.closed.add(self.key)
        self.key, self.last = None, {}


class StageProgress:
    """Driver side, one per job (per seed group in a multi-seed job): each tick, `update` makes the
    stage fields (added to the monitor's view, so the status, the metrics.jsonl rows and the
    Prometheus snapshot carry them) and drives the stage lines."""

    def __init__(self, warmup_total: int, online_total: int, lines: StageLines,
                 updates_total: int = 0) -> None:
        self.warmup_total, self.online_total = int(warmup_total), int(online_total)
        # critic updates the whole run makes (utd x online env steps after the first update step):
        # a learner behind the rollout still owes some once the last env step is in
        self.updates_total = int(updates_total)
        self.lines = lines
        self.rates: dict[tuple[str, str], _Rate] = {}
        self.learner_open = True  # the learner's build / pre-training lines are still to be ended
        self.last_eval: float | None = None

    def _rate(self, stage: str, part: str, now: float, done: int) -> float | None:
        return self.rates.setdefault((stage, part), _Rate()).add(now, done)

    def update(self, phase: str, view: dict[str, Any], learner: dict[str, Any] | None,
               now: float | None = None) -> dict[str, Any]:
        """Stage fields for this tick. `learner`: the learner's StageRecord (None once not read)."""
        now = time.time() if now is None else now
        fields: dict[str, Any] = {}
        if learner:
            for rec in learner.get("ended", []):  # parts that ended since the last tick: final counts
                self._learner_stage(rec, now, current=False)
            fields = self._learner_stage(learner, now, current=phase == "pretrain")
        if phase != "pretrain":
            self.learner_open = False
            if phase == "warmup":
                fields = self._env_stage("warmup", view, self.warmup_total, now)
            elif phase in ("online", "done"):
                if self.lines.key == ("warmup", ""):
                    self.lines.close(self.warmup_total)  # _warmup returns only once the shards hold K
                fields = self._env_stage("online", view, self.online_total, now)
                if self.updates_total and fields["stage_done"] >= self.online_total:
                    fields = self._owed_updates(view, now, final=phase == "done") or fields
                if phase == "done":
                    fields["stage"] = "done"
        if not fields:
            fields = {"stage": "prepare", "stage_done": 0, "stage_total": 0, "stage_progress": 0.0}
        return fields

    def _learner_stage(self, rec: dict[str, Any], now: float, current: bool) -> dict[str, Any]:
        stage, part = rec.get("stage"), rec.get("part", "")
        done, total = int(rec.get("done", 0)), int(rec.get("total", 0))
        if stage not in ("build", "pretrain") or total <= 0:
            return {}
        rate = self._rate(stage, part, now, done)
        eta = 0.0 if done >= total else (total - done) / rate if rate else None
        bits = [rec.get("note") or ""]  # e.g. "compiling the step" while the count cannot move
        if stage == "build" and rec.get("eval_return") is not None:
            bits.append(f"eval {rec['eval_return']:.4g} / target {_fmt_num(rec.get('target_return'), 4)}")
        for k in ("critic_loss", "actor_loss"):
            if k in rec.get("losses", {}):
                bits.append(f"{k.split('_')[0]} {_fmt_num(rec['losses'][k])}")
        # a behaviour run that stops at its target return shows its budget's ETA as such: on the H100
        # the 1M-step budget read "ETA 14:53" while the build stopped at the target after 80k steps
        budget = stage == "build" and rec.get("target_return") is not None
        bits += [f"{_fmt_num(rate)} steps/s" if rate else "",
                 f"{'budget ETA' if budget else 'ETA'} {fmt_seconds(eta)}" if eta else ""]
        self.lines.show(stage, part, done, total, ", ".join(b for b in bits if b))
        if not current and self.lines.key == (stage, part):  # prepare returned: its last count
            self.lines.close()
        fields = {"stage": stage, "stage_part": part or None, "stage_done": done, "stage_total": total,
                  "stage_progress": done / total, "stage_steps_per_second": rate or 0.0,
                  "stage_eta_seconds": eta}
        if stage == "pretrain":
            fields["pretrain_steps"] = done
            fields["pretrain_losses"] = rec.get("losses")
        if stage == "build":
            fields["build_eval_return"] = rec.get("eval_return")
        return fields

    def _owed_updates(self, view: dict[str, Any], now: float, final: bool) -> dict[str, Any]:
        """Every env step is in but the learner still owes updates: a line of its own ("online
        updates"), shown only when some were owed when the rollout ended."""
        done, total = int(view.get("critic_updates", 0)), self.updates_total
        key = ("online", "updates")
        if key not in self.lines.closed and self.lines.key != key and done >= total:
            self.lines.closed.add(key)  # the learner kept up: nothing to show
        rate = self._rate(*key, now, done)
        eta = 0.0 if done >= total else (total - done) / rate if rate else None
        bits = [f"{_fmt_num(rate)} updates/s" if rate else "", f"ETA {fmt_seconds(eta)}" if eta else ""]
        self.lines.show(*key, done, total, ", ".join(b for b in bits if b))
        if final and self.lines.key == key:
            self.lines.close(done)
        return {"stage": "online", "stage_part": "updates", "stage_done": done, "stage_total": total,
                "stage_progress": min(1.0, done / total), "stage_steps_per_second": rate or 0.0,
                "stage_eta_seconds": eta}

    def _env_stage(self, stage: str, view: dict[str, Any], total: int, now: float) -> dict[str, Any]:
        done = int(view.get("env_steps", 0))
        if total <= 0:
            return {"stage": stage, "stage_done": done, "stage_total": 0, "stage_progress": 1.0}
        done = min(done, total)
        rate = self._rate(stage, "", now, done)
        eta = 0.0 if done >= total else (total - done) / rate if rate else None
        bits = [f"{_fmt_num(rate)} env steps/s" if rate else ""]
        if stage == "online":
            if self.last_eval is not None:
                bits.insert(0, f"eval {self.last_eval:.4g}")
            # over the online stage so far: the 5 s window swings while the learner catches up
            utd = view.get("utd_cumulative")
            if utd is not None:
                bits.append(f"UTD {utd:.2f}/{view.get('utd_target', 0):g}")
        bits.append(f"ETA {fmt_seconds(eta)}" if eta else "")
        self.lines.show(stage, "", done, total, ", ".join(b for b in bits if b))
        return {"stage": stage, "stage_part": None, "stage_done": done, "stage_total": total,
                "stage_progress": done / total, "stage_steps_per_second": rate or 0.0,
                "stage_eta_seconds": eta}


STAGE_KEYS = ("stage", "stage_part", "stage_done", "stage_total", "stage_progress",
              "stage_steps_per_second", "stage_eta_seconds", "pretrain_steps", "pretrain_losses")


def announce_metrics(metrics_url: str, file: IO[str] | None = None, note: str = "") -> None:
    """The line a launch prints second, right after job.prepare_run_dir's `run dir: ...`: where its
    metrics are served."""
    out = file if file is not None else sys.stdout
    print(f"metrics: {metrics_url}{note}", file=out, flush=True)


# ---------------------------------------------------------------------- `wsrl-dist status`
def _stage_line(st: dict[str, Any]) -> str:
    stage = st.get("stage") or st.get("phase") or "?"
    part = f" {st['stage_part']}" if st.get("stage_part") else ""
    total = st.get("stage_total") or 0
    if not total:
        return f"stage:     {stage}{part}"
    done = st.get("stage_done") or 0
    eta = st.get("stage_eta_seconds")
    rate = st.get("stage_steps_per_second")
    return (f"stage:     {stage}{part} {done}/{total} ({100.0 * done / total:.0f}%)"
            + (f", {_fmt_num(rate)} steps/s" if rate else "") + (f", ETA {fmt_seconds(eta)}" if eta else ""))


def _one_status(st: dict[str, Any], indent: str = "") -> list[str]:
    lines = [_stage_line(st)]
    utd = st.get("utd_actual")
    lines.append(f"env steps: {st.get('env_steps', 0)} ({_fmt_num(st.get('env_steps_per_second'))}/s)   "
                 f"updates: {st.get('critic_updates', 0)} ({_fmt_num(st.get('critic_updates_per_second'))}/s)")
    lines.append(f"UTD:       {_fmt_num(st.get('utd_cumulative'))} online so far, {_fmt_num(utd)} recent "
                 f"(target {_fmt_num(st.get('utd_target'))})   policy lag: {_fmt_num(st.get('policy_lag'))} versions")
    lines.append(f"workers:   {st.get('workers_alive', 0)}/{st.get('workers_target', '?')} alive, "
                 f"{st.get('worker_restarts_total') or 0} restarts")
    replay = st.get("replay_sizes") or {}
    lines.append(f"replay:    {sum(replay.values())} rows in {len(replay)} shard(s)")
    if st.get("episode_return") is not None:
        lines.append(f"return:    {st['episode_return']:.4g} (recent episodes)")
    return [indent + x for x in lines]


def format_status(st: dict[str, Any]) -> str:
    """`wsrl-dist status`'s summary of a status record (control.status); multi-seed: one block per seed."""
    head = [f"job:       {st.get('job') or '-'}  ({st.get('phase', '?')})", f"run dir:   {st.get('run_dir', '?')}"]
    if st.get("updated_at"):
        head.append(f"updated:   {time.time() - st['updated_at']:.0f} s ago")
    if "seeds" in st:
        out = head
        for seed, sub in sorted(st["seeds"].items()):
            out += [f"seed {seed}:", *_one_status(sub, "  ")]
        return "\n".join(out)
    return "\n".join(head + _one_status(st))
