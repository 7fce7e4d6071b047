"""Stage `attribute`: scores of a training dataset (the stage's dataset) on a target dataset, written shard
by shard to `token_scores` / `segment_scores` / `scores` (`scores` last: a shard counts as done when its
`scores` file exists).

The run id derives from the method, its parameters, the model fingerprint and both dataset versions. Running
the same stage again after a kill resumes: fitted factors are reused from the run's work folder, finished
shards are skipped, and the run ends with the rows an uninterrupted run writes. Two executors write the same
rows: in this process, or (`workers` > 0 or a Dask cluster asked for) the shards fanned out over Dask
workers after the shared factors are fitted once here.

Python: `run_attribution(lake, model_dir, train, targets, method, level, ...)`; in memory without a lake:
`attribution.api.attribute`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from storage import Lake, Run, UserError
from storage.fingerprint import directory_fingerprint, model_reference
from storage.params import (
    COLUMN,
    NAME,
    REQUIRED,
    SEED,
    Anything,
    Choice,
    Flag,
    Items,
    MapOf,
    OneOf,
    ParamError,
    Params,
    Regex,
    Text,
    integer,
    number,
    optional,
    param,
)
from storage.progress import Progress, bars_enabled, warn
from storage.stage import RunSpec, Stage, StageContext

# The method names, kept here so that building the stage (and the CLI) does not import torch; a test checks
# them against the engine's scorer registry.
KRONFLUENCE = ("ekfac", "kfac", "diagonal", "identity")
METHODS = (*KRONFLUENCE, "trak", "gradsim")
LEVELS = ("example", "segment", "token")
RECORD_COLUMNS = ("example_id", "domain", "difficulty", "prompt", "response", "messages", "answer")
MODEL_DIR = Text("a Hugging Face model directory", max_length=4096)


@dataclass
class AttributeParams(Params):
    model: str = param(REQUIRED, "Hugging Face causal LM directory", MODEL_DIR)
    targets: str = param(REQUIRED, "target dataset in the lake", NAME)
    method: str = param("ekfac", "ekfac | kfac | diagonal | identity | trak | gradsim", Choice(METHODS))
    level: str = param(
        "example", "example | segment | token (segment/token: kronfluence methods)", Choice(LEVELS)
    )
    only_correct: bool = param(
        False,
        "restrict the targets to those the model answers correctly (greedy generation), as Infra defines f",
        Flag(),
    )
    segmenter: str = param(
        "lines",
        "lines | sentences | a regex separating reasoning steps",
        OneOf((Choice(("lines", "sentences")), Regex())),
    )
    token_targets: str = param(
        "groups",
        "segment/token rows per target group (groups: all, domain=...) or per target (each)",
        Choice(("groups", "each")),
    )
    group_by: list = param(
        ["domain"], "target columns forming groups (repeatable)", Items(COLUMN, 1, 20), cli=("--group-by",)
    )
    modules: Any = param(
        "mlp",
        "tracked layers: mlp (Infra's setting) | all | regexes over module names",
        OneOf((Choice(("mlp", "all")), Items(Regex(), 1, 100))),
    )
    damping: float | None = param(
        None, "influence damping (default 0.1 x mean eigenvalue)", optional(number(0, 1e12))
    )
    proj_dim: int | None = param(
        None, "trak / gradsim projection dimension (default 2048)", optional(integer(1, 1_000_000))
    )
    similarity: str | None = param(None, "gradsim: cosine | dot", optional(Choice(("cosine", "dot"))))
    batch_size: int | None = param(None, "training examples per batch", optional(integer(1, 100_000)))
    method_params: dict | None = param(
        None,
        "more fields of the method's config (InfluenceConfig / TrakConfig / GradSimConfig)",
        optional(MapOf(COLUMN, Anything())),
    )
    checkpoints: list | None = param(
        None,
        "trak: more model directories to ensemble over (repeatable)",
        optional(Items(MODEL_DIR, 1, 1000)),
        cli=("--checkpoint",),
    )
    shard_size: int = param(256, "training examples per written shard", integer(1, 10_000_000))
    max_length: int = param(512, "tokens per example (longer responses are cut)", integer(2, 10_000_000))
    seed: int = param(0, "seed of sampled Fisher labels and projections", SEED)

    def validate(self) -> None:
        influence = self.method in KRONFLUENCE
        if self.damping is not None and not influence:
            raise ParamError("damping", "applies to ekfac, kfac, diagonal and identity")
        if self.proj_dim is not None and self.method not in ("trak", "gradsim"):
            raise ParamError("proj_dim", "applies to trak and gradsim")
        if self.similarity is not None and self.method != "gradsim":
            raise ParamError("similarity", "applies to gradsim")
        if self.checkpoints and self.method != "trak":
            raise ParamError("checkpoints", "are for method trak (an ensemble over models)")
        if self.level != "example" and not influence:
            raise ParamError(
                "level", f"{self.level} needs per-token scores: use ekfac, kfac, diagonal or identity"
            )

    def config_params(self) -> dict:
        """The method's config fields: method_params plus the flat options."""
        out = dict(self.method_params or {})
        if self.damping is not None:
            out["damping"] = self.damping
        if self.proj_dim is not None:
            out["proj_dim"] = self.proj_dim
        if self.similarity is not None:
            out["similarity"] = self.similarity
        if self.batch_size is not None:
            out["train_batch_size" if self.method in KRONFLUENCE else "batch_size"] = self.batch_size
        return out


