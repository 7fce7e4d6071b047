"""The attribute job: scores of a training dataset on a target dataset, as one lake run.

In one process it is `attribution.stage.run_attribution`. With Dask (`dask`: a scheduler address or
"local", or `workers` > 0) the training set's shards fan out over Dask workers (GPU workers by the
resource annotation `GPU=1` when the device is cuda): one step fits what every shard shares (the
influence factors, kept in the run's work folder), each worker scores its shards and writes them with
`run.write(table, frame, shard=k)`, and one step checks that every shard is there and completes the
run. The run id and rows are those of the one-process run: `run_attribution` decides the run's
parameters (`plan_attribution` reads them from it) and the shards come from the same engine.

`model_dir="demo"` / `"demo-quick"` stands for the offline demo reference model (built and cached,
with the demo datasets ingested), so schedules and the demo run without a model of your own.
"""

from __future__ import annotations

import inspect
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow

from flows.runtime import step
from flows.tasks import RETRY, publish_summary, run_complete
from storage import Lake, UserError

DEMO_MODELS = {"demo": False, "demo-quick": True}  # name -> quick


# ------------------------------------------------------------------------------------------ the plan
@dataclass
class AttributionPlan:
    kind: str
    method: str
    params: dict
    inputs: dict
    model: str | None

    @property
    def run_id(self) -> str:
        from storage.lake import run_id_for

        return run_id_for(self.kind, self.method, self.params, self.inputs, self.model)


class _Planned(Exception):
    def __init__(self, plan: AttributionPlan):
        self.plan = plan


class _PlanLake(Lake):
    """A lake whose `run()` records what it was asked to open and stops there, before any work."""

    @contextmanager
    def run(
        self,
        kind: str,
        method: str,
        params: dict | None = None,
        inputs: dict | None = None,
        model: str | None = None,
    ) -> Any:
        raise _Planned(AttributionPlan(kind, method, params or {}, inputs or {}, model))
        yield  # a generator, so that this is a context manager


def attribution_arguments(model_dir: str, train_dataset: str, target_dataset: str, **options: Any) -> dict:
    """run_attribution's arguments with its defaults filled in (unknown options are the user's error)."""
    from attribution.stage import run_attribution

    signature = inspect.signature(run_attribution)
    unknown = sorted(set(options) - set(signature.parameters))
    if unknown:
        raise UserError(f"attribute: unknown option(s) {', '.join(unknown)}")
    bound = signature.bind(None, model_dir, train_dataset, target_dataset, **options)
    bound.apply_defaults()
    args = dict(bound.arguments)
    args.pop("lake")
    return args


def plan_attribution(lake: Lake, args: dict) -> AttributionPlan:
    """The run run_attribution would open for these arguments (validated as it validates them)."""
    from attribution.stage import run_attribution

    try:
        run_attribution(_PlanLake(lake.root), **args)
    except _Planned as planned:
        return planned.plan
    raise RuntimeError("run_attribution returned without opening a lake run")


# ------------------------------------------------------------------------------------------ the demo model
@step(name="demo-model", **RETRY)
def demo_model(lake_root: str, quick: bool) -> str:
    """Ingest the demo datasets and build (or reuse) the demo reference model; returns its directory."""
    from flows.demo import DEMO_TARGETS, DEMO_TRAIN, build_corpus, build_reference_model, ingest_file

    paths = build_corpus(quick)
    ingest_file(lake_root, paths["train"], DEMO_TRAIN)
    ingest_file(lake_root, paths["targets"], DEMO_TARGETS)
    return build_reference_model(paths["train"], quick)


def resolve_model(lake_root: str, model_dir: str) -> str:
    if model_dir in DEMO_MODELS:
        return demo_model(lake_root, DEMO_MODELS[model_dir])
    return str(Path(model_dir).expanduser().absolute())


# ------------------------------------------------------------------------------------------ one process
@step(name="attribute", task_run_name="attribute-{train_dataset}-on-{target_dataset}", **RETRY)
def attribute_step(
    lake_root: str, model_dir: str, train_dataset: str, target_dataset: str, options: dict
) -> str:
    from attribution.stage import run_attribution

    return run_attribution(Lake(lake_root), model_dir, train_dataset, target_dataset, **options)


