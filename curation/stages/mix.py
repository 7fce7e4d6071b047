"""Stage `mix`: temperature sampling / scalarization / Cooldown over groups of the recipe's examples.

Recipe parameters (defaults in `DEFAULTS`):
  by:            the grouping: an `examples` column (domain, dataset, difficulty, ...) or `label:NAME`
                 for a per-example label an earlier stage wrote (e.g. `label:ppp_cluster`).
  method:        temperature (draw groups with p_i(tau); copies = draws) or scalarization (proportional
                 draws, loss weight p_i(tau) / p_i(1); needs a constant schedule).
  schedule:      cooldown (tau until `switch`, then tau_end), constant, linear or cosine.
  tau, tau_end, switch, batch_size, seed, replace (draw with replacement within a group).
  steps:         training steps the schedule spans; default ceil(epochs * pool / batch_size).
  epochs:        used only for the default `steps`.
  weights_from:  an earlier stage whose weights to build on (its copies define the pool, its weight
                 multiplies ours); `auto` (default) = the latest earlier stage that wrote weights;
                 `none` = start from every example once.
Writes `weights` (weight, copies per example), `mixture_schedule` (step, group_name, tau, probability) and
`metrics` (per group: pool (size, prior copies counted), draws, effective_epochs; F(tau) per tau).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from curation import mixing
from curation.stages import StageContext, stage, with_defaults
from storage import Lake, UserError

DEFAULTS: dict[str, Any] = {
    "by": "domain",
    "method": "temperature",
    "schedule": "cooldown",
    "tau": 5.0,
    "tau_end": 1.0,
    "switch": 0.5,
    "steps": None,
    "epochs": 1.0,
    "batch_size": 16,
    "seed": 0,
    "replace": False,
    "weights_from": "auto",
}
METHODS = ("temperature", "scalarization")
MISSING_GROUP = "(missing)"


def resolve_params(params: dict | None) -> dict[str, Any]:
    """Defaults filled in and checked; every problem is a UserError naming the parameter."""
    p = with_defaults("mix", params, DEFAULTS)
    if p["method"] not in METHODS:
        raise UserError(f"stage mix: method must be one of {', '.join(METHODS)}, got {p['method']!r}")
    if p["schedule"] not in mixing.SCHEDULES:
        raise UserError(
            f"stage mix: schedule must be one of {', '.join(mixing.SCHEDULES)}, got {p['schedule']!r}"
        )
    if p["method"] == "scalarization" and p["schedule"] != "constant":
        raise UserError("stage mix: scalarization weights examples by one tau; use schedule: constant")
    for name in ("tau", "tau_end", "epochs"):
        if not isinstance(p[name], int | float) or isinstance(p[name], bool) or not p[name] > 0:
            raise UserError(f"stage mix: {name} must be a positive number, got {p[name]!r}")
    if not isinstance(p["switch"], int | float) or not 0 <= p["switch"] <= 1:
        raise UserError(f"stage mix: switch is a fraction of training in [0, 1], got {p['switch']!r}")
    for name in ("batch_size", "seed") + (("steps",) if p["steps"] is not None else ()):
        if (
            not isinstance(p[name], int)
            or isinstance(p[name], bool)
            or p[name] < (0 if name == "seed" else 1)
        ):
            raise UserError(
                f"stage mix: {name} must be a {'non-negative' if name == 'seed' else 'positive'} "
                f"integer, got {p[name]!r}"
            )
    if not isinstance(p["replace"], bool):
        raise UserError(f"stage mix: replace must be true or false, got {p['replace']!r}")
    if not isinstance(p["by"], str) or not p["by"] or p["by"] == "label:":
        raise UserError(f"stage mix: by must name an examples column or label:NAME, got {p['by']!r}")
    return p


def load_examples(lake: Lake, versions: dict[str, str]) -> pd.DataFrame:
    """The examples of the given dataset versions, in (dataset, row_index) order."""
    frames = [
        lake.query(
            "SELECT * FROM examples_all WHERE dataset = ? AND version = ? ORDER BY row_index", [name, version]
        )
        for name, version in versions.items()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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


def _earlier_run(lake: Lake, ctx: StageContext, table: str, where: str, params: list) -> str | None:
    """The latest earlier stage run of this recipe with rows in `table` matching `where`."""
    for run_id in reversed(list(ctx.previous.values())):
        hit = lake.query(f"SELECT count(*) AS n FROM {table} WHERE run_id = ? AND {where}", [run_id, *params])
        if int(hit["n"].iloc[0]):
            return run_id
    return None


def find_inputs(ctx: StageContext, p: dict[str, Any]) -> tuple[str | None, str | None]:
    """(run id of the labels to group by, run id of the weights to build on)."""
    label_run = None
    if p["by"].startswith("label:"):
        label_run = _earlier_run(ctx.lake, ctx, "labels", "name = ?", [p["by"].split(":", 1)[1]])
    choice = p["weights_from"]
    if choice in (None, "none"):
        weights_run = None
    elif choice == "auto":
        weights_run = _earlier_run(ctx.lake, ctx, "weights", "true", [])
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
    steps = p["steps"] or max(1, math.ceil(p["epochs"] * len(pool) / p["batch_size"]))

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


@stage("mix")
def mix(ctx: StageContext, params: dict) -> str:
    p = resolve_params(params)
    lake = ctx.lake
    versions = ctx.dataset_versions("mix")
    label_run, weights_run = find_inputs(ctx, p)
    examples = load_examples(lake, versions)
    groups = example_groups(lake, examples, p["by"], label_run)  # validates `by` before any write
    prior = lake.table("weights", "run_id = ?", [weights_run]) if weights_run else None
    inputs = {"datasets": versions, "labels": label_run, "weights": weights_run}
    with lake.run(kind="curate", method="mix", params=p, inputs=inputs) as run:
        if run.complete:
            return run.run_id
        weights, schedule, metrics = mix_examples(examples, groups, prior, p)
        run.write("weights", weights)
        run.write("mixture_schedule", schedule)
        run.write("metrics", metrics)
        if not ctx.quiet:
            summary = metrics[metrics["name"] == "effective_epochs"]
            print(
                "mix: effective epochs per group: "
                + ", ".join(f"{k} {v:.2f}" for k, v in zip(summary["key"], summary["value"], strict=True))
            )
    return run.run_id
