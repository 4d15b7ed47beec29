"""`wsrl-dist study ... --sync-to URI`: keep a study resumable when its machine is lost with its disk.

A study is hours of GPU work kept in one directory; a preempted node, or a lent GPU taken back for
other work (session 10 of the locomotion study lost a cell at 78k of 100k steps and a pre-training at
74% that way), takes that directory with it. With `--sync-to` the study dir is mirrored to a store
(storage.Mirror: `file://` on a shared mount, `s3://`, `gs://`, any fsspec protocol) every
`--sync-every` seconds, after each finished unit and at the end, a stop included. The same command
on a fresh machine, with the same `--dir` path (the cells' configs name their pre-trained checkpoint
by it), finds no manifest there and pulls the copy first; finished units are then skipped and a
killed cell resumes from its newest checkpoint that reached the store.

The datasets the builder made for the study's runs (run.json `dataset`, in the builder's cache) go
to <URI>/datasets/ once each and come back into the cache on a machine that lacks them, so a resumed
cell (offline_continued, rlpd) reads the dataset its pre-training read: a rebuild is not the same
data (docs/RESULTS.md: walker2d's three builds of one recipe and seed gave 340k, 180k and 140k rows,
the behaviour SAC passing its target at another step each time on the GPU). D4RL and Minari
files are the user's to provide on the new machine: not copied.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from wsrl_dist.config import ConfigError
from wsrl_dist.errors import StorageError

log = logging.getLogger(__name__)


class StudySync:
    """Idle unless `uri` is set; `start()` pulls (fresh disk) and syncs once, so a wrong URI fails before
    any work; then a background thread syncs every `every` seconds until `stop()`, which syncs last."""

    def __init__(self, study_dir: Path, uri: str | None, every: float = 60.0):
        self.dir, self.uri, self.every = Path(study_dir), uri, every
        self.mirror = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._datasets_up: set[Path] = set()

    def start(self) -> None:
        if not self.uri:
            return
        from wsrl_dist import storage
        from wsrl_dist.data.builder import default_cache_dir

        try:  # a store that cannot be opened, read or written: one line, before the study runs anything
            self.mirror = storage.Mirror(self.dir, self.uri, keep_apart=("datasets",))
            if not (self.dir / "manifest.json").is_file() and self.mirror.exists("manifest.json"):
                print(f"study dir: {self.mirror.pull()} files pulled from {self.uri} into {self.dir}", flush=True)
            for path in self.mirror.get_missing("datasets", default_cache_dir()):
                print(f"dataset: {path} pulled from {self.uri}/datasets", flush=True)
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self.mirror.sync()
        except (RuntimeError, OSError) as e:
            # a StorageError names the URI itself (--sync-to URI: ...); an OSError does not
            raise ConfigError(f"study {e}" if isinstance(e, StorageError) else f"study --sync-to {self.uri}: {e}") from e
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="study-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.now()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.now()

    def now(self) -> None:
        """One pass; a failure (the store unreachable for a while) is a warning, retried at the next."""
        if self.mirror is None:
            return
        with self._lock:
            try:
                self.mirror.sync()
                self._datasets()
            except Exception as e:  # noqa: BLE001 - any store error: the study goes on, the next pass retries
                log.warning("study dir sync to %s failed: %s (retried at the next sync)", self.uri, e)

    def _datasets(self) -> None:
        from wsrl_dist.data.builder import default_cache_dir

        cache = default_cache_dir().resolve()
        for run_json in self.dir.rglob("run.json"):
            try:
                name = json.loads(run_json.read_text()).get("dataset")
            except (OSError, ValueError):  # being rewritten: the next pass reads it
                continue
            path = Path(name).resolve() if name else None
            if path and path not in self._datasets_up and path.parent == cache and path.is_file():
                self.mirror.put_once(path, f"datasets/{path.name}")
                self._datasets_up.add(path)
