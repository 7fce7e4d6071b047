"""The pipeline job: a recipe that attributes, curates and exports (recipes/pipeline.yaml: attribute ->
influence_reweight -> mix -> export) run as one curate flow. `model_dir` sets the model of the recipe's
stage named `attribute` (the demo names build the offline demo model and datasets first), so
`prefect deployment run 'pipeline/demo' --watch` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.attribute import resolve_model
from flows.curate import curate_flow
from flows.runtime import flow
from flows.tasks import subflow
from storage import Lake

PIPELINE_RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "pipeline.yaml")


@flow(name="pipeline", log_prints=False)
def pipeline_flow(
    recipe: str | dict = PIPELINE_RECIPE,
    model_dir: str | None = "demo-quick",
    lake_root: str | None = None,
    datasets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    export_out: str | None = None,
    device: str | None = None,
    dask: str | None = None,
    workers: int = 0,
) -> dict:
    """Run an attribute-and-curate recipe; `model_dir` (a directory, or demo / demo-quick) is the model of
    its `attribute` stage; `overrides` change other stage parameters ({"STAGE.PARAM": value})."""
    lake = Lake(lake_root)
    changes = dict(overrides or {})
    if model_dir:
        changes["attribute.model"] = resolve_model(str(lake.root), model_dir)
    return subflow(
        curate_flow,
        recipe,
        lake_root=str(lake.root),
        datasets=datasets,
        device=device,
        dask=dask,
        export_out=export_out,
        overrides=changes,
        workers=workers,
    )
