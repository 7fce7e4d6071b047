"""The curate job: a recipe's stages in order, each a task that returns its run id; then the export.

Each stage gets the run ids of the stages before it (`StageContext.previous`). Stage runs are not
cached by Prefect: a stage may read "the latest" of something in the lake, so only the lake can say
whether a rerun is a no-op, and it does: run ids derive from parameters and inputs, a finished run is
reused, an interrupted one resumes. A stage with a Dask variant (curation/dask_stages.py) runs on
Dask when its input is larger than memory or a cluster is asked for (`dask`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.export import export_step
from flows.recipes import Recipe, check_datasets, load_recipe, parse_recipe
from flows.runtime import step
from flows.tasks import RETRY, publish_summary
from storage import Lake, UserError


def dask_variant(stage_name: str, ctx: Any, params: dict, dask: str | None) -> Any:
    """The stage's Dask variant when Dask should run it, else None."""
    from storage.dask_io import use_dask

    if stage_name not in ("mix", "influence_reweight"):  # the stages with a variant (import dask only then)
        return None
    from curation.dask_stages import VARIANTS

    variant = VARIANTS[stage_name]
    try:
        nbytes = variant.input_bytes(ctx, params)
    except UserError:
        return None  # the stage itself reports the problem, before writing anything
    return variant if use_dask(nbytes, dask) else None


@step(name="stage", task_run_name="{stage_name}", **RETRY)
def run_stage(
    lake_root: str,
    datasets: list[str],
    stage_name: str,
    params: dict,
    previous: dict[str, str],
    device: str = "cpu",
    dask: str | None = None,
    quiet: bool = False,
) -> str:
    """Run one registered stage; returns its run id."""
    from curation.stages import StageContext, load_stages

    stages = load_stages()
    ctx = StageContext(Lake(lake_root), list(datasets), dict(previous), device=device, quiet=quiet)
    variant = dask_variant(stage_name, ctx, params, dask)
    if variant is None:
        return stages[stage_name](ctx, dict(params))
    from storage.dask_io import dask_client

    with dask_client(dask):
        return variant.run(ctx, dict(params))


def resolve_recipe(recipe: str | dict, datasets: list[str] | None = None) -> Recipe:
    if isinstance(recipe, dict):
        return parse_recipe(recipe, f"<{recipe.get('name', 'recipe')}>", datasets)
    return load_recipe(recipe, datasets)


def pin_scores(params: dict, stage_name: str, scores_run: str | None) -> dict:
    """A pipeline pins influence stages that read `latest` scores to the attribution it just ran."""
    if scores_run and stage_name == "influence_reweight" and params.get("scores_run", "latest") == "latest":
        return {**params, "scores_run": scores_run}
    return params


@flow(name="curate", log_prints=False)
def curate_flow(
    recipe: str | dict,
    lake_root: str | None = None,
    datasets: list[str] | None = None,
    device: str = "cpu",
    dask: str | None = None,
    export_out: str | None = None,
    scores_run: str | None = None,
    quiet: bool = False,
) -> dict:
    """Run a recipe (a YAML path, or the recipe as a mapping) over the lake; returns the run ids."""
    lake = Lake(lake_root)
    spec = resolve_recipe(recipe, datasets)
    versions = check_datasets(lake, spec)
    runs: dict[str, str] = {}
    for stage in spec.stages:
        params = pin_scores(stage.params, stage.stage, scores_run)
        runs[stage.name] = run_stage(
            str(lake.root),
            spec.datasets,
            stage.stage,
            params,
            dict(runs),
            device=device,
            dask=dask,
            quiet=quiet,
        )
    exported = None
    export = spec.export
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
