"""Progress-bar options shared by the single-process pipeline's tqdm bars (local.py) and the
distributed job's stage lines (runtime/instrumentation/progress.py StageLines). Below both: no runtime import.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import IO, Any

PLAIN_EVERY = 15.0  # seconds between plain (non-terminal) progress lines of one stage


def bar_options(file: IO[str] | None = None) -> dict[str, Any]:
    """tqdm options for a bar that is not a StageLines line (local.py): on a terminal the usual
    refresh; elsewhere (a log file, `ray job submit`) a line every PLAIN_EVERY seconds, not 10 a second."""
    out = file if file is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    if not tty:  # position 0: a bar inside another (a stage's inside `study`'s) would move the cursor
        return {"file": out, "mininterval": PLAIN_EVERY, "position": 0}  # up, "\x1b[A", in a log file
    size = shutil.get_terminal_size((100, 20))  # as StageLines: a terminal with no size shows no bar
    return {"file": out, "mininterval": 0.1, "ncols": size.columns, "nrows": size.lines}


def note_setter(bar: Any) -> Callable[[str], None]:
    """pretrain_agent(s)'s `note` for a tqdm bar: the text as the bar's postfix. The note clears when
    the first step (compilation, autotuning, graph capture: 15-190 s on a GPU) is done; the bar's rate
    restarts then, so rate and ETA come from the steady steps. Left alone, tqdm averaged the first step
    in and printed a 345-hour ETA for an 80k-step run (H100, 2026-12-06). The rate restarts when the note
    is set too: a resumed run jumps its count to the checkpoint's step just before, which tqdm read as
    a million steps a second (a study's log, 2026-12-06)."""

    def note(text: str) -> None:
        restart_rate(bar)  # before the line is drawn, with the note or without it
        bar.set_postfix_str(text, refresh=True)

    return note


def restart_rate(bar: Any) -> None:
    """Forget a tqdm bar's rate history (the moving averages behind it/s and the ETA) but keep its
    count and its elapsed time (the stage's whole wall time). Draws nothing: tqdm's reset() would,
    and with a count of 0."""
    if bar.disable:
        return
    from tqdm.std import EMA

    bar._ema_dn, bar._ema_dt, bar._ema_miniters = (EMA(bar.smoothing) for _ in range(3))
    bar.last_print_t = bar._time()  # the next rate sample starts here
    bar.last_print_n = bar.initial = bar.n  # initial: tqdm's plain rate counts from here too
