"""Stage `mix`: temperature sampling / scalarization / Cooldown over groups of the recipe's examples.

Parameters: `MixParams` (each field's help says what it does). The grouping `by` is an `examples` column
(domain, dataset, difficulty, ...) or `label:NAME` for a per-example label an earlier stage wrote (e.g.
`label:ppp_cluster`). `weights_from` names an earlier stage whose weights to build on (curation/curated.py:
its copies define the pool, its loss weights pass through).

`method` says which channel the mix acts on: `temperature` on the copies (a Cooldown draws the first phase
at tau, then tau_end), `scalarization` on the loss weights (proportional draws, loss weight x
p_g(tau) / p_g(1)). Either way the run holds the training order: `mixture_draws` (step, slot, dataset,
example_id, group_name), which the materialised export writes as it is.
Writes `weights` (copies = draws, loss_weight per pool example), `mixture_schedule` (step, group_name, tau,
probability: what the sampler draws from), `mixture_draws` and `metrics` (per group: pool (draws the pool
holds, prior copies counted), examples, draws, effective_epochs (draws / examples), unseen; F(tau)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curation import curated, mixing
from curation.stages import RunSpec, Stage, StageContext
from storage import Lake, Run, UserError
from storage.params import (
    SEED,
    Choice,
    Flag,
    ParamError,
    Params,
    Text,
    integer,
    number,
    optional,
    param,
)

METHODS = ("temperature", "scalarization")
MISSING_GROUP = "(missing)"
# The sampler holds every draw in memory (step, slot, index, group): bound the draws of one mix.
MAX_DRAWS = 200_000_000
GROUPING = Text("an examples column or label:NAME", pattern=r"[A-Za-z_][A-Za-z0-9_]*|label:[A-Za-z0-9_.:-]+")


@dataclass
class MixParams(Params):
    by: str = param("domain", "grouping: an examples column (domain, dataset, ...) or label:NAME", GROUPING)
    method: str = param(
        "temperature",
        "the channel it acts on: temperature = sampling (groups drawn with p_i(tau); copies = draws); "
        "scalarization = loss weight (proportional draws, loss_weight x p_i(tau)/p_i(1); schedule constant)",
        Choice(METHODS),
    )
    schedule: str = param(
        "cooldown",
        "cooldown (tau until switch, then tau_end) | constant | linear | cosine",
        Choice(mixing.SCHEDULES),
    )
    tau: float = param(
        5.0, "temperature at the start (1: proportional; large: uniform)", number(0, 1e6, "right")
    )
    tau_end: float = param(1.0, "temperature at the end (cooldown, linear, cosine)", number(0, 1e6, "right"))
    switch: float = param(0.5, "cooldown: share of training before tau_end takes over", number(0, 1))
    steps: int | None = param(
        None,
        "training steps the schedule spans (default ceil(epochs x pool / batch_size))",
        optional(integer(1, 10**9)),
    )
    epochs: float = param(1.0, "epochs over the pool, for the default steps", number(0, 1e4, "right"))
    batch_size: int = param(16, "examples per training step", integer(1, 1_000_000))
    seed: int = param(0, "sampling seed", SEED)
    replace: bool = param(False, "draw with replacement within a group", Flag())
    weights_from: str | None = param("auto", curated.WEIGHTS_FROM_HELP, curated.WEIGHTS_FROM)

    def validate(self) -> None:
        if self.method == "scalarization" and self.schedule != "constant":
            raise ParamError("schedule", "scalarization weights examples by one tau; use schedule: constant")
        if self.steps is not None and self.steps * self.batch_size > MAX_DRAWS:
            raise ParamError("steps", f"steps x batch_size must be at most {MAX_DRAWS:,} draws")


def example_groups(lake: Lake, examples: pd.DataFrame, by: str, label_run: str | None) -> pd.Series:
    """The group of each example (text; MISSING_GROUP where unknown), aligned with `examples`."""
    if by.startswith("label:"):
        name = by.split(":", 1)[1]
        if label_run is None:
            raise UserError(f"stage mix: by {by!r}, but no earlier stage wrote a label named {name!r}")
        labels = lake.table("labels", "run_id = ? AND name = ?", [label_run, name])
        labels = labels.drop_duplicates(["dataset", "example_id"], keep="last")
        values = examples[["dataset", "example_id"]].merge(
            labels[["dataset", "example_id", "value"]], on=["dataset", "example_id"], how="left"
        )["value"]
        # Labels are numbers (a cluster id, a level): whole numbers print without ".0".
        text = values.map(
            lambda v: MISSING_GROUP if pd.isna(v) else (str(int(v)) if float(v).is_integer() else str(v))
        )
        return text.reset_index(drop=True).rename("group")
    if by not in examples.columns:
        raise UserError(
            f"stage mix: by {by!r} is not a column of examples "
            f"({', '.join(c for c in examples.columns if c != 'run_id')}) nor label:NAME"
        )
    col = examples[by]
    text = col.map(
        lambda v: (
            MISSING_GROUP
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
        )
    )
    return text.reset_index(drop=True).rename("group")


def mix_examples(
    examples: pd.DataFrame, groups: pd.Series, copies: np.ndarray, loss_weight: np.ndarray, p: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(weights, schedule, draws, metrics) frames for the lake. Pure: no I/O.

    The pool is a multiset: each example as many times as its copies (`curated.drawable` ones only). The
    sampler draws `steps` batches following the schedule's group probabilities; an example's new copies
    are its draws. Temperature sampling acts on the copies and passes the loss weights through;
    scalarization draws proportionally and multiplies the loss weights by p_g(tau) / p_g(1). The weights
    rows are the pool's distinct examples (copies 0: never drawn)."""
    keys = examples[curated.KEY].reset_index(drop=True)
    in_pool = curated.drawable(copies, loss_weight)
    pool = np.repeat(np.arange(len(keys)), np.where(in_pool, copies, 0))
    if len(pool) == 0:
        raise UserError("stage mix: no examples left to mix (the earlier weights keep none)")
    group_of = groups.to_numpy(dtype=object)
    counts = mixing.group_counts(group_of[pool])
    steps = schedule_steps(p, len(pool))
    new_weight = np.asarray(loss_weight, dtype=np.float64)
    if p["method"] == "scalarization":
        taus = np.ones(steps)  # the sampler draws proportionally; the loss weights carry the mixture
        ratio = mixing.scalarization_weights(counts, p["tau"])
        new_weight = new_weight * pd.Series(group_of).map(ratio).fillna(1.0).to_numpy(dtype=np.float64)
    else:
        taus = mixing.tau_schedule(steps, p["schedule"], p["tau"], p["tau_end"], p["switch"])
    probs = mixing.schedule_probabilities(counts, taus)
    drawn = mixing.sample_steps(group_of[pool], probs, p["batch_size"], seed=p["seed"], replace=p["replace"])
    index = pool[drawn["index"].to_numpy()]
    new_copies = mixing.copies_from_sequence(index, len(keys))

    members = np.flatnonzero(in_pool)
    weights = curated.weights_frame(keys.iloc[members], new_copies[members], new_weight[members])
    draws = pd.DataFrame(
        {
            "step": drawn["step"].to_numpy(),
            "slot": drawn["slot"].to_numpy(),
            "dataset": keys["dataset"].to_numpy(dtype=object)[index],
            "example_id": keys["example_id"].to_numpy(dtype=object)[index],
            "group_name": drawn["group"].astype(str).to_numpy(),
        }
    )
    schedule = mixing.schedule_long(probs, taus).rename(columns={"group": "group_name"})
    epochs = mixing.effective_epochs(group_of[members], new_copies[members])
    rows = [("pool", g, float(n)) for g, n in counts.items()]
    for column in ("examples", "draws", "effective_epochs", "unseen"):
        rows += [(column, g, float(v)) for g, v in epochs[column].items()]
    variance_taus = [p["tau"]] if p["method"] == "scalarization" else np.unique(taus)
    rows += [
        ("variance_factor", f"tau={t:g}", mixing.variance_factor(counts, float(t))) for t in variance_taus
    ]
    metrics = pd.DataFrame(rows, columns=["name", "key", "value"])
    metrics["key"] = metrics["key"].astype(str)
    return weights, schedule, draws, metrics


