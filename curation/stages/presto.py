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

Parameters: `PrestoParams`. `rare: auto` takes whichever end rung has fewer examples (the ladder is
reversed when it is the first); with `merge_small` a rung with fewer than `cv` examples is merged into
its smaller neighbour (named "a + b"), without it that is a user error.
Writes `labels` presto_p_rare (every example), presto_rung (examples with a rung, 0 = the common end,
the last = the rare end) and `metrics` (rung counts and names, the chosen lambda, its CV score).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from curation.embed import TEXT_FIELDS
from curation.stages import RunSpec, Stage, StageContext, load_examples
from curation.stages.ppp import MODEL_DIR, embed_examples, embedding_model
from storage import Lake, Run, UserError
from storage.params import RUN_ID, SEED, Choice, Flag, Items, ParamError, Params, Text, integer, number, param

DART_RUNGS = ("never solved", "solved sometimes", "solved at most trials", "solved at every trial")
SOURCE_TABLE = {"dart": "samples", "influence": "scores", "label": "labels"}
LADDER = Text(
    "dart, influence or label:NAME (optionally :RUN_ID)",
    pattern=r"(dart|influence|label:[A-Za-z0-9_.-]+)(:[A-Za-z0-9_.=-]+)?",
)


@dataclass
class PrestoParams(Params):
    ladder: str = param(
        "dart", "outcome ladder: dart (DART samples) | influence (scores) | label:NAME", LADDER
    )
    source_run: str = param(
        "auto", "run with the ladder's data: auto (latest earlier stage, else latest) or a run id", RUN_ID
    )
    quantiles: list = param(
        [0.5, 0.8, 0.95], "influence: increasing cut points in (0, 1)", Items(number(0, 1, "neither"), 1, 100)
    )
    rare: str = param(
        "auto", "which end of the ladder is rare: auto | last | first", Choice(("auto", "last", "first"))
    )
    model: str | None = param(
        None, "sentence-transformers directory (default: the offline MiniLM)", MODEL_DIR
    )
    text: str = param("both", "what to embed: prompt | response | both", Choice(TEXT_FIELDS))
    batch_size: int = param(32, "texts per encoder call", integer(1, 100_000))
    n_components: int = param(16, "principal components of the embeddings used", integer(1, 100_000))
    n_lambdas: int = param(20, "lambda values on PRESTO's path", integer(1, 1000))
    lambda_min_ratio: float = param(0.01, "smallest lambda / lambda_max", number(0, 1, "neither"))
    cv: int = param(5, "cross-validation folds for lambda", integer(2, 100))
    cv_metric: str = param("brier", "brier | brier_rare", Choice(("brier", "brier_rare")))
    seed: int = param(0, "fold shuffling seed", SEED)
    merge_small: bool = param(
        True, "merge a rung with fewer than cv examples into its smaller neighbour", Flag()
    )

    def validate(self) -> None:
        # `ladder: dart:RUN_ID` is a shorthand for ladder dart with source_run RUN_ID.
        kind, _, rest = self.ladder.partition(":")
        if kind == "label":
            name, _, run = rest.partition(":")
            kind, rest = f"label:{name}", run
        if rest:
            if self.source_run not in ("auto", rest):
                raise ParamError(
                    "source_run", f"the ladder names run {rest}; source_run says {self.source_run}"
                )
            self.ladder, self.source_run = kind, rest
        if any(a >= b for a, b in pairwise(self.quantiles)):
            raise ParamError("quantiles", f"expected increasing cut points, got {self.quantiles}")


def find_source_run(ctx: StageContext, p: dict[str, Any]) -> str:
    """The run whose samples / scores / labels make the ladder."""
    kind = p["ladder"].split(":", 1)[0]
    where, args = ("name = ?", [p["ladder"].split(":", 1)[1]]) if kind == "label" else ("true", [])
    return ctx.find_run("presto", SOURCE_TABLE[kind], p["source_run"], where, args)


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


