"""Progress bars and status lines of long steps: `storage.progress` (stages below flows use it directly).
Inside Prefect flow and task runs its records go to the run's log (`flows.runtime.RunLogForwarder`)."""

from __future__ import annotations

from storage.progress import Progress, bars_enabled, log, progress, quiet, say, warn

__all__ = ["Progress", "bars_enabled", "log", "progress", "quiet", "say", "warn"]
