"""Stage `mix`: temperature sampling / scalarization / Cooldown over groups of the recipe's examples.

Parameters: `MixParams` (each field's help says what it does). The grouping `by` is an `examples` column
(domain, dataset, difficulty, ...) or `label:NAME` for a per-example label an earlier stage wrote (e.g.
`label:ppp_cluster`). `weights_from` names an earlier stage whose weights to build on (its copies define
the pool, its weight multiplies ours): `auto` = the latest earlier stage that wrote weights, `none` =
every example once.
Writes `weights` (weight, copies per example), `mixture_schedule` (step, group_name, tau, probability) and
`metrics` (per group: pool (size, prior copies counted), draws, effective_epochs; F(tau) per tau).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curation import mixing
from curation.stages import RunSpec, Stage, StageContext, load_examples
from storage import Lake, Run, UserError
from storage.params import (
    NAME,
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
        "temperature: draw groups with p_i(tau) (copies = draws); scalarization: proportional draws, "
        "loss weight p_i(tau)/p_i(1) (needs schedule constant)",
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
    weights_from: str | None = param(
        "auto", "earlier stage whose weights to build on: auto | none | a stage name", optional(NAME)
    )

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


def find_inputs(ctx: StageContext, p: dict[str, Any]) -> tuple[str | None, str | None]:
    """(run id of the labels to group by, run id of the weights to build on)."""
    label_run = None
    if p["by"].startswith("label:"):
        label_run = ctx.earlier_run("labels", "name = ?", [p["by"].split(":", 1)[1]])
    choice = p["weights_from"]
    if choice in (None, "none"):
        weights_run = None
    elif choice == "auto":
        weights_run = ctx.earlier_run("weights")
    elif choice in ctx.previous:
        weights_run = ctx.previous[choice]
    else:
        raise UserError(
            f"stage mix: weights_from {choice!r} is not an earlier stage of this recipe "
            f"({', '.join(ctx.previous) or 'none'}); use auto or none"
        )
    return label_run, weights_run


def mix_examples(
    examples: pd.DataFrame, groups: pd.Series, prior: pd.DataFrame | None, p: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(weights, schedule, metrics) frames for the lake. Pure: no I/O.

    The pool is a multiset: each example as many times as its prior copies (once without a prior);
    examples with prior weight or copies 0 are out of the pool and get copies 0."""
    key = ["dataset", "example_id"]
    base = examples[key].reset_index(drop=True)
    if prior is not None:
        merged = base.merge(prior[[*key, "weight", "copies"]], on=key, how="left")
        prior_w = merged["weight"].fillna(0.0).to_numpy(dtype=np.float64)
        prior_c = merged["copies"].fillna(0).to_numpy(dtype=np.int64)
        prior_c = np.where(prior_w > 0, prior_c, 0)
    else:
        prior_w, prior_c = np.ones(len(base)), np.ones(len(base), dtype=np.int64)
    pool = np.repeat(np.arange(len(base)), prior_c)
    if len(pool) == 0:
        raise UserError("stage mix: no examples left to mix (the earlier weights keep none)")
    pool_groups = groups.to_numpy(dtype=object)[pool]
    counts = mixing.group_counts(pool_groups)
    steps = schedule_steps(p, len(pool))

    if p["method"] == "scalarization":
        taus = mixing.tau_schedule(steps, "constant", tau_start=p["tau"])
        scal = mixing.scalarization_weights(counts, p["tau"])
        weight = prior_w * scal.reindex(groups.to_numpy(dtype=object)).fillna(0.0).to_numpy()
        copies = prior_c
        # A proportional schedule: what the sampler draws; the loss weights carry the mixture.
        probs = mixing.schedule_probabilities(counts, np.ones(steps))
        draws = mixing.schedule_effective_epochs(counts, probs, p["batch_size"]) * counts
    else:
        taus = mixing.tau_schedule(steps, p["schedule"], p["tau"], p["tau_end"], p["switch"])
        probs = mixing.schedule_probabilities(counts, taus)
        drawn = mixing.sample_steps(pool_groups, probs, p["batch_size"], seed=p["seed"], replace=p["replace"])
        copies = mixing.copies_from_sequence(pool[drawn["index"].to_numpy()], len(base))
        weight = np.where(copies > 0, prior_w, 0.0)
        draws = drawn.groupby("group").size().reindex(counts.index, fill_value=0)

    weights = base.assign(weight=weight, copies=copies.astype(np.int64))
    schedule = mixing.schedule_long(mixing.schedule_probabilities(counts, taus), taus).rename(
        columns={"group": "group_name"}
    )
    epochs = (draws / counts).rename("effective_epochs")
    rows = [("pool", g, float(n)) for g, n in counts.items()]
    rows += [("draws", g, float(d)) for g, d in draws.items()]
    rows += [("effective_epochs", g, float(e)) for g, e in epochs.items()]
    rows += [
        ("variance_factor", f"tau={t:g}", mixing.variance_factor(counts, float(t))) for t in np.unique(taus)
    ]
    metrics = pd.DataFrame(rows, columns=["name", "key", "value"])
    metrics["key"] = metrics["key"].astype(str)
    return weights, schedule, metrics


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