def check_grouping(lake: Lake, by: str, label_run: str | None) -> None:
    """`by` names an examples column, or a label an earlier stage wrote (checked without reading rows)."""
    if by.startswith("label:"):
        if label_run is None:
            raise UserError(f"stage mix: by {by!r}, but no earlier stage wrote a label named {by[6:]!r}")
        return
    columns = [c for c in lake.query("SELECT * FROM examples_all LIMIT 0").columns if c != "run_id"]
    if by not in columns:
        raise UserError(
            f"stage mix: by {by!r} is not a column of examples ({', '.join(columns)}) nor label:NAME"
        )


def schedule_steps(p: dict[str, Any], pool_size: int) -> int:
    """The training steps the schedule spans: `steps`, else ceil(epochs x pool / batch_size)."""
    return p["steps"] or max(1, math.ceil(p["epochs"] * pool_size / p["batch_size"]))


class Mix(Stage):
    """Mix groups of examples by temperature sampling, scalarization or a Cooldown schedule."""

    name = "mix"
    Params = MixParams
    reads = ("examples", "labels", "weights")
    writes = ("weights", "mixture_schedule", "mixture_draws", "metrics")
    executors = ("local", "dask")
    dataset_help = "dataset(s) to mix (repeatable)"

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        ctx.dataset_versions(self.name)  # no dataset given: the user's error, before anything else
        label_run = None
        if p["by"].startswith("label:"):
            label_run = ctx.earlier_run("labels", "name = ?", [p["by"].split(":", 1)[1]])
        weights_run = curated.resolve_weights_from(ctx, self.name, p["weights_from"])
        versions = curated.stage_versions(ctx, self.name, weights_run)
        check_grouping(ctx.lake, p["by"], label_run)
        pool = curated.drawable_count(ctx.lake, versions, weights_run)
        if pool == 0:
            raise UserError("stage mix: no examples left to mix (the earlier weights keep none)")
        steps = schedule_steps(p, pool)
        if steps * p["batch_size"] > MAX_DRAWS:
            raise UserError(
                f"stage mix: {steps:,} steps of {p['batch_size']} examples exceed {MAX_DRAWS:,} draws; "
                "lower epochs, steps or batch_size"
            )
        inputs = {"datasets": versions, "labels": label_run, "weights": weights_run}
        return RunSpec("curate", self.name, p, inputs)

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        lake, inputs = ctx.lake, spec.inputs
        examples, copies, loss_weight = curated.load_curated(lake, inputs["datasets"], inputs["weights"])
        groups = example_groups(lake, examples, spec.params["by"], inputs["labels"])
        self.write(ctx, run, mix_examples(examples, groups, copies, loss_weight, spec.params))

    def execute_dask(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        """The same mix reading only the id and grouping columns, chunk by chunk (never the texts)."""
        from curation import dask_stages

        lake, inputs, by = ctx.lake, spec.inputs, spec.params["by"]
        columns = dask_stages.KEY + ([] if by.startswith("label:") else [by])
        with dask_stages.cluster(ctx):
            examples = dask_stages.read_examples(lake, inputs["datasets"], columns)
            prior = dask_stages.read_weights(lake, inputs["weights"]) if inputs["weights"] else None
        examples, copies, loss_weight = curated.restrict_to(examples, prior)
        groups = example_groups(lake, examples, by, inputs["labels"])
        self.write(ctx, run, mix_examples(examples, groups, copies, loss_weight, spec.params))

    def executor_for(self, ctx: StageContext, spec: RunSpec) -> Any:
        from curation import dask_stages

        return self.execute_dask if dask_stages.wants_dask(ctx, spec.inputs["datasets"]) else self.execute

    def write(self, ctx: StageContext, run: Run, frames: tuple[pd.DataFrame, ...]) -> None:
        weights, schedule, draws, metrics = frames
        run.write("weights", weights)
        run.write("mixture_schedule", schedule)
        run.write("mixture_draws", draws)
        run.write("metrics", metrics)
        if not ctx.quiet:
            print("mix: " + epochs_line(metrics))

    def report(self, ctx: StageContext, run_id: str) -> list[str]:
        return [f"export with: assay export {run_id} --out FOLDER"]


def epochs_line(metrics: pd.DataFrame) -> str:
    """Effective epochs per group (draws / examples), as the mix's metrics hold them."""
    rows = metrics[metrics["name"] == "effective_epochs"].sort_values("key")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in zip(rows["key"], rows["value"], strict=True))
    return f"effective epochs per group (draws / examples): {parts}"
