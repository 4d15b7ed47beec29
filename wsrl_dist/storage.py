"""Where run directories live (run.storage), and checks of a `--resume` target.

`run.storage` = auto: $WSRL_DIST_STORAGE when set, else ~/wsrl_dist/runs, always made absolute.
A run dir named by nothing else is <storage>/<task>-<method>-s<seed>-<timestamp>: absolute, so a job
under `ray job submit` (whose working directory is Ray's temporary copy of the checkout) writes
where the user finds it, and a job resumed on another head finds its checkpoints there when the
storage is shared. An explicit run.run_dir wins; a relative one is taken from the working directory.

A URI storage (`s3://bucket/runs`, `gs://...`, any fsspec protocol) works as Ray Train's
`storage_path` does: the run writes into a local staging dir (~/.cache/wsrl_dist/staging/<name>)
that is copied to <storage>/<name> at every checkpoint and at the end (fsspec, or pyarrow.fs when
fsspec is missing), and `--resume <uri>/<name>` copies it back first. Only where those packages
(and the protocol's own, e.g. s3fs, gcsfs) are installed: otherwise a clear error names them.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsrl_dist.errors import StorageError

ENV = "WSRL_DIST_STORAGE"
DEFAULT = "~/wsrl_dist/runs"
STAGING = "~/.cache/wsrl_dist/staging"


class ResumeError(ValueError):
    """A `--resume` target that is not a run directory (the CLI prints it as one line)."""


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def root(setting: str = "auto") -> str:
    """run.storage resolved: a URI as given, a local path absolute with ~ expanded."""
    value = (os.environ.get(ENV) or DEFAULT) if setting == "auto" else setting
    return value.rstrip("/") if is_uri(value) else str(Path(value).expanduser().resolve())


def local_dir(storage_root: str, name: str) -> Path:
    """Where the run with this name writes on this machine (the staging dir for a URI storage)."""
    if is_uri(storage_root):
        return Path(STAGING).expanduser() / name
    return Path(storage_root) / name


def _filesystem(uri: str, setting: str = "run.storage="):
    """(fsspec filesystem, path) for a URI; a clear error naming what to install when it cannot.
    `setting`: how the user set the URI, the error's start before it ("run.storage=", or a
    study's "--sync-to ")."""
    try:
        import fsspec
    except ImportError:
        fsspec = None
    if fsspec is not None:
        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:  # s3fs / gcsfs missing for the protocol, or unknown
            raise StorageError(f"{setting}{uri}: fsspec cannot open this protocol ({e})") from e
        return fs, path
    try:
        from pyarrow import fs as pafs
    except ImportError:
        raise StorageError(f"{setting}{uri}: a URI storage needs fsspec (pip install fsspec, plus "
                           "s3fs / gcsfs for s3:// / gs://) or pyarrow; neither is installed") from None
    return pafs.FileSystem.from_uri(uri)  # (pyarrow filesystem, path)


def check_store(root: str) -> None:
    """StorageError now for a URI storage that cannot be opened (its protocol's package missing, an
    unknown protocol); a local path passes."""
    if is_uri(root):
        _filesystem(root)


def upload(run_dir: Path, uri: str) -> None:
    """Copy the local run dir to `uri` (files only, overwriting: checkpoints are pruned locally)."""
    fs, dest = _filesystem(uri)
    if hasattr(fs, "put"):
        fs.makedirs(dest, exist_ok=True)
        fs.put(str(run_dir).rstrip("/") + "/", dest, recursive=True)
    else:
        from pyarrow import fs as pafs

        pafs.copy_files(str(run_dir), dest, destination_filesystem=fs)


def download(uri: str) -> Path:
    """Copy a run dir at `uri` into the local staging dir; returns the local copy."""
    fs, src = _filesystem(uri)
    local = Path(STAGING).expanduser() / src.rstrip("/").rsplit("/", 1)[-1]
    local.mkdir(parents=True, exist_ok=True)
    if hasattr(fs, "get"):
        if not fs.isdir(src):
            raise ResumeError(f"cannot resume {uri}: not a directory")
        fs.get(src.rstrip("/") + "/", str(local) + "/", recursive=True)
    else:
        from pyarrow import fs as pafs

        pafs.copy_files(src, str(local), source_filesystem=fs)
    return local


def check_resume_dir(run_dir: str | os.PathLike) -> Path:
    """The run dir `--resume` may continue, or ResumeError saying in one line why it cannot: not a
    directory, no config.yaml, no checkpoints/ (a directory that never was a run's). A run dir whose
    checkpoints/ is still empty (stopped before its first checkpoint) is valid: it starts over."""
    if is_uri(run_dir):
        run_dir = download(str(run_dir))
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise ResumeError(f"cannot resume {run_dir}: no such directory")
    if not path.is_dir():
        raise ResumeError(f"cannot resume {run_dir}: not a directory")
    if not (path / "config.yaml").is_file():
        raise ResumeError(f"cannot resume {run_dir}: no config.yaml in it, not a run directory")
    # a multi-seed run dir keeps one seed-<s>/checkpoints/ per seed (runtime/orchestration/stages.py)
    if not (path / "checkpoints").is_dir() and not any(path.glob("seed-*/checkpoints")):
        raise ResumeError(f"cannot resume {run_dir}: no checkpoints/ in it, not a run directory")
    return path


