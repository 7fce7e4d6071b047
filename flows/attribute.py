"""The attribute job: the `attribute` stage as a flow (the nightly deployment re-attributes only what changed:
a run whose datasets, model and parameters are unchanged is reused).

`model_dir="demo"` / `"demo-quick"` stands for the offline demo reference model (built and cached, with the
demo datasets ingested), so schedules and the demo run without a model of your own.
"""

from __future__ import annotations

from pathlib import Path

from flows.runtime import flow, step
from flows.stages import run_stage
from flows.tasks import publish_summary, run_complete
from storage import Lake

DEMO_MODELS = {"demo": False, "demo-quick": True}  # name -> quick


@step(name="demo-model", retry=True)
def demo_model(lake_root: str, quick: bool) -> str:
    """Ingest the demo datasets and build (or reuse) the demo reference model; returns its directory."""
    from flows.demo import DEMO_TARGETS, DEMO_TRAIN, build_corpus, build_reference_model, ingest_file

    paths = build_corpus(quick)
    ingest_file(lake_root, paths["train"], DEMO_TRAIN)
    ingest_file(lake_root, paths["targets"], DEMO_TARGETS)
    return build_reference_model(paths["train"], quick)


def resolve_model(lake_root: str, model_dir: str) -> str:
    """A model directory, with the demo names standing for the offline demo reference model."""
    if model_dir in DEMO_MODELS:
        return demo_model(lake_root, DEMO_MODELS[model_dir])
    return str(Path(model_dir).expanduser().absolute())


@flow(name="attribute", log_prints=False)
def attribute_flow(
    train_dataset: str,
    target_dataset: str,
    model_dir: str = "demo-quick",
    lake_root: str | None = None,
    method: str = "ekfac",
    level: str = "example",
    options: dict | None = None,
    device: str | None = None,
    dask: str | None = None,
    workers: int = 0,
) -> dict:
    """Attribute `target_dataset` to `train_dataset` with the model in `model_dir`. `options`: more
    parameters of the attribute stage (shard_size, max_length, method_params, ...). With `dask` (a scheduler
    address or "local") or `workers` > 0 the training shards are scored on Dask workers."""
    lake = Lake(lake_root)
    root = str(lake.root)
    model = resolve_model(root, model_dir)
    params = {"model": model, "targets": target_dataset, "method": method, "level": level, **(options or {})}
    from flows.registry import build_stage
    from storage.stage import StageContext

    planned = build_stage("attribute", params).plan(StageContext(lake, [train_dataset], quiet=True)).run_id
    reused = run_complete(root, planned)
    run_id = run_stage(root, "attribute", params, [train_dataset], {}, device, dask, workers, True)
    tables = {
        t: str(lake.run_dir(t, run_id))
        for t in ("scores", "segment_scores", "token_scores")
        if lake.run_dir(t, run_id).is_dir()
    }
    publish_summary(
        f"attribute-{train_dataset}-{target_dataset}",
        f"Attribution of {target_dataset} to {train_dataset} ({method}, {level})",
        lake,
        [run_id],
        {"model": model, "reused": reused, "dask": dask or (f"{workers} local workers" if workers else None)},
    )
    return {"run_id": run_id, "model": model, "reused": reused, "tables": tables}
