"""Progress bars for long CLI steps, silenced by `--quiet` (`ASSAY_QUIET=1`), logged inside Prefect flows.

`progress(items, desc, total)` wraps an iterable in a tqdm bar on the terminal. Bars are off when
`ASSAY_QUIET=1` or when stderr is not a terminal (logs and CI stay free of carriage returns;
`ASSAY_PROGRESS=1` forces them on). Inside a Prefect flow or task run, progress also goes to the
run's log at every tenth of the way, so the Prefect UI shows how far a step is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def quiet() -> bool:
    return os.environ.get("ASSAY_QUIET", "0").lower() in ("1", "true", "yes", "on")


def bars_enabled() -> bool:
    if quiet():
        return False
    if os.environ.get("ASSAY_PROGRESS", "0").lower() in ("1", "true", "yes", "on"):
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _run_logger():
    """Prefect's run logger when called inside a flow or task run; None elsewhere (or without Prefect)."""
    if "prefect" not in sys.modules:  # never import Prefect just to find out we are not in a flow
        return None
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    from prefect.logging import get_run_logger

    return get_run_logger()


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Yield from `items` with a progress bar named `desc` (and Prefect log lines inside flows)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    logger = _run_logger()
    marks = {max(1, round(total * k / 10)) for k in range(1, 11)} if logger and total else set()
    from tqdm.auto import tqdm

    bar = tqdm(items, desc=desc, total=total, disable=not bars_enabled(), leave=False, dynamic_ncols=True)
    done = 0
    try:
        for item in bar:
            yield item
            done += 1
            if done in marks:
                logger.info("%s: %d/%d", desc, done, total)
    finally:
        bar.close()
    if logger and not total:
        logger.info("%s: %d done", desc, done)


def say(message: str) -> None:
    """One status line on stderr for a long step without an iterable (nothing when quiet)."""
    logger = _run_logger()
    if logger is not None:
        logger.info(message)
    if not quiet():
        print(message, file=sys.stderr, flush=True)
