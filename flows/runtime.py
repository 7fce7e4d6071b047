"""Where assay keeps its state, and how jobs run: as Prefect flows (default) or plain calls.

Prefect runs embedded (ephemeral mode, no server) unless PREFECT_API_URL points at one. Its home
lives in the project's state dir so nothing is written to ~/.prefect, analytics stay off, and
logs stay quiet. `ASSAY_PREFECT=0` (or `--no-prefect`) calls the same flow functions directly.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def state_dir() -> Path:
    return Path(os.environ.get("ASSAY_HOME") or ".assay").expanduser().absolute()


def cache_dir() -> Path:
    return Path(os.environ.get("ASSAY_CACHE") or state_dir() / "cache").expanduser().absolute()


def configure_prefect() -> None:
    """Set Prefect's environment; call before prefect is imported."""
    os.environ.setdefault("PREFECT_HOME", str(state_dir() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")


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
    fn: Callable[..., Any] = getattr(load_flow(target), "fn")
    return fn(**kwargs)