def check_model(model_dir: Path, modules: Any) -> None:
    """A Hugging Face causal LM directory whose layers match the module selection (checked on a weightless
    copy)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from attribution.tasks import select_modules

    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir}: not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {model_dir}: cannot read the model config ({exc})") from None
    try:
        select_modules(skeleton, modules)
    except (ValueError, re.error) as exc:
        raise UserError(f"--modules: {exc}") from None


def records(frame: pd.DataFrame) -> list[dict]:
    return frame[[c for c in RECORD_COLUMNS if c in frame.columns]].to_dict("records")


# Exact: the same prompt and response once whitespace and case are normalised. Near: the same prompt once
# case, whitespace, punctuation and symbols are dropped (another answer to the same question, a reformatted
# copy), so the target's question was seen in training.
EXACT_KEY = (
    "lower(regexp_replace(coalesce(prompt, '') || '\x1f' || coalesce(response, ''), '\\s+', ' ', 'g'))"
)
PROMPT_KEY = "regexp_replace(lower(coalesce(prompt, '')), '[\\s\\pP\\pS]+', '', 'g')"


@dataclass(frozen=True)
class Overlap:
    """Target examples that also sit in the training set: `exact` copies, and `near` ones (same prompt,
    ignoring case, spaces, punctuation and symbols; not counted in `exact`)."""

    exact: int
    near: int

    def warning(self, targets: str, train: str) -> str | None:
        if not (self.exact or self.near):
            return None
        parts = []
        if self.exact:
            parts.append(
                f"{self.exact} target example(s) of {targets} also sit in {train} (same prompt and response)"
            )
        if self.near:
            parts.append(
                f"{self.near} {'more ' if self.exact else ''}target example(s) of {targets} share a prompt with "
                f"{train} (ignoring case, spaces and punctuation)"
            )
        return "attribute: " + "; ".join(parts) + ": their scores measure memorisation, not transfer"


def overlapping_targets(lake: Lake, train: tuple[str, str], targets: tuple[str, str]) -> Overlap:
    """How many target examples also sit in the training set, exactly or nearly (see `Overlap`)."""
    keys = f"SELECT DISTINCT {EXACT_KEY} AS e, {PROMPT_KEY} AS p FROM examples_all WHERE dataset = ? AND version = ?"
    found = lake.query(
        f"WITH t AS ({keys}), r AS ({keys}) SELECT "
        "count(DISTINCT t.e) FILTER (WHERE t.e IN (SELECT e FROM r)) AS exact, "
        "count(DISTINCT t.e) FILTER (WHERE t.e NOT IN (SELECT e FROM r) AND t.p <> '' "
        "AND t.p IN (SELECT p FROM r)) AS near FROM t",
        [*targets, *train],
    )
    return Overlap(int(found["exact"].iloc[0]), int(found["near"].iloc[0]))


def work_dir(lake: Lake, run_id: str) -> Path:
    """Where a run keeps what its shards share (fitted factors) until it completes."""
    return lake.root / ".work" / "attribution" / run_id


def factors_dir(lake: Lake, run_id: str) -> Path:
    """Where a completed kronfluence run keeps its fitted factors: `unlearn --scores RUN` scores its
    fine-tuning points with them instead of fitting them again (attribution/stages/unlearn_work.py)."""
    return lake.root / ".work" / "factors" / run_id


def finish_work(lake: Lake, run_id: str) -> None:
    """Remove a completed run's work folder, keeping its fitted kronfluence factors in `factors_dir`: the
    scorer's `kronfluence` folder (attribution/ekfac.py: kronfluence's factor files and our completion
    markers `factors_<strategy>.done`) without the targets' gradients, moved there in one rename."""
    work = work_dir(lake, run_id)
    source = work / "kronfluence"
    if any(source.glob("factors_*.done")):
        for gradients in source.glob("targets_*"):
            shutil.rmtree(gradients, ignore_errors=True)
        kept = factors_dir(lake, run_id)
        shutil.rmtree(kept, ignore_errors=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        source.rename(kept)
    shutil.rmtree(work, ignore_errors=True)


class Attribute(Stage):
    """Attribute a target dataset's log-likelihood to training examples (positive = helpful)."""

    name = "attribute"
    kind = "attribute"
    Params = AttributeParams
    reads = ("examples",)
    writes = ("scores", "segment_scores", "token_scores")
    executors = ("local", "dask")
    dataset_flags = ("--train", "--dataset", "-d")
    dataset_help = "the training dataset whose examples are scored"

    def plan(self, ctx: StageContext) -> RunSpec:
        from attribution.engine import method_config

        p = self.params
        train = ctx.one_dataset(self.name)
        try:
            config = method_config(p.method, p.config_params())
        except (ValueError, TypeError) as exc:
            raise UserError(f"stage attribute: method_params: {exc}") from None
        model_dir = Path(p.model).expanduser().absolute()
        check_model(model_dir, p.modules)
        for ckpt in p.checkpoints or []:
            if not (Path(ckpt) / "config.json").is_file():
                raise UserError(f"--checkpoint {ckpt}: not a Hugging Face model directory (no config.json)")
        targets = (p.targets, ctx.lake.dataset_version(p.targets))
        if examples_of(ctx.lake, *train).empty or examples_of(ctx.lake, *targets).empty:
            raise UserError(f"stage attribute: {train[0]} or {p.targets} has no examples to attribute")
        warning = overlapping_targets(ctx.lake, train, targets).warning(p.targets, train[0])
        if warning:
            warn(warning)
        params = {
            "level": p.level,
            "config": config.params(),
            "segmenter": p.segmenter,
            "token_targets": p.token_targets,
            "group_by": list(p.group_by),
            "modules": p.modules,
            "shard_size": p.shard_size,
            "max_length": p.max_length,
            "only_correct": p.only_correct,
            "seed": p.seed,
            "checkpoints": [directory_fingerprint(c) for c in p.checkpoints or []],
        }
        inputs = {"datasets": dict([train, targets])}
        return RunSpec(
            "attribute",
            p.method,
            params,
            inputs,
            model_reference(model_dir),
            context={"config": config, "train": train, "targets": targets},
        )

    # ---------------------------------------------------------------------------------- executors
    def scorer(self, ctx: StageContext, spec: RunSpec, progress: bool) -> Any:
        """The prepared scorer of a planned run (factors fitted, or reused from the work folder)."""
        from attribution.api import load_causal_lm, load_checkpoints
        from attribution.engine import ShardScorer, method_config
        from attribution.sources import prepare_lm
        from attribution.training import pick_device

        p, lake = self.params, ctx.lake
        device = pick_device(ctx.device)
        model, tokenizer = load_causal_lm(Path(p.model).expanduser().absolute(), device)
        train = records(examples_of(lake, *spec.context["train"]))
        target_name, target_version = spec.context["targets"]
        targets = records(examples_of(lake, target_name, target_version))
        try:
            prepared = prepare_lm(
                model,
                tokenizer,
                train,
                targets,
                max_length=p.max_length,
                modules=p.modules,
                group_by=list(p.group_by),
                only_correct=p.only_correct,
            )
        except ValueError as exc:  # e.g. the model answers none of the targets correctly
            raise UserError(f"stage attribute: {exc}") from None
        scorer = ShardScorer(
            p.method,
            prepared,
            spec.context.get("config") or method_config(p.method, p.config_params()),
            device,
            work_dir(lake, spec.run_id),
            load_checkpoints(p.checkpoints),
            seed=p.seed,
            progress=progress,
        )
        scorer.prepare()
        return scorer

    def score_shards(
        self, ctx: StageContext, run: Run, spec: RunSpec, wanted: set[int] | None, progress: bool
    ) -> None:
        """Score the training shards not yet written (those in `wanted`, when given) and write each."""
        from attribution.engine import Levels, iter_shard_frames, shards

        p = self.params
        skip = lambda k: (wanted is not None and k not in wanted) or run.has_shard("scores", k)
        n_shards = len(shards(len(examples_of(ctx.lake, *spec.context["train"])), p.shard_size))
        todo = sum(not skip(k) for k in range(n_shards))
        if not todo:
            return
        scorer = self.scorer(ctx, spec, progress and bars_enabled())  # the fit's own bars: terminals only
        levels = Levels(p.segmenter, p.token_targets)
        frames_of_shards = iter_shard_frames(scorer, p.level, levels, p.shard_size, skip=skip)
        with Progress(f"attribute ({p.method}, {p.level})", todo, "shards", bar=progress) as bar:
            for k, frames in frames_of_shards:
                for table in (
                    "token_scores",
                    "segment_scores",
                    "scores",
                ):  # scores last: marks the shard done
                    if table in frames:
                        run.write(table, frames[table], shard=k)
                bar.update()

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        self.score_shards(ctx, run, spec, None, progress=not ctx.quiet)
        finish_work(ctx.lake, run.run_id)

    def execute_sharded(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        """Fit the shared factors here, score the shards on Dask workers, check every shard is written."""
        from attribution.engine import shards
        from storage.dask_io import dask_client

        n_shards = len(shards(len(examples_of(ctx.lake, *spec.context["train"])), self.params.shard_size))
        todo = [k for k in range(n_shards) if not run.has_shard("scores", k)]
        if todo:
            from attribution.scoring import scorer_class

            if scorer_class(self.params.method).persistent_fit:  # fit once here; the workers reuse it
                self.scorer(ctx, spec, progress=not ctx.quiet and bars_enabled())
            n_groups = max(1, min(len(todo), ctx.workers or 2))
            groups = [todo[i::n_groups] for i in range(n_groups)]
            gpu = ctx.resolved_device().startswith("cuda")
            resources = {"GPU": 1} if gpu else None
            with dask_client(ctx.dask, n_workers=max(1, ctx.workers), resources=resources) as client:
                futures = [
                    client.submit(
                        score_on_worker,
                        str(ctx.lake.root),
                        self.params.to_dict(),
                        spec,
                        ctx.device,
                        group,
                        pure=False,
                        resources=resources,
                    )
                    for group in groups
                ]
                from distributed import as_completed

                sizes = {f.key: len(g) for f, g in zip(futures, groups, strict=True)}
                with Progress(f"attribute ({self.params.method}, dask)", len(todo), "shards") as bar:
                    for future in as_completed(futures):
                        future.result()  # a worker's error stops the run here
                        bar.update(sizes[future.key])
        missing = [k for k in range(n_shards) if not run.has_shard("scores", k)]
        if missing:
            raise RuntimeError(f"attribution run {run.run_id}: shards {missing} were not written")
        finish_work(ctx.lake, run.run_id)

    def executor_for(self, ctx: StageContext, spec: RunSpec) -> Any:
        from storage.dask_io import dask_address

        return (
            self.execute_sharded if (ctx.workers > 0 or dask_address(ctx.dask) is not None) else self.execute
        )

    def report(self, ctx: StageContext, run_id: str) -> list[str]:
        counts = ctx.lake.query(
            "SELECT (SELECT count(*) FROM scores WHERE run_id = ?) AS scores, "
            "(SELECT count(*) FROM segment_scores WHERE run_id = ?) AS segment_scores, "
            "(SELECT count(*) FROM token_scores WHERE run_id = ?) AS token_scores",
            [run_id] * 3,
        ).iloc[0]
        return [
            f"{counts.scores} scores, {counts.segment_scores} segment scores, {counts.token_scores} token scores",
            (
                f'top helpful: assay sql "SELECT train_id, avg(score) AS influence FROM scores WHERE run_id = '
                f"'{run_id}' GROUP BY train_id ORDER BY influence DESC LIMIT 10\""
            ),
        ]


def examples_of(lake: Lake, dataset: str, version: str) -> pd.DataFrame:
    return lake.query(
        "SELECT * FROM examples_all WHERE dataset = ? AND version = ? ORDER BY row_index", [dataset, version]
    )


def score_on_worker(
    lake_root: str, params: dict, spec: RunSpec, device: str | None, shard_ids: list[int]
) -> None:
    """On a Dask worker: score these training shards of a planned run and write each as a shard."""
    from storage.dask_io import set_torch_threads

    set_torch_threads()
    lake = Lake(lake_root)
    stage = Attribute(params)
    ctx = StageContext(lake, quiet=True, device=device)
    stage.score_shards(ctx, Run(lake, spec.run_id, complete=False), spec, set(shard_ids), progress=False)


def run_attribution(
    lake: Lake,
    model_dir: str | Path,
    train_dataset: str,
    target_dataset: str,
    method: str = "ekfac",
    level: str = "example",
    *,
    device: str | None = None,
    quiet: bool = True,
    dask: str | None = None,
    workers: int = 0,
    **params: Any,
) -> str:
    """The `attribute` stage from Python: scores of `target_dataset` on `train_dataset` in the lake; returns
    the run id (an identical finished run is reused). `params`: more AttributeParams fields."""
    stage = Attribute(
        {"model": str(model_dir), "targets": target_dataset, "method": method, "level": level, **params}
    )
    ctx = StageContext(lake, [train_dataset], device=device, quiet=quiet, dask=dask, workers=workers)
    return stage.run(ctx)
