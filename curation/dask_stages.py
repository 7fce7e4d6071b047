"""Dask executors' reading side for curation stages whose input can outgrow memory (`mix`,
`influence_reweight`). The stages' `execute_dask` call these; they run the same method on the same rows
as the in-memory executor and write the same run.

- examples: only the columns a stage needs (dataset, example_id, row_index and the grouping column),
  never the texts, in the order `load_examples` gives;
- scores (train x target rows, the lake's largest table): reduced on the cluster to per-(train example,
  target group) means, which `difficulty.aggregate_influence` combines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from curation import difficulty
from storage import Lake
from storage.dask_io import dask_client, read_table, table_bytes, use_dask
from storage.stage import StageContext

KEY = ["dataset", "example_id"]


def examples_runs(lake: Lake, versions: dict[str, str]) -> dict[str, str]:
    """dataset -> the ingest run that holds that version."""
    found = lake.query("SELECT dataset, version, run_id FROM dataset_versions")
    runs = {(r.dataset, r.version): r.run_id for r in found.itertuples()}
    return {name: runs[(name, version)] for name, version in versions.items()}


def wants_dask(
    ctx: StageContext, versions: dict[str, str] | None = None, scores_run: str | None = None
) -> bool:
    """Should a stage run on Dask: a cluster asked for, or its big input (the examples of `versions` or the
    scores of `scores_run`) larger than memory."""
    lake = ctx.lake
    if scores_run is not None:
        nbytes = table_bytes(lake, "scores", [scores_run])
    else:
        nbytes = table_bytes(lake, "examples", examples_runs(lake, versions or {}).values())
    return use_dask(nbytes, ctx.dask)


@contextmanager
def cluster(ctx: StageContext) -> Iterator[Any]:
    with dask_client(ctx.dask) as client:
        yield client


def read_examples(lake: Lake, versions: dict[str, str], columns: list[str]) -> pd.DataFrame:
    """The given columns of the given dataset versions, in (dataset as listed, row_index) order:
    the order `load_examples` gives, without reading the other columns."""
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


def read_weights(lake: Lake, run_id: str) -> pd.DataFrame:
    """A run's weights rows (the two channels; curation/curated.py)."""
    return read_table(lake, "weights", [run_id], columns=[*KEY, "copies", "loss_weight"]).compute()


def read_scores(lake: Lake, run_id: str) -> Any:
    """A dask dataframe of a run's scores (train_id, target_id, score)."""
    return read_table(lake, "scores", [run_id], columns=["train_id", "target_id", "score"])


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
