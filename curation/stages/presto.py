"""Stage `presto`: each example's probability of the rarest rung of an ordered outcome ladder (PRESTO).

The ladder (ordered classes per example) comes from an earlier run:
  dart        samples of a DART run: the share of a query's trials that were correct:
              never (0) < sometimes (up to half) < most (over half) < every trial (1).
  influence   scores of an attribution run: each train example's mean score over targets, cut at the
              `quantiles` (default 0.5, 0.8, 0.95: the top 5% most helpful is the last rung).
  label:NAME  a per-example label (its distinct values, in numeric order), e.g. label:difficulty_band.
The features are the examples' text embeddings (the offline MiniLM by default) reduced to
`n_components` principal components. PRESTO (curation/presto.py) is fitted on the examples that have a
rung and predicts P(rarest rung | x) for *every* example of the recipe's datasets, so that examples
never sampled or scored get a probability too.

Parameters (defaults in `DEFAULTS`):
  ladder:        dart | influence | label:NAME
  source_run:    auto (the latest earlier stage of this recipe with the data, else the latest run in the
                 lake) or a run id
  quantiles:     influence cut points, increasing, in (0, 1)
  rare:          auto (whichever end rung has fewer examples; the ladder is reversed when it is the first)
                 | last | first
  model, text, batch_size: the embedding (see stage ppp); n_components: principal components kept
  n_lambdas, lambda_min_ratio, cv, cv_metric, seed: PRESTO's lambda path and cross-validation
  merge_small:   merge a rung with fewer than `cv` examples into its smaller neighbour (default true;
                 the merged rung is named "a + b"); false makes that a user error
Writes `labels` presto_p_rare (every example), presto_rung (examples with a rung, 0 = the common end,
the last = the rare end) and `metrics` (rung counts and names, the chosen lambda, its CV score).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from curation.embed import TEXT_FIELDS
from curation.presto import Presto
from curation.stages import StageContext, positive_int, stage, with_defaults
from curation.stages.mix import load_examples
from curation.stages.ppp import embed_examples, model_identity
from storage import Lake, UserError

DEFAULTS: dict[str, Any] = {
    "ladder": "dart",
    "source_run": "auto",
    "quantiles": [0.5, 0.8, 0.95],
    "rare": "auto",
    "model": None,
    "text": "both",
    "batch_size": 32,
    "n_components": 16,
    "n_lambdas": 20,
    "lambda_min_ratio": 0.01,
    "cv": 5,
    "cv_metric": "brier",
    "seed": 0,
    "merge_small": True,
}
DART_RUNGS = ("never solved", "solved sometimes", "solved at most trials", "solved at every trial")
SOURCE_TABLE = {"dart": "samples", "influence": "scores", "label": "labels"}


def resolve_params(params: dict | None) -> dict[str, Any]:
    """Defaults filled in and checked; every problem is a UserError naming the parameter."""
    p = with_defaults("presto", params, DEFAULTS)
    ladder = p["ladder"]
    if not isinstance(ladder, str) or not (
        ladder in ("dart", "influence") or (ladder.startswith("label:") and len(ladder) > 6)
    ):
        raise UserError(f"stage presto: ladder must be dart, influence or label:NAME, got {ladder!r}")
    if not isinstance(p["source_run"], str) or not p["source_run"]:
        raise UserError(f"stage presto: source_run must be auto or a run id, got {p['source_run']!r}")
    q = p["quantiles"]
    if not (
        isinstance(q, list)
        and q
        and all(isinstance(v, int | float) and 0 < v < 1 for v in q)
        and all(a < b for a, b in pairwise(q))
    ):
        raise UserError(f"stage presto: quantiles must be an increasing list of numbers in (0, 1), got {q!r}")
    if p["rare"] not in ("auto", "last", "first"):
        raise UserError(f"stage presto: rare must be auto, last or first, got {p['rare']!r}")
    if p["text"] not in TEXT_FIELDS:
        raise UserError(f"stage presto: text must be one of {', '.join(TEXT_FIELDS)}, got {p['text']!r}")
    for name in ("batch_size", "n_components", "n_lambdas"):
        if not positive_int(p[name]):
            raise UserError(f"stage presto: {name} must be a positive integer, got {p[name]!r}")
    if not positive_int(p["cv"]) or p["cv"] < 2:
        raise UserError(f"stage presto: cv must be an integer of at least 2, got {p['cv']!r}")
    ratio = p["lambda_min_ratio"]
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio < 1:
        raise UserError(f"stage presto: lambda_min_ratio must be in (0, 1), got {ratio!r}")
    if not isinstance(p["merge_small"], bool):
        raise UserError(f"stage presto: merge_small must be true or false, got {p['merge_small']!r}")
    if p["cv_metric"] not in ("brier", "brier_rare"):
        raise UserError(f"stage presto: cv_metric must be brier or brier_rare, got {p['cv_metric']!r}")
    if not isinstance(p["seed"], int) or isinstance(p["seed"], bool) or p["seed"] < 0:
        raise UserError(f"stage presto: seed must be a non-negative integer, got {p['seed']!r}")
    return p


def find_source_run(lake: Lake, ctx: StageContext, p: dict[str, Any]) -> str:
    """The run whose samples / scores / labels make the ladder."""
    kind = p["ladder"].split(":", 1)[0]
    table = SOURCE_TABLE[kind]
    where, args = ("name = ?", [p["ladder"].split(":", 1)[1]]) if kind == "label" else ("true", [])
    if p["source_run"] != "auto":
        lake.require_run(p["source_run"])
        hit = lake.query(
            f"SELECT count(*) AS n FROM {table} WHERE run_id = ? AND {where}", [p["source_run"], *args]
        )
        if not int(hit["n"].iloc[0]):
            raise UserError(f"stage presto: run {p['source_run']} wrote no {table} for ladder {p['ladder']}")
        return p["source_run"]
    for run_id in reversed(list(ctx.previous.values())):
        hit = lake.query(f"SELECT count(*) AS n FROM {table} WHERE run_id = ? AND {where}", [run_id, *args])
        if int(hit["n"].iloc[0]):
            return run_id
    found = lake.query(
        f"SELECT t.run_id FROM (SELECT DISTINCT run_id FROM {table} WHERE {where}) t "
        "JOIN runs r USING (run_id) ORDER BY r.finished_at DESC LIMIT 1",
        args,
    )
    if found.empty:
        raise UserError(
            f"stage presto: ladder {p['ladder']}: the lake at {lake.root} has no {table}"
            + (" with that name" if kind == "label" else "")
            + "; run that stage first"
        )
    return str(found["run_id"].iloc[0])


def dart_rungs(samples: pd.DataFrame) -> pd.Series:
    """query_id -> rung 0..3 from the share of correct trials."""
    share = samples.assign(correct=samples["correct"].astype(float)).groupby("query_id")["correct"].mean()
    rung = np.where(share == 0, 0, np.where(share <= 0.5, 1, np.where(share < 1, 2, 3)))
    return pd.Series(rung, index=share.index.astype(str))


def influence_rungs(scores: pd.DataFrame, quantiles: list[float]) -> pd.Series:
    """train_id -> rung: the number of `quantiles` cut points its mean score reaches."""
    mean = scores.groupby("train_id")["score"].mean()
    cuts = np.quantile(mean.to_numpy(), quantiles)
    return pd.Series(np.searchsorted(cuts, mean.to_numpy(), side="right"), index=mean.index.astype(str))


def label_rungs(labels: pd.DataFrame) -> pd.Series:
    """example_id -> rung: the rank of the label's value among its distinct values."""
    labels = labels.dropna(subset=["value"]).drop_duplicates("example_id", keep="last")
    values = np.unique(labels["value"].to_numpy())
    return pd.Series(
        np.searchsorted(values, labels["value"].to_numpy()), index=labels["example_id"].astype(str)
    )