def ladder_targets(
    lake: Lake, examples: pd.DataFrame, p: dict[str, Any], source: str, datasets: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(which examples have a rung, their rungs oriented rare-last, rung names), checked for PRESTO."""
    ladder, names = ladder_of(lake, p, source)
    rung = examples["example_id"].astype(str).map(ladder)
    has = rung.notna().to_numpy()
    if not has.any():
        raise UserError(
            f"stage presto: run {source} gives no rung to any example of {', '.join(datasets)} (ids do not match)"
        )
    y = rung[has].to_numpy(dtype=int)
    if p["merge_small"]:
        y, names = merge_small_rungs(y, names, p["cv"])
    y, names = orient(y, names, p["rare"])
    present, counts = np.unique(y, return_counts=True)
    if len(present) < 2:
        raise UserError(
            f"stage presto: every example with a rung is on rung {names[present[0]]!r}; PRESTO needs at least two"
        )
    if counts.min() < p["cv"]:
        small = names[present[counts.argmin()]]
        raise UserError(
            f"stage presto: rung {small!r} has {counts.min()} examples, fewer than cv={p['cv']} folds; "
            "lower cv, use a coarser ladder or merge_small: true"
        )
    return has, y, names


class RareEventPresto(Stage):
    """PRESTO: each example's probability of the rarest rung of an outcome ladder (presto_p_rare)."""

    name = "presto"
    Params = PrestoParams
    reads = ("examples", "samples", "scores", "labels")
    writes = ("labels", "metrics")
    dataset_help = "dataset(s) to score (repeatable)"

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        versions = ctx.dataset_versions(self.name)
        model = embedding_model(p["model"], self.name)
        source = find_source_run(ctx, p)
        examples = load_examples(ctx.lake, versions)
        has, y, names = ladder_targets(ctx.lake, examples, p, source, ctx.datasets)
        return RunSpec(
            "curate",
            self.name,
            {**p, "source_run": source},
            {"datasets": versions, "ladder": source},
            model,
            context={"examples": examples, "has": has, "y": y, "names": names},
        )

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        from curation.presto import Presto

        p, c = spec.params, spec.context
        examples, has, y, names = c["examples"], c["has"], c["y"], c["names"]
        present, counts = np.unique(y, return_counts=True)
        vectors = embed_examples(examples, {**p, "pca": p["n_components"]}, ctx.resolved_device())
        with warnings.catch_warnings():  # the stage says it in its own line below
            warnings.filterwarnings("ignore", message="PRESTO: the fit is constant")
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
        rows.append(("constant", "all", float(estimator.constant_)))
        run.write("metrics", pd.DataFrame(rows, columns=["name", "key", "value"]))
        if estimator.constant_:  # shown even when quiet: every probability is the same number
            print(
                f"presto: warning: the fit is constant (lambda {estimator.lambda_:.3g}): every example gets "
                f"P(rare) {p_rare.mean():.3f}; the embeddings do not separate the rungs of {int(has.sum())} examples",
                file=sys.stderr,
            )
        if not ctx.quiet:
            print(
                f"presto: ladder {p['ladder']} from run {spec.inputs['ladder']}: {has.sum()} of {len(examples)} "
                f"examples on {len(present)} rungs; rare rung {rare_name!r} ({counts[-1]} examples); "
                f"P(rare) mean {p_rare.mean():.3f}, max {p_rare.max():.3f}"
            )

    def report(self, ctx: StageContext, run_id: str) -> list[str]:
        top = ctx.lake.query(
            "SELECT example_id, value AS p_rare FROM labels WHERE run_id = ? AND name = "
            "'presto_p_rare' ORDER BY value DESC LIMIT 5",
            [run_id],
        )
        return [
            "highest P(rare): " + ", ".join(f"{r.example_id} {r.p_rare:.3f}" for r in top.itertuples()),
            (
                f"inspect: assay sql \"SELECT * FROM labels WHERE run_id = '{run_id}' AND name = "
                "'presto_p_rare' ORDER BY value DESC LIMIT 20\""
            ),
        ]
