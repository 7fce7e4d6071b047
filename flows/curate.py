"""The curate job: a recipe's stages in order, each a task that returns its run id; then the export.

Each stage gets the run ids of the stages before it (`StageContext.previous`). Stage runs are not cached
by Prefect: a stage may read "the latest" of something in the lake, so only the lake can say whether a
rerun is a no-op, and it does: run ids derive from parameters and inputs, a finished run is reused, an
interrupted one resumes. Each stage picks its own executor (in memory, Dask, sharded over workers) from
the context (`dask`, `workers`) and the size of its input.
"""

from __future__ import annotations

from typing import Any

from flows.commands import checked_out
from flows.export import export_step, is_assay_export
from flows.recipes import check_datasets, resolve_recipe
from flows.runtime import flow
from flows.stages import run_stage
from flows.tasks import publish_summary
from storage import Lake


@flow(name="curate", log_prints=False)
def curate_flow(
    recipe: str | dict,
    lake_root: str | None = None,
    datasets: list[str] | None = None,
    device: str | None = None,
    dask: str | None = None,
    export_out: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    workers: int = 0,
    quiet: bool = False,
) -> dict:
    """Run a recipe (a YAML path, or the recipe as a mapping) over the lake; returns the run ids.
    `overrides`: {"STAGE.PARAM": value} changes to the recipe's stage parameters."""
    lake = Lake(lake_root)
    spec = resolve_recipe(recipe, datasets, overrides)
    versions = check_datasets(lake, spec)
    export = spec.export
    if export is not None or export_out:
        # the output policy before any stage runs: a refused --out must not cost the stages' work
        out = export_out or export.out
        checked_out(
            out,
            kind="folder",
            force=bool(export and export.force) or is_assay_export(out),
            lake_root=lake.root,
        )
    runs: dict[str, str] = {}
    for stage in spec.stages:
        runs[stage.name] = run_stage(
            str(lake.root), stage.stage, stage.params, spec.datasets, dict(runs), device, dask, workers, quiet
        )
    exported = None
    if export is not None or export_out:
        chosen = runs[export.run] if export is not None and export.run else list(runs.values())[-1]
        out = export_out or export.out
        exported = export_step(
            str(lake.root),
            chosen,
            out,
            fmt=export.format if export else "jsonl",
            style=export.style if export else "chat",
            materialise=bool(export and export.materialise),
            force=bool(export and export.force),
        )
    extra: dict[str, Any] = {
        "recipe": spec.name,
        "datasets": ", ".join(f"{k}@{v}" for k, v in versions.items()),
    }
    if exported:
        extra["export"] = f"{exported['path']} ({exported['rows']} rows)"
    publish_summary(f"curate-{spec.name}", f"Curation recipe {spec.name}", lake, runs.values(), extra)
    return {
        "recipe": spec.name,
        "lake": str(lake.root),
        "datasets": versions,
        "runs": runs,
        "export": exported,
    }
