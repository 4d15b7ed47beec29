"""Errors the project raises on bad input, and how the CLI turns them into one line.

`ProjectError` is the base for errors defined after issue 17 (CheckpointError); the older ones keep
their own bases (ValueError subclasses) and are listed in `project_errors()`. Errors raised inside a
Ray actor arrive wrapped (RayTaskError, ActorDiedError whose message embeds the actor's traceback):
`unwrap` digs out the error the project raised, so the CLI can print it without 15 Ray frames.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

PACKAGE_DIR = str(Path(__file__).resolve().parent)


class ProjectError(Exception):
    """Base of the project's own errors: the message names the file or key and the problem."""


class StorageError(ProjectError, RuntimeError):
    """A URI store (run.storage, `study --sync-to`) that cannot be opened: its protocol or package missing."""


class CheckpointError(ProjectError, ValueError):
    """A checkpoint directory is incomplete, unreadable or belongs to another config."""


class LearnerDied(ProjectError, RuntimeError):
    """The learner actor's process died (SIGKILL, OOM, its node lost); the message says where the
    job stood and how to resume it from its newest checkpoint."""


def project_errors() -> tuple[type[BaseException], ...]:
    from wsrl_dist.config import ConfigError
    from wsrl_dist.data.schema import SchemaError
    from wsrl_dist.envs.tasks import UnknownTaskError
    from wsrl_dist.runtime.datapath.wire import WireError

    return (ProjectError, ConfigError, SchemaError, WireError, UnknownTaskError)


def unwrap(err: BaseException) -> BaseException:
    """The error a Ray task or actor raised, out of its RayTaskError wrapper (several levels deep
    when an actor called another)."""
    seen = 0
    while seen < 10:
        cause = getattr(err, "cause", None)
        if type(err).__name__.startswith("RayTaskError") and isinstance(cause, BaseException):
            err, seen = cause, seen + 1
            continue
        break
    return err


def _raised_in_project(err: BaseException) -> bool:
    """True when the innermost frame that raised `err` is the project's code (not a library's)."""
    tb = err.__traceback__
    if tb is None:
        return False
    last = traceback.extract_tb(tb)[-1]
    return last.filename.startswith(PACKAGE_DIR)


# "wsrl_dist.data.schema.DatasetError: /x.hdf5: field ..." inside an ActorDiedError's message
_EMBEDDED = re.compile(r"^(?:[\w.]+\.)?(\w*Error): (.+)$")


def one_line(err: BaseException) -> str | None:
    """One line naming the problem for a project error (also inside Ray wrappers), else None (the
    caller re-raises: a bug keeps its traceback)."""
    inner = unwrap(err)
    if isinstance(inner, project_errors()):
        return f"{type(inner).__name__}: {inner}"
    if type(inner) is ValueError and (_raised_in_project(inner) or _remote_in_project(err)):
        return f"{inner}"
    if type(err).__name__ in ("ActorDiedError", "RayActorError") and getattr(err, "actor_init_failed", False):
        names = {c.__name__ for c in project_errors()} | {"DatasetError", "DatasetNotFoundError"}
        for line in reversed(str(err).splitlines()):
            m = _EMBEDDED.match(line.strip())
            if m and m.group(1) in names:
                return f"{m.group(1)}: {m.group(2)}"
    return None


def _remote_in_project(err: BaseException) -> bool:
    """A ValueError raised in an actor: did the last frame of its traceback run the project's code?"""
    tb = getattr(err, "traceback_str", "") or ""
    files = re.findall(r'File "([^"]+)"', tb)
    return bool(files) and files[-1].startswith(PACKAGE_DIR)
