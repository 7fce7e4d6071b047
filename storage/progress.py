"""Progress and warnings of long steps, for people at a terminal and for orchestrators.

    for shard in progress(shards, "attribute (ekfac, example)", unit="shards"): ...
    with Progress("dart (prop2diff)", total=budget, unit="trials", at_most=True) as bar: bar.set(done)
    say("unlearn: retraining without the forget set")     # a status line
    warn("3 target examples also sit in the training set")  # a warning line

On a terminal: a tqdm bar with rate and ETA, off with `--quiet` (`ASSAY_QUIET=1`) and when stderr is not a
terminal (`ASSAY_PROGRESS=1` forces it on). Always: records on the `assay` logger, "desc: 3/10 shards
(30%), 12s elapsed, ETA 28s" at every tenth of the way, which an orchestrator routes where it likes (the
flows forward them into Prefect run logs). Warnings go to stderr even with `--quiet` (once per process
per message: a stage's check that runs twice says it once) and to the logger.

No dependency on anything above storage: stages in attribution/ and curation/ use it directly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Self, TypeVar

T = TypeVar("T")

LOGGER = logging.getLogger("assay")
LOGGER.addHandler(logging.NullHandler())
LOGGER.propagate = False  # our lines reach the terminal through say / warn, not through the root logger
ON_WORDS = ("1", "true", "yes", "on")
_WARNED: set[str] = set()


def quiet() -> bool:
    return os.environ.get("ASSAY_QUIET", "0").lower() in ON_WORDS


def bars_enabled() -> bool:
    if quiet():
        return False
    if os.environ.get("ASSAY_PROGRESS", "0").lower() in ON_WORDS:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_line(desc: str, done: int, total: int | None, elapsed: float, unit: str, at_most: bool) -> str:
    """ "desc: 3/10 shards (30%), 12s elapsed, ETA 28s" (ETA from the mean pace so far; "at most" when the
    total is a budget the step may not use up)."""
    if not total:
        return f"{desc}: {done} {unit}, {duration(elapsed)} elapsed"
    line = f"{desc}: {done}/{total} {unit} ({100 * done / total:.0f}%), {duration(elapsed)} elapsed"
    if 0 < done < total:
        line += f", ETA {'at most ' if at_most else ''}{duration(elapsed / done * (total - done))}"
    return line


class Progress:
    """A count of work done out of `total` (see the module docstring). `at_most`: `total` is an upper
    bound (a budget), so the ETA is one too. `bar=False`: log records only (a worker, a quiet stage)."""

    def __init__(
        self, desc: str, total: int | None, unit: str = "items", at_most: bool = False, bar: bool = True
    ):
        from tqdm.auto import tqdm

        self.desc, self.total, self.unit, self.at_most = desc, total, unit, at_most
        self.done, self.started = 0, time.monotonic()
        self._marks = {max(1, round(total * k / 10)) for k in range(1, 11)} if total else set()
        self._bar = tqdm(
            desc=desc,
            total=total,
            unit=f" {unit}",
            disable=not bars_enabled(),
            leave=False,
            dynamic_ncols=True,
        )

    def set(self, done: int) -> None:
        """Move to `done` items; a log record each time a tenth of the way is passed."""
        done = min(done, self.total) if self.total else done
        if done <= self.done:
            return
        passed = any(self.done < mark <= done for mark in self._marks)
        self._bar.update(done - self.done)
        self.done = done
        if passed:
            LOGGER.info(self.line())

    def update(self, n: int = 1) -> None:
        self.set(self.done + n)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return status_line(self.desc, self.done, self.total, elapsed, self.unit, self.at_most)

    def close(self) -> None:
        self._bar.close()
        if not self._marks or self.done not in self._marks:  # no total, or stopped short: say where
            LOGGER.info(self.line())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Yield from `items`, counting them (see the module docstring)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(desc, total, unit) as bar:
        for item in items:
            yield item
            bar.update()


def log(message: str) -> None:
    """A line for orchestrators only (run logs), not for the terminal."""
    LOGGER.info(message)


def say(message: str) -> None:
    """One status line on stderr for a long step without a count (nothing when quiet), and in run logs."""
    LOGGER.info(message)
    if not quiet():
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr ("warning: ..."), once per process, even when quiet; and in run logs."""
    LOGGER.warning(message)
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)
