"""Where assay keeps its state, and how jobs run: as plain calls (default) or as Prefect flows.

A job is a flow function (`@flow` below). The CLI runs it as a plain call unless the user has a Prefect
server (`PREFECT_API_URL` set) or asks (`--prefect`, `ASSAY_PREFECT=1`); `--no-prefect` / `ASSAY_PREFECT=0`
forces plain calls. Both ways run the same function body: under Prefect its `@step`s become tasks with
retries, its summaries become artifacts and progress goes to the run's log.

Prefect is never imported on the plain path (it costs seconds per process and writes a home folder):
`flow` returns a real Prefect flow only when Prefect is already loaded (a worker or `prefect deploy`
loading an entrypoint, a test harness, `run_job` on the Prefect path), and a `LazyFlow` otherwise, which
builds the Prefect flow the first time it is called. `step` does the same for tasks.

Prefect's home lives in the project's state dir (nothing in ~/.prefect), analytics stay off, and logs go
to the API only when there is a server to see them.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage import UserError


def state_dir() -> Path:
    return Path(os.environ.get("ASSAY_HOME") or ".assay").expanduser().absolute()


def cache_dir() -> Path:
    return Path(os.environ.get("ASSAY_CACHE") or state_dir() / "cache").expanduser().absolute()


PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_UI_ENABLED": "false",
    # The ephemeral server's default 20 s start-up limit is too short on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
# Without a server (ephemeral mode) nobody reads logs sent to the API.
EPHEMERAL_DEFAULTS = {"PREFECT_LOGGING_TO_API_ENABLED": "false"}
QUIET_DEFAULTS = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}
OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
OFF_WORDS = ("0", "false", "no", "off")


def _set_defaults(values: dict[str, str]) -> None:
    for key, value in values.items():
        os.environ.setdefault(key, value)  # a user's own setting wins


def configure_prefect() -> None:
    """Set Prefect's environment; call before prefect is imported."""
    _set_defaults({"PREFECT_HOME": str(state_dir() / "prefect"), **PREFECT_DEFAULTS})
    if not os.environ.get("PREFECT_API_URL"):
        _set_defaults(EPHEMERAL_DEFAULTS)


def configure_environment() -> None:
    """Offline, quiet defaults for every CLI process (a user's own settings win)."""
    configure_prefect()
    # Nothing downloads at run time unless the user asks: ASSAY_ALLOW_DOWNLOADS=1 lifts this.
    if os.environ.get("ASSAY_ALLOW_DOWNLOADS", "0") != "1":
        _set_defaults(OFFLINE_DEFAULTS)
    _set_defaults(QUIET_DEFAULTS)


def use_prefect() -> bool:
    """Run jobs as Prefect flows? `ASSAY_PREFECT` decides when set (`--prefect` / `--no-prefect`), else
    whether the user has a Prefect server (`PREFECT_API_URL`)."""
    setting = os.environ.get("ASSAY_PREFECT", "").strip().lower()
    if setting:
        return setting not in OFF_WORDS
    return bool(os.environ.get("PREFECT_API_URL"))


def prefect_loaded() -> bool:
    return "prefect" in sys.modules


def in_prefect_run() -> bool:
    """Inside a Prefect flow or task run? (Never imports Prefect to find out.)"""
    if not prefect_loaded():
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


# ------------------------------------------------------------------------------------------- Prefect hooks
class UserErrorRecords(logging.Filter):
    """A user's error (bad input) is one line in a run's log, not a traceback: Prefect's engines log every
    exception with its traceback; for a UserError the record keeps the message only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UserError):
            record.msg, record.args = f"user error: {exc}", ()
            record.exc_info, record.exc_text = None, None
        return True


class RunLogForwarder(logging.Handler):
    """Forwards assay's log records (stage names, progress, warnings: `storage.progress`) to Prefect's run
    logger of the flow or task run this thread is in; outside runs it does nothing."""

    def emit(self, record: logging.LogRecord) -> None:
        if not in_prefect_run():
            return
        from prefect.logging import get_run_logger

        try:
            get_run_logger().log(record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - a log line must never fail the run
            self.handleError(record)


_HOOKED: list[bool] = []


def install_prefect_hooks() -> None:
    """Once per process, when Prefect is in use: the user-error filter on the engines' loggers, and
    assay's log records forwarded into run logs."""
    if _HOOKED:
        return
    _HOOKED.append(True)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(UserErrorRecords())
    from storage.progress import LOGGER

    LOGGER.addHandler(RunLogForwarder())
    LOGGER.setLevel(logging.INFO)


