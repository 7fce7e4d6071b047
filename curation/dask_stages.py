"""Dask variants of curation stages, for inputs larger than memory. Each registers the same run (same
kind, method, parameters and inputs, hence the same run id) and writes the same rows as the in-memory
stage it stands for; the curate flow picks a variant when `storage.dask_io.use_dask` says so.

- `mix`: reads only the columns mixing needs (dataset, example_id, row_index and the grouping column)
  as a dask dataframe, never the texts, then mixes the compact id / group frame with the stage's own
  `mix_examples`.
- `influence_reweight`: the scores table (train x target rows, the lake's largest) is reduced on the
  cluster to per-(train example, target group) means; the stage's own functions turn those into
  weights, labels and metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curation import difficulty
from curation.stages import StageContext
from curation.stages import difficulty as difficulty_stage
from curation.stages import mix as mix_stage
from storage import Lake, UserError
from storage.dask_io import read_table, table_bytes
from storage.schemas import TABLES

KEY = ["dataset", "example_id"]


def examples_runs(lake: Lake, versions: dict[str, str]) -> dict[str, str]:
    """dataset -> the ingest run that holds that version."""
    found = lake.query("SELECT dataset, version, run_id FROM dataset_versions")
    runs = {(r.dataset, r.version): r.run_id for r in found.itertuples()}
    return {name: runs[(name, version)] for name, version in versions.items()}


def read_examples(lake: Lake, versions: dict[str, str], columns: list[str]) -> pd.DataFrame:
    """The given columns of the given dataset versions, in (dataset as listed, row_index) order:
    the order `mix.load_examples` gives, without reading the other columns."""
    runs = examples_runs(lake, versions)
    cols = list(dict.fromkeys(["dataset", "version", "row_index", *columns]))
    frames = []
    for name, version in versions.items():
        part = read_table(
            lake,
            "examples",
            [runs[name]],
            columns=cols,
            filters=[("dataset", "==", name), ("version", "==", version)],
        ).compute()
        frames.append(part.sort_values("row_index", kind="stable"))
    return pd.concat(frames, ignore_index=True)


def examples_bytes(ctx: StageContext, params: dict) -> int:
    versions = {name: ctx.lake.dataset_version(name) for name in ctx.datasets}
    return table_bytes(ctx.lake, "examples", examples_runs(ctx.lake, versions).values())


def mix(ctx: StageContext, params: dict) -> str:
    p = mix_stage.resolve_params(params)
    lake = ctx.lake
    versions = ctx.dataset_versions("mix")
    label_run, weights_run = mix_stage.find_inputs(ctx, p)
    by = p["by"]
    if not by.startswith("label:") and by not in TABLES["examples"].names:
        raise UserError(
            f"stage mix: by {by!r} is not a column of examples "
            f"({', '.join(c for c in TABLES['examples'].names if c != 'run_id')}) nor label:NAME"
        )
    examples = read_examples(lake, versions, KEY + ([] if by.startswith("label:") else [by]))
    groups = mix_stage.example_groups(lake, examples, by, label_run)
    prior = None
    if weights_run:
        prior = read_table(lake, "weights", [weights_run], columns=[*KEY, "weight", "copies"]).compute()
    inputs = {"datasets": versions, "labels": label_run, "weights": weights_run}
    with lake.run(kind="curate", method="mix", params=p, inputs=inputs) as run:
        if run.complete:
            return run.run_id
        weights, schedule, metrics = mix_stage.mix_examples(examples, groups, prior, p)
        run.write("weights", weights)
        run.write("mixture_schedule", schedule)
        run.write("metrics", metrics)
    return run.run_id


def scores_bytes(ctx: StageContext, params: dict) -> int:
    p = difficulty_stage.resolve_reweight(params)
    run = difficulty_stage.latest_scores_run(ctx.lake) if p["scores_run"] == "latest" else p["scores_run"]
    return table_bytes(ctx.lake, "scores", [run])


def group_means(scores: Any, groups: pd.Series) -> pd.DataFrame:
    """Per (train_id, group): the mean score over the group's targets, reduced on the cluster.
    `scores` is a dask dataframe (train_id, target_id, score); targets without a group are ignored."""
    mapping = {str(k): str(v) for k, v in groups.items()}
    frame = scores[["train_id", "target_id", "score"]]
    frame = frame.assign(group=frame["target_id"].astype(str).map(mapping, meta=("group", "object")))
    frame = frame.dropna(subset=["group"])
    sums = frame.groupby(["train_id", "group"])["score"].agg(["sum", "count"]).compute()
    means = (sums["sum"] / sums["count"]).rename("score").reset_index()
    means["train_id"] = means["train_id"].astype(str)
    return means


def aggregate_influence(scores: Any, groups: pd.Series, group_weights: dict | None) -> pd.DataFrame:
    """`difficulty.aggregate_influence` over a dask scores frame: the group means come from the cluster;
    the method combines them (one stand-in target per group carries its mean)."""
    means = group_means(scores, groups)
    if means.empty:
        raise ValueError("no score has a target in the given groups")
    stand_in = means.assign(target_id="group=" + means["group"].astype(str))
    stand_groups = pd.Series(means["group"].astype(str).to_numpy(), index=stand_in["target_id"].to_numpy())
    stand_groups = stand_groups[~stand_groups.index.duplicated()]
    return difficulty.aggregate_influence(
        stand_in[["train_id", "target_id", "score"]], stand_groups, group_weights
    )


def influence_reweight(ctx: StageContext, params: dict) -> str:
    p = difficulty_stage.resolve_reweight(params)
    lake = ctx.lake
    versions = ctx.dataset_versions("influence_reweight")
    examples = read_examples(lake, versions, KEY)
    scores_run = difficulty_stage.latest_scores_run(lake) if p["scores_run"] == "latest" else p["scores_run"]
    lake.require_run(scores_run)
    scores = read_table(lake, "scores", [scores_run], columns=["train_id", "target_id", "score"])
    targets = sorted(scores["target_id"].astype(str).unique().compute().tolist())
    if not targets:
        raise UserError(f"stage influence_reweight: run {scores_run} wrote no scores")
    groups = difficulty_stage.scored_target_groups(lake, targets, p, scores_run)
    resolved = {**p, "scores_run": scores_run}
    inputs = {"datasets": versions, "scores": scores_run}
    with lake.run(kind="curate", method="influence_reweight", params=resolved, inputs=inputs) as run:
        if run.complete:
            return run.run_id
        agg = aggregate_influence(scores, groups, p["groups"])
        influence = agg["influence"].reindex(examples["example_id"].astype(str).to_numpy())
        influence.index = examples.index
        out = difficulty.influence_weights(
            influence,
            temperature=p["temperature"],
            transform=p["transform"],
            clip_min=p["clip_min"],
            clip_max=p["clip_max"],
        )
        ids = examples[KEY].reset_index(drop=True)
        run.write("weights", ids.assign(weight=out["weight"].to_numpy(), copies=out["copies"].to_numpy()))
        labels = []
        for name, values in [("influence", influence.to_numpy()), ("influence_z", out["z"].to_numpy())] + [
            (f"influence:{g}", agg[str(g)].reindex(ids["example_id"].astype(str)).to_numpy())
            for g in agg.columns
            if g != "influence"
        ]:
            labels.append(
                ids.assign(name=name, value=np.asarray(values, dtype=float)).dropna(subset=["value"])
            )
        run.write("labels", pd.concat(labels, ignore_index=True))
        metrics = [
            ("examples", "all", float(len(examples))),
            ("scored", "all", float(influence.notna().sum())),
            ("weight_min", "all", float(out["weight"].min())),
            ("weight_max", "all", float(out["weight"].max())),
            ("copies", "all", float(out["copies"].sum())),
        ]
        metrics += [("targets", f"group={g}", float((groups == g).sum())) for g in sorted(set(groups))]
        run.write("metrics", pd.DataFrame(metrics, columns=["name", "key", "value"]))
    return run.run_id


@dataclass(frozen=True)
class Variant:
    run: Callable[[StageContext, dict], str]
    input_bytes: Callable[[StageContext, dict], int]  # on-disk size of the stage's big input


VARIANTS: dict[str, Variant] = {
    "mix": Variant(mix, examples_bytes),
    "influence_reweight": Variant(influence_reweight, scores_bytes),
}