# ------------------------------------------------------------------------------------------ Dask shards
def _scorer(lake: Lake, args: dict, run_id: str, plan: AttributionPlan) -> Any:
    """The prepared ShardScorer for a planned run (the same steps as run_attribution's)."""
    from attribution.api import load_causal_lm, load_checkpoints
    from attribution.engine import ShardScorer, method_config
    from attribution.sources import prepare_lm
    from attribution.training import pick_device

    for name, version in plan.inputs.get("datasets", {}).items():
        if lake.dataset_version(name) != version:
            raise UserError(
                f"dataset {name} changed (now {lake.dataset_version(name)}) while run {run_id} ran"
            )
    device = pick_device(args["device"])
    model, tokenizer = load_causal_lm(args["model_dir"], device)
    keep = ("example_id", "domain", "difficulty", "prompt", "response", "messages", "answer")

    def records(name: str) -> list[dict]:
        frame = lake.examples(name)
        return frame[[c for c in keep if c in frame.columns]].to_dict("records")

    train, targets = records(args["train_dataset"]), records(args["target_dataset"])
    if args["only_correct"]:
        from attribution.correctness import correct_mask

        targets = [t for t, ok in zip(targets, correct_mask(model, tokenizer, targets), strict=True) if ok]
    prepared = prepare_lm(
        model,
        tokenizer,
        train,
        targets,
        max_length=args["max_length"],
        modules=args["modules"],
        group_by=list(args["group_by"]),
    )
    scorer = ShardScorer(
        args["method"],
        prepared,
        method_config(args["method"], args["method_params"]),
        device,
        work_dir(lake, run_id),
        load_checkpoints(args["checkpoints"]),
        seed=args["seed"],
    )
    scorer.prepare()  # influence factors: fitted by the first caller, reused from the work folder after
    return scorer


def work_dir(lake: Lake, run_id: str) -> Path:
    return lake.root / ".work" / "attribution" / run_id  # where run_attribution keeps its factors too


@step(name="attribution-prepare", **RETRY)
def prepare_shared(lake_root: str, args: dict, run_id: str, plan: dict) -> str:
    """Fit what every shard shares (influence factors) once, before the fan-out."""
    from attribution.ekfac import STRATEGIES

    if args["method"] in STRATEGIES:
        _scorer(Lake(lake_root), args, run_id, AttributionPlan(**plan))
    return str(work_dir(Lake(lake_root), run_id))


def score_shards(lake_root: str, args: dict, run_id: str, plan: dict, shard_ids: list[int]) -> list[str]:
    """On a worker: score these training shards and write each one as a shard of the run."""
    from attribution.engine import Levels, iter_shard_frames
    from storage.dask_io import set_torch_threads
    from storage.lake import Run

    set_torch_threads()
    lake = Lake(lake_root)
    run = Run(lake, run_id, complete=False)
    mine = set(shard_ids)
    scorer = _scorer(lake, args, run_id, AttributionPlan(**plan))
    written = []
    levels = Levels(args["segmenter"], args["token_targets"])
    for k, frames in iter_shard_frames(
        scorer,
        args["level"],
        levels,
        args["shard_size"],
        skip=lambda k: k not in mine or run.has_shard("scores", k),
    ):
        for table in ("token_scores", "segment_scores", "scores"):  # scores last: marks the shard done
            if table in frames:
                written.append(str(run.write(table, frames[table], shard=k)))
    return written


score_shards_step = step(score_shards, name="attribution-shards", task_run_name="shards-{shard_ids}", **RETRY)


def dask_runner(dask: str | None, workers: int, gpu: bool) -> Any:
    from prefect_dask import DaskTaskRunner

    from storage.dask_io import LOCAL, dask_address

    address = dask_address(dask)
    if address is not None and address != LOCAL:
        return DaskTaskRunner(address=address)
    kwargs: dict[str, Any] = {
        "n_workers": max(1, workers),
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
    }
    if gpu:
        kwargs["resources"] = {"GPU": 1}
    return DaskTaskRunner(cluster_kwargs=kwargs)