# ------------------------------------------------------------------------------------------- flows, steps
def _prefect_flow(fn: Callable[..., Any], options: dict[str, Any]) -> Any:
    from prefect import flow as prefect_flow

    install_prefect_hooks()
    return prefect_flow(fn, **options)


class LazyFlow:
    """A flow function that becomes a Prefect flow the first time it is called (see the module docstring).
    `.fn` is the plain function, as on a Prefect flow."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]):
        self.fn, self.options = fn, options
        self.name = options.get("name") or fn.__name__
        self._flow: Any = None
        functools.update_wrapper(self, fn)

    @property
    def prefect(self) -> Any:
        if self._flow is None:
            configure_prefect()
            self._flow = _prefect_flow(self.fn, self.options)
        return self._flow

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.prefect(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # with_options, serve, ... of the Prefect flow
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.prefect, name)


def flow(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorator for a job: `@flow(name="ingest", log_prints=True)` (Prefect's flow options).

    Named `flow` so that Prefect's deployment loader, which reads the decorator's arguments from the source,
    finds the name."""

    def wrap(f: Callable[..., Any]) -> Any:
        return _prefect_flow(f, options) if prefect_loaded() else LazyFlow(f, options)

    return wrap(fn) if fn is not None else wrap


def load_flow(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_job(target: str, **kwargs: Any) -> Any:
    """Run the flow at "module:name": a Prefect flow run when `use_prefect()`, else its plain function.

    The flow module is imported only here, after the caller has validated its inputs, so a user error
    never starts (or creates state for) Prefect.
    """
    if use_prefect():
        configure_prefect()
        (state_dir() / "prefect").mkdir(parents=True, exist_ok=True)
        import prefect  # noqa: F401 - loaded first, so the flow module builds real Prefect flows

        install_prefect_hooks()
        return load_flow(target)(**kwargs)
    fn: Callable[..., Any] = load_flow(target).fn
    return fn(**kwargs)


def task_options(retry: bool, cache: bool, options: dict[str, Any]) -> dict[str, Any]:
    """Prefect task options: flows/tasks.py's retry policy and cache policy when asked, then `options`."""
    from flows.tasks import cache_options, retry_options

    return {**(retry_options() if retry else {}), **(cache_options() if cache else {}), **options}


class Step:
    """A function that runs as a Prefect task when called inside a flow run, and as itself otherwise."""

    def __init__(self, fn: Callable[..., Any], retry: bool, cache: bool, options: dict[str, Any]):
        self.fn, self._spec, self._task = fn, (retry, cache, options), None
        functools.update_wrapper(self, fn)
        if prefect_loaded():
            _ = self.task  # built now, as a decorated Prefect task would be

    @property
    def task(self) -> Any:
        if self._task is None:
            from prefect import task

            install_prefect_hooks()
            self._task = task(self.fn, **task_options(*self._spec))
        return self._task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if in_prefect_run():
            return self.task(*args, **kwargs)
        return self.fn(*args, **kwargs)


def step(
    fn: Callable[..., Any] | None = None, *, retry: bool = False, cache: bool = False, **options: Any
) -> Any:
    """Decorator: a Prefect task inside flow runs (with the transient-error `retry` policy and the input
    `cache` policy of flows/tasks.py when asked), the plain function otherwise (`ASSAY_PREFECT=0`, tests),
    so a lone call never starts Prefect."""

    def wrap(f: Callable[..., Any]) -> Step:
        return Step(f, retry, cache, options)

    return wrap(fn) if fn is not None else wrap