def ladder_of(lake: Lake, p: dict[str, Any], run_id: str) -> tuple[pd.Series, list[str]]:
    """(example_id -> rung, rung names in order)."""
    kind = p["ladder"].split(":", 1)[0]
    if kind == "dart":
        samples = lake.query("SELECT query_id, correct FROM samples WHERE run_id = ?", [run_id])
        return dart_rungs(samples), list(DART_RUNGS)
    if kind == "influence":
        scores = lake.query("SELECT train_id, score FROM scores WHERE run_id = ?", [run_id])
        q = p["quantiles"]
        names = [f"below q{q[0]:g}", *(f"q{a:g}-q{b:g}" for a, b in pairwise(q)), f"above q{q[-1]:g}"]
        return influence_rungs(scores, q), names
    name = p["ladder"].split(":", 1)[1]
    labels = lake.query("SELECT example_id, value FROM labels WHERE run_id = ? AND name = ?", [run_id, name])
    values = np.unique(labels["value"].dropna().to_numpy())
    return label_rungs(labels), [f"{name}={v:g}" for v in values]


def merge_small_rungs(rungs: np.ndarray, names: list[str], minimum: int) -> tuple[np.ndarray, list[str]]:
    """Drop empty rungs and merge any rung with fewer than `minimum` examples into its smaller
    neighbour, until every rung is big enough or two are left. Returns rungs 0..m-1 and their names."""
    present = [int(r) for r in np.unique(rungs)]
    groups = [[r] for r in present]  # original rungs behind each merged rung
    counts = [int((rungs == r).sum()) for r in present]
    while len(groups) > 2 and min(counts) < minimum:
        i = int(np.argmin(counts))
        if i == 0:
            j = 1
        elif i == len(groups) - 1:
            j = i - 1
        else:
            j = i - 1 if counts[i - 1] <= counts[i + 1] else i + 1
        lo, hi = min(i, j), max(i, j)
        groups[lo : hi + 1] = [groups[lo] + groups[hi]]
        counts[lo : hi + 1] = [counts[lo] + counts[hi]]
    lookup = {r: k for k, group in enumerate(groups) for r in group}
    merged = np.array([lookup[int(r)] for r in rungs], dtype=int)
    return merged, [" + ".join(names[r] for r in group) for group in groups]