def pool_size(lake: Lake, versions: dict[str, str], weights_run: str | None) -> int:
    """How many draws the pool holds: the prior weights' copies (weight > 0), else one per example."""
    if weights_run:
        found = lake.query(
            "SELECT coalesce(sum(copies), 0) AS n FROM weights WHERE run_id = ? AND weight > 0", [weights_run]
        )
    else:
        sql = " UNION ALL ".join(
            "SELECT count(*) AS n FROM examples_all WHERE dataset = ? AND version = ?" for _ in versions
        )
        found = lake.query(f"SELECT sum(n) AS n FROM ({sql})", [v for item in versions.items() for v in item])
    return int(found["n"].iloc[0] or 0)


class Mix(Stage):
    """Mix groups of examples by temperature sampling, scalarization or a Cooldown schedule."""

    name = "mix"
    Params = MixParams
    reads = ("examples", "labels", "weights")
    writes = ("weights", "mixture_schedule", "metrics")
    executors = ("local", "dask")
    dataset_help = "dataset(s) to mix (repeatable)"

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        versions = ctx.dataset_versions(self.name)
        label_run, weights_run = find_inputs(ctx, p)
        check_grouping(ctx.lake, p["by"], label_run)
        pool = pool_size(ctx.lake, versions, weights_run)
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
        examples = load_examples(lake, inputs["datasets"])
        groups = example_groups(lake, examples, spec.params["by"], inputs["labels"])
        prior = lake.table("weights", "run_id = ?", [inputs["weights"]]) if inputs["weights"] else None
        self.write(ctx, run, mix_examples(examples, groups, prior, spec.params))

    def execute_dask(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        """The same mix reading only the id and grouping columns, chunk by chunk (never the texts)."""
        from curation import dask_stages

        lake, inputs, by = ctx.lake, spec.inputs, spec.params["by"]
        columns = dask_stages.KEY + ([] if by.startswith("label:") else [by])
        with dask_stages.cluster(ctx):
            examples = dask_stages.read_examples(lake, inputs["datasets"], columns)
            prior = dask_stages.read_weights(lake, inputs["weights"]) if inputs["weights"] else None
        groups = example_groups(lake, examples, by, inputs["labels"])
        self.write(ctx, run, mix_examples(examples, groups, prior, spec.params))

    def executor_for(self, ctx: StageContext, spec: RunSpec) -> Any:
        from curation import dask_stages

        return self.execute_dask if dask_stages.wants_dask(ctx, spec.inputs["datasets"]) else self.execute

    def write(
        self, ctx: StageContext, run: Run, frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
    ) -> None:
        weights, schedule, metrics = frames
        run.write("weights", weights)
        run.write("mixture_schedule", schedule)
        run.write("metrics", metrics)
        if not ctx.quiet:
            summary = metrics[metrics["name"] == "effective_epochs"]
            print(
                "mix: effective epochs per group: "
                + ", ".join(f"{k} {v:.2f}" for k, v in zip(summary["key"], summary["value"], strict=True))
            )

    def report(self, ctx: StageContext, run_id: str) -> list[str]:
        return [f"export with: assay export {run_id} --out FOLDER"]
