"""Progress-bar options shared by the single-process pipeline's tqdm bars (local.py) and the
distributed job's stage lines (runtime/instrumentation/progress.py StageLines). Below both: no runtime import.
"""

from __future__ import annotations

import shutil
import sys
from typing import IO, Any

PLAIN_EVERY = 15.0  # seconds between plain (non-terminal) progress lines of one stage


def bar_options(file: IO[str] | None = None) -> dict[str, Any]:
    """tqdm options for a bar that is not a StageLines line (local.py): on a terminal the usual
    refresh; elsewhere (a log file, `ray job submit`) a line every PLAIN_EVERY seconds, not 10 a second."""
    out = file if file is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    if not tty:
        return {"file": out, "mininterval": PLAIN_EVERY}
    size = shutil.get_terminal_size((100, 20))  # as StageLines: a terminal with no size shows no bar
    return {"file": out, "mininterval": 0.1, "ncols": size.columns, "nrows": size.lines}