class Mirror:
    """Keeps a copy of a local directory at a URI, file by file, for a study whose machine may be lost
    (a preempted node, a lent GPU taken back: session 10 of the locomotion study lost two cells' worth of
    run dirs that way). Each `sync()` uploads the files whose size or mtime changed since the last one
    and then deletes at the URI the files that are gone here (checkpoints pruned by keep_checkpoints), so
    the copy stays the size of the local dir. What it keeps resumable:

    - a checkpoint dir's `DONE` marker goes up after every other file of the sync, so a copy cut off
      mid-sync holds no complete-looking checkpoint with files missing (checkpoint.problem checks the
      marker and the sizes; resume falls back to the one before);
    - on a local filesystem (`file://`, a mounted share) each file is written beside its place and
      renamed, so a cut leaves no torn manifest.json; object stores (s3, gs) write whole objects anyway;
    - `.tmp-*` dirs (checkpoints being written) and `*.tmp` files are not copied.

    Needs fsspec (a dependency of torch) and the protocol's package (s3fs, gcsfs)."""

    def __init__(self, local: str | os.PathLike, uri: str, keep_apart: tuple[str, ...] = (),
                 setting: str = "--sync-to "):
        """`keep_apart`: top-level names at the URI that are not the dir's (a study's datasets/):
        never pulled into it, never deleted by a sync. `setting`: what set the URI, for errors."""
        self.local, self.uri, self.keep_apart = Path(local), uri.rstrip("/"), keep_apart
        self.fs, self.root = _filesystem(self.uri, setting)
        if not hasattr(self.fs, "put_file"):
            raise StorageError(f"{setting}{uri}: syncing a directory needs fsspec for this protocol, not pyarrow")
        self.atomic_rename = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.seen: dict[str, tuple[int, int]] = {}

    def _local_files(self) -> dict[str, tuple[int, int]]:
        out = {}
        for p in self.local.rglob("*"):
            rel = p.relative_to(self.local)
            if any(part.startswith(".tmp-") for part in rel.parts) or p.name.endswith(".tmp") or not p.is_file():
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # pruned meanwhile
                continue
            out[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
        return out

    def _put(self, rel: str) -> None:
        self._upload(self.local / rel, rel)

    def _upload(self, path: Path, rel: str) -> None:
        dest = f"{self.root}/{rel}"
        self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        if self.atomic_rename:
            part = f"{dest}.part-{os.getpid()}"
            self.fs.put_file(str(path), part)
            os.replace(part, dest)
        else:
            self.fs.put_file(str(path), dest)

    def sync(self) -> int:
        """Upload what changed, markers last, then delete what is gone; the number of files uploaded."""
        now = self._local_files()
        changed = [rel for rel, st in now.items() if self.seen.get(rel) != st]
        changed.sort(key=lambda rel: (rel.rsplit("/", 1)[-1] == "DONE", rel))
        done = 0
        for rel in changed:
            try:
                self._put(rel)
            except FileNotFoundError:  # removed between the listing and the copy: the next sync sees it gone
                now.pop(rel, None)
                continue
            self.seen[rel] = now[rel]
            done += 1
        for rel in [r for r in self.seen if r not in now]:
            try:
                self.fs.rm_file(f"{self.root}/{rel}")
            except FileNotFoundError:
                pass
            del self.seen[rel]
            if self.atomic_rename:  # a filesystem keeps the emptied dirs (an object store has none)
                parent = Path(self.root) / rel
                while (parent := parent.parent) != Path(self.root) and not any(parent.iterdir()):
                    parent.rmdir()
        return done

    def pull(self) -> int:
        """Copy everything at the URI into the local dir (a fresh machine picking the study up); what
        it copied counts as synced. The number of files copied."""
        files = self.fs.find(self.root)
        for torn in [f for f in files if ".part-" in f.rsplit("/", 1)[-1]]:  # a sync cut mid-file
            self.fs.rm_file(torn)
        files = [f for f in files if ".part-" not in f.rsplit("/", 1)[-1]]
        files = [f for f in files if self._rel(f).split("/", 1)[0] not in self.keep_apart]
        for f in files:
            dest = self.local / self._rel(f)
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f, str(dest))
        self.seen = self._local_files()
        return len(files)

    def _rel(self, remote: str) -> str:
        return remote[len(self.root.rstrip("/")) + 1:]

    def exists(self, rel: str) -> bool:
        return self.fs.exists(f"{self.root}/{rel}")

    def put_once(self, path: Path, rel: str) -> bool:
        """Upload a file that never changes (a built dataset) unless the URI has it at that size."""
        dest = f"{self.root}/{rel}"
        if self.fs.exists(dest) and self.fs.size(dest) == path.stat().st_size:
            return False
        self._upload(path, rel)
        return True

    def get_missing(self, rel_dir: str, local_dir: Path) -> list[Path]:
        """Copy the files of <URI>/<rel_dir> that `local_dir` lacks into it; the paths copied."""
        src = f"{self.root}/{rel_dir}"
        if not self.fs.isdir(src):
            return []
        out = []
        for f in self.fs.find(src):
            name = f.rsplit("/", 1)[-1]
            if ".part-" in name or (local_dir / name).is_file():
                continue
            local_dir.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f, str(local_dir / f"{name}.part-{os.getpid()}"))
            os.replace(local_dir / f"{name}.part-{os.getpid()}", local_dir / name)
            out.append(local_dir / name)
        return out
