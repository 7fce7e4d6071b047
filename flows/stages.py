"""Running stages from flows: one Prefect task that runs any registered stage by name (flows/registry.py). Flows know stages only through this: nothing here (or in any flow)
depends on what a particular stage does."""

from __future__ import annotations

from typing import Any

from flows.registry import build_stage
from flows.runtime import flow, step
from flows.tasks import publish_summary
from storage import Lake
from storage.stage import StageContext


@step(name="stage", task_run_name="{name}", retry=True)
def run_stage(
    lake_root: str,
    name: str,
    params: dict | None,
    datasets: list[str],
    previous: dict[str, str] | None = None,
    device: str | None = None,
    dask: str | None = None,
    workers: int = 0,
    quiet: bool = False,
) -> str:
    """Run one registered stage; returns its run id (an identical finished run is reused). Its name, run id
    and time go to the run log (progress lines come from the stage itself)."""
    import time

    from storage.progress import log

    stage = build_stage(name, params)
    ctx = StageContext(
        Lake(lake_root),
        list(datasets),
        dict(previous or {}),
        device=device,
        quiet=quiet,
        dask=dask,
        workers=workers,
    )
    log(f"stage {name}: starting on {', '.join(datasets) or 'no dataset'}")
    started = time.monotonic()
    run_id = stage.run(ctx)
    log(f"stage {name}: run {run_id} complete ({time.monotonic() - started:.1f}s)")
    return run_id


@flow(name="stage", log_prints=False)
def stage_flow(
    name: str,
    params: dict | None = None,
    datasets: list[str] | None = None,
    lake_root: str | None = None,
    device: str | None = None,
    dask: str | None = None,
    workers: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run one stage (`assay <stage>` and the per-stage deployments); returns its run id."""
    lake = Lake(lake_root)
    run_id = run_stage(str(lake.root), name, params, list(datasets or []), {}, device, dask, workers, quiet)
    publish_summary(
        f"{name}-{run_id}", f"Stage {name}", lake, [run_id], {"datasets": ", ".join(datasets or [])}
    )
    return {"stage": name, "run_id": run_id, "lake": str(lake.root)}
