"""Where assay keeps its state, and how jobs run: as Prefect flows (default) or plain calls.

Prefect runs embedded (ephemeral mode, no server) unless PREFECT_API_URL points at one. Its home
lives in the project's state dir so nothing is written to ~/.prefect, analytics stay off, and
logs stay quiet. `ASSAY_PREFECT=0` (or `--no-prefect`) calls the same flow functions directly.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def state_dir() -> Path:
    return Path(os.environ.get("ASSAY_HOME") or ".assay").expanduser().absolute()


def cache_dir() -> Path:
    return Path(os.environ.get("ASSAY_CACHE") or state_dir() / "cache").expanduser().absolute()


PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    # The ephemeral server's default 20 s start-up limit is too short on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
QUIET_DEFAULTS = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}
OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _set_defaults(values: dict[str, str]) -> None:
    for key, value in values.items():
        os.environ.setdefault(key, value)  # a user's own setting wins


def configure_prefect() -> None:
    """Set Prefect's environment; call before prefect is imported."""
    _set_defaults({"PREFECT_HOME": str(state_dir() / "prefect"), **PREFECT_DEFAULTS})


def configure_environment() -> None:
    """Offline, quiet defaults for every CLI process (a user's own settings win)."""
    configure_prefect()
    # Nothing downloads at run time unless the user asks: ASSAY_ALLOW_DOWNLOADS=1 lifts this.
    if os.environ.get("ASSAY_ALLOW_DOWNLOADS", "0") != "1":
        _set_defaults(OFFLINE_DEFAULTS)
    _set_defaults(QUIET_DEFAULTS)


def use_prefect() -> bool:
    return os.environ.get("ASSAY_PREFECT", "1").lower() not in ("0", "false", "no", "off")


def load_flow(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_job(target: str, **kwargs: Any) -> Any:
    """Run the Prefect flow at "module:name", or its plain function when Prefect is switched off.

    The flow module is imported only here, after the caller has validated its inputs, so a user
    error never starts (or creates state for) Prefect.
    """
    if use_prefect():
        configure_prefect()
        (state_dir() / "prefect").mkdir(parents=True, exist_ok=True)
        return load_flow(target)(**kwargs)
    fn: Callable[..., Any] = load_flow(target).fn
    return fn(**kwargs)


def step(fn: Callable[..., Any] | None = None, **task_options: Any) -> Any:
    """Decorator: a Prefect task when called inside a running flow, the plain function otherwise.

    Lets the same flow body run under Prefect (tasks, retries, caching) and as plain calls
    (`ASSAY_PREFECT=0`, tests) without starting Prefect's API for a lone task call.
    """

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        from prefect import task
        from prefect.context import FlowRunContext

        prefect_task = task(f, **task_options)

        @functools.wraps(f)
        def call(*args: Any, **kwargs: Any) -> Any:
            if FlowRunContext.get() is not None:
                return prefect_task(*args, **kwargs)
            return f(*args, **kwargs)

        call.task = prefect_task  # type: ignore[attr-defined]
        return call

    return wrap(fn) if fn is not None else wrap