def orient(rungs: np.ndarray, names: list[str], rare: str) -> tuple[np.ndarray, list[str]]:
    """Put the rare end last (PRESTO shrinks the rare end's weights towards the common end's)."""
    present = np.unique(rungs)
    first, last = (rungs == present[0]).sum(), (rungs == present[-1]).sum()
    if rare == "first" or (rare == "auto" and first < last):
        top = len(names) - 1
        return top - rungs, names[::-1]
    return rungs, names


@stage("presto")
def presto(ctx: StageContext, params: dict) -> str:
    p = resolve_params(params)
    lake = ctx.lake
    versions = ctx.dataset_versions("presto")
    model = model_identity(p["model"], "presto")
    source = find_source_run(lake, ctx, p)
    examples = load_examples(lake, versions)
    ladder, names = ladder_of(lake, p, source)
    ids = examples["example_id"].astype(str)
    rung = ids.map(ladder)
    has = rung.notna().to_numpy()
    if not has.any():
        raise UserError(
            f"stage presto: run {source} gives no rung to any example of {', '.join(ctx.datasets)} "
            "(ids do not match)"
        )
    y = rung[has].to_numpy(dtype=int)
    if p["merge_small"]:
        y, names = merge_small_rungs(y, names, p["cv"])
    y, names = orient(y, names, p["rare"])
    present, counts = np.unique(y, return_counts=True)
    if len(present) < 2:
        raise UserError(
            f"stage presto: every example with a rung is on rung {names[present[0]]!r}; "
            "PRESTO needs at least two"
        )
    if counts.min() < p["cv"]:
        small = names[present[counts.argmin()]]
        raise UserError(
            f"stage presto: rung {small!r} has {counts.min()} examples, fewer than cv={p['cv']} folds; "
            "lower cv, use a coarser ladder or merge_small: true"
        )
    resolved = {**p, "source_run": source}
    inputs = {"datasets": versions, "ladder": source}
    with lake.run(kind="curate", method="presto", params=resolved, inputs=inputs, model=model) as run:
        if run.complete:
            return run.run_id
        vectors = embed_examples(examples, {**p, "pca": p["n_components"]}, ctx.device)
        estimator = Presto(
            n_lambdas=p["n_lambdas"],
            lambda_min_ratio=p["lambda_min_ratio"],
            cv=p["cv"],
            cv_metric=p["cv_metric"],
            random_state=p["seed"],
        ).fit(vectors[has], y)
        p_rare = estimator.predict_proba(vectors)[:, -1]
        keys = examples[["dataset", "example_id"]].reset_index(drop=True)
        run.write(
            "labels",
            pd.concat(
                [
                    keys.assign(name="presto_p_rare", value=p_rare),
                    keys[has].assign(name="presto_rung", value=y.astype(float)),
                ],
                ignore_index=True,
            ),
        )
        rare_name = names[int(estimator.classes_[-1])]
        rows = [
            ("examples", "all", float(len(examples))),
            ("with_rung", "all", float(has.sum())),
            ("lambda", "selected", estimator.lambda_),
            ("cv_score", p["cv_metric"], float(estimator.cv_scores_.min())),
            ("features", "pca", float(vectors.shape[1])),
            ("mean_p_rare", "all", float(p_rare.mean())),
        ]
        rows += [
            ("rung_count", f"rung={int(r)},name={names[int(r)]}", float(c))
            for r, c in zip(present, counts, strict=True)
        ]
        rows.append(("rare_rung", f"name={rare_name}", float(estimator.classes_[-1])))
        run.write("metrics", pd.DataFrame(rows, columns=["name", "key", "value"]))
        if not ctx.quiet:
            print(
                f"presto: ladder {p['ladder']} from run {source}: {has.sum()} of {len(examples)} examples on "
                f"{len(present)} rungs; rare rung {rare_name!r} ({counts[-1]} examples); "
                f"P(rare) mean {p_rare.mean():.3f}, max {p_rare.max():.3f}"
            )
    return run.run_id
