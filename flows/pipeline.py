"""The pipeline job: attribute, then curate with a recipe, then export. Three subflows, so each part
shows (and can be rerun) on its own; influence stages of the recipe that read the `latest` scores are
pinned to the attribution this pipeline ran.

`model_dir="demo-quick"` (the default) runs on the offline demo corpus and reference model, built and
ingested on first use: `prefect deployment run 'pipeline/demo' --watch` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.attribute import attribute_flow
from flows.curate import curate_flow
from flows.tasks import publish_summary, subflow
from storage import Lake

DEMO_RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml")


@flow(name="pipeline", log_prints=False)
def pipeline_flow(
    recipe: str | dict = DEMO_RECIPE,
    train_dataset: str = "demo_train",
    target_dataset: str = "demo_targets",
    model_dir: str = "demo-quick",
    lake_root: str | None = None,
    method: str = "ekfac",
    level: str = "example",
    attribution_options: dict | None = None,
    export_out: str | None = None,
    device: str = "cpu",
    dask: str | None = None,
    workers: int = 0,
) -> dict:
    """Attribute `target_dataset` to `train_dataset`, curate with `recipe` (its datasets, else the training
    dataset), and export where the recipe or `export_out` says. Returns run ids and paths."""
    lake = Lake(lake_root)
    root = str(lake.root)
    attributed = subflow(
        attribute_flow,
        train_dataset,
        target_dataset,
        model_dir=model_dir,
        lake_root=root,
        method=method,
        level=level,
        options=attribution_options,
        dask=dask,
        workers=workers,
    )
    curated = subflow(
        curate_flow,
        recipe,
        lake_root=root,
        device=device,
        dask=dask,
        export_out=export_out,
        scores_run=attributed["run_id"],
    )
    runs = [attributed["run_id"], *curated["runs"].values()]
    extra = {"recipe": curated["recipe"], "model": attributed["model"]}
    if curated["export"]:
        extra["export"] = f"{curated['export']['path']} ({curated['export']['rows']} rows)"
    publish_summary(
        f"pipeline-{curated['recipe']}",
        f"Pipeline: attribution, recipe {curated['recipe']}, export",
        lake,
        runs,
        extra,
    )
    return {"lake": root, "attribution": attributed, "curation": curated, "export": curated["export"]}