@flow(name="attribute-shards", log_prints=False)
def shards_flow(
    lake_root: str, args: dict, run_id: str, plan: dict, groups: list[list[int]], gpu: bool
) -> list[str]:
    """Fan the shard groups out over the flow's Dask task runner; returns the files written."""
    import dask

    annotations = {"resources": {"GPU": 1}} if gpu else {}
    futures = []
    with dask.annotate(**annotations):
        for group in groups:
            futures.append(score_shards_step.task.submit(lake_root, args, run_id, plan, group))
    return [path for future in futures for path in future.result()]


def fan_out(
    lake_root: str,
    args: dict,
    run_id: str,
    plan: dict,
    groups: list[list[int]],
    dask: str | None,
    workers: int,
    gpu: bool,
) -> list[str]:
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is not None:
        runner = dask_runner(dask, workers, gpu)
        return shards_flow.with_options(task_runner=runner)(
            lake_root, args, run_id, plan, groups, gpu
        )  # a subflow
    from storage.dask_io import dask_client

    with dask_client(dask, n_workers=max(1, workers), resources={"GPU": 1} if gpu else None) as client:
        futures = [
            client.submit(
                score_shards,
                lake_root,
                args,
                run_id,
                plan,
                group,
                pure=False,
                resources={"GPU": 1} if gpu else None,
            )
            for group in groups
        ]
        return [path for paths in client.gather(futures) for path in paths]


def attribute_sharded(lake: Lake, args: dict, dask: str | None, workers: int) -> str:
    """The attribution run with its shards scored on Dask workers; returns the run id."""
    from attribution.engine import shards

    plan = plan_attribution(lake, args)
    gpu = str(args.get("device") or "").startswith("cuda")
    with lake.run(plan.kind, plan.method, params=plan.params, inputs=plan.inputs, model=plan.model) as run:
        if run.complete:
            return run.run_id
        n_shards = len(shards(len(lake.examples(args["train_dataset"])), args["shard_size"]))
        todo = [k for k in range(n_shards) if not run.has_shard("scores", k)]
        if todo:
            prepare_shared(str(lake.root), args, run.run_id, vars(plan))
            n_groups = max(1, min(len(todo), workers or 2))
            groups = [todo[i::n_groups] for i in range(n_groups)]
            fan_out(str(lake.root), args, run.run_id, vars(plan), groups, dask, workers, gpu)
        missing = [k for k in range(n_shards) if not run.has_shard("scores", k)]
        if missing:
            raise RuntimeError(f"attribution run {run.run_id}: shards {missing} were not written")
        shutil.rmtree(work_dir(lake, run.run_id), ignore_errors=True)
    return run.run_id


# ------------------------------------------------------------------------------------------ the flow
@flow(name="attribute", log_prints=False)
def attribute_flow(
    train_dataset: str,
    target_dataset: str,
    model_dir: str = "demo-quick",
    lake_root: str | None = None,
    method: str = "ekfac",
    level: str = "example",
    options: dict | None = None,
    dask: str | None = None,
    workers: int = 0,
) -> dict:
    """Attribute `target_dataset` to `train_dataset` with the model in `model_dir`.

    `options`: more run_attribution keywords (device, method_params, shard_size, max_length, ...).
    A run whose datasets, model and parameters are unchanged is reused, not recomputed: a schedule
    re-attributes only what changed."""
    lake = Lake(lake_root)
    root = str(lake.root)
    model = resolve_model(root, model_dir)
    options = {"method": method, "level": level, **(options or {})}
    args = attribution_arguments(model, train_dataset, target_dataset, **options)
    from storage.dask_io import dask_address

    if dask_address(dask) is not None or workers > 0:
        run_id = attribute_sharded(lake, args, dask, workers)
        reused = None
    else:
        plan = plan_attribution(lake, args)
        reused = run_complete(root, plan.run_id)
        run_id = attribute_step(
            root,
            model,
            train_dataset,
            target_dataset,
            {k: v for k, v in args.items() if k not in ("model_dir", "train_dataset", "target_dataset")},
        )
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
