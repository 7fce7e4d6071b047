"""Stages `difficulty_flip` and `influence_reweight` (Infra, arXiv 2505.19949) over the recipe's examples.

difficulty_flip parameters:
  directions: {domain: hard | easy | none}; default {math: hard, code: easy} (the paper's finding)
  fraction:   share of the source band's weight moved (1.0: a full swap), in [0, 1]
  easy_max, hard_min: difficulty thresholds, a number or {domain: number}; default: per-domain tertiles
Writes `weights` (weight, copies; each domain keeps its size), `labels` difficulty_band
(0 easy, 1 medium, 2 hard) and `metrics` (examples and copies per domain and band).

influence_reweight parameters:
  scores_run:  the attribution run whose `scores` to use, or `latest` (the latest complete run with scores)
  group_by:    the `examples` column that groups target examples (default domain)
  groups:      {group: weight} for the target groups (default: every scored group, equal weights)
  temperature, transform (exp | linear), clip_min, clip_max: see curation/difficulty.py
Writes `weights` for every example of the recipe's datasets (unscored ones keep weight 1),
`labels` influence (the aggregate), influence_z and influence:<group>, and `metrics`.
Scores are assay's convention: positive = helpful.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from curation import difficulty
from curation.stages import StageContext, stage, with_defaults
from curation.stages.mix import load_examples
from storage import Lake, UserError

FLIP_DEFAULTS: dict[str, Any] = {
    "directions": {"math": "hard", "code": "easy"},
    "fraction": 1.0,
    "easy_max": None,
    "hard_min": None,
}
REWEIGHT_DEFAULTS: dict[str, Any] = {
    "scores_run": "latest",
    "group_by": "domain",
    "groups": None,
    "temperature": 1.0,
    "transform": "exp",
    "clip_min": 0.25,
    "clip_max": 4.0,
}
BAND_CODES = {"easy": 0.0, "medium": 1.0, "hard": 2.0}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolve_flip(params: dict | None) -> dict[str, Any]:
    p = with_defaults("difficulty_flip", params, FLIP_DEFAULTS)
    if not isinstance(p["directions"], dict) or not p["directions"]:
        raise UserError(
            f"stage difficulty_flip: directions must map domains to hard/easy/none, got {p['directions']!r}"
        )
    for domain, direction in p["directions"].items():
        if direction not in difficulty.DIRECTIONS:
            raise UserError(
                f"stage difficulty_flip: directions.{domain} must be one of "
                f"{', '.join(difficulty.DIRECTIONS)}, got {direction!r}"
            )
    if not _number(p["fraction"]) or not 0 <= p["fraction"] <= 1:
        raise UserError(f"stage difficulty_flip: fraction must be a number in [0, 1], got {p['fraction']!r}")
    for name in ("easy_max", "hard_min"):
        value = p[name]
        if value is None or _number(value):
            continue
        if not isinstance(value, dict) or not all(_number(v) for v in value.values()):
            raise UserError(
                f"stage difficulty_flip: {name} must be a number or {{domain: number}}, got {value!r}"
            )
    return p


def resolve_reweight(params: dict | None) -> dict[str, Any]:
    p = with_defaults("influence_reweight", params, REWEIGHT_DEFAULTS)
    if not isinstance(p["scores_run"], str) or not p["scores_run"]:
        raise UserError(
            f"stage influence_reweight: scores_run must be a run id or latest, got {p['scores_run']!r}"
        )
    if p["transform"] not in difficulty.TRANSFORMS:
        raise UserError(
            f"stage influence_reweight: transform must be one of {', '.join(difficulty.TRANSFORMS)}, "
            f"got {p['transform']!r}"
        )
    if not _number(p["temperature"]) or not p["temperature"] > 0:
        raise UserError(f"stage influence_reweight: temperature must be positive, got {p['temperature']!r}")
    lo, hi = p["clip_min"], p["clip_max"]
    if not (_number(lo) and _number(hi) and 0 <= lo <= 1 <= hi):
        raise UserError(f"stage influence_reweight: need 0 <= clip_min <= 1 <= clip_max, got {lo!r}, {hi!r}")
    groups = p["groups"]
    if groups is not None and (
        not isinstance(groups, dict) or not groups or not all(_number(w) and w >= 0 for w in groups.values())
    ):
        raise UserError(
            f"stage influence_reweight: groups must map target groups to non-negative weights, got {groups!r}"
        )
    return p


def _examples(ctx: StageContext, stage_name: str) -> tuple[dict[str, str], pd.DataFrame]:
    versions = ctx.dataset_versions(stage_name)
    return versions, load_examples(ctx.lake, versions)


@stage("difficulty_flip")
def difficulty_flip(ctx: StageContext, params: dict) -> str:
    p = resolve_flip(params)
    versions, examples = _examples(ctx, "difficulty_flip")
    present = set(examples["domain"].dropna())
    absent = sorted(set(p["directions"]) - present)
    if absent == sorted(p["directions"]):
        raise UserError(
            f"stage difficulty_flip: no example has domain {', '.join(absent)} "
            f"(domains: {', '.join(sorted(present)) or 'none'})"
        )
    with ctx.lake.run(
        kind="curate", method="difficulty_flip", params=p, inputs={"datasets": versions}
    ) as run:
        if run.complete:
            return run.run_id
        flipped = difficulty.difficulty_flip(
            examples, p["directions"], p["fraction"], p["easy_max"], p["hard_min"]
        )
        weights = examples[["dataset", "example_id"]].assign(
            weight=flipped["weight"].to_numpy(), copies=flipped["copies"].to_numpy()
        )
        run.write("weights", weights)
        banded = flipped["band"].notna().to_numpy()
        run.write(
            "labels",
            pd.DataFrame(
                {
                    "dataset": examples["dataset"][banded].to_numpy(),
                    "example_id": examples["example_id"][banded].to_numpy(),
                    "name": "difficulty_band",
                    "value": flipped["band"][banded].map(BAND_CODES).to_numpy(dtype=float),
                }
            ),
        )
        table = pd.DataFrame(
            {
                "domain": examples["domain"].fillna("(none)").to_numpy(),
                "band": flipped["band"].fillna("(none)").to_numpy(),
                "copies": flipped["copies"].to_numpy(),
            }
        )
        summary = table.groupby(["domain", "band"]).agg(examples=("copies", "size"), copies=("copies", "sum"))
        rows = [
            (name, f"domain={d},band={b}", float(v))
            for (d, b), r in summary.iterrows()
            for name, v in (("examples", r["examples"]), ("copies", r["copies"]))
        ]
        run.write("metrics", pd.DataFrame(rows, columns=["name", "key", "value"]))
        if not ctx.quiet:
            for (d, b), r in summary.iterrows():
                print(f"difficulty_flip: {d} {b}: {int(r['examples'])} examples -> {int(r['copies'])} copies")
    return run.run_id


def latest_scores_run(lake: Lake) -> str:
    found = lake.query(
        "SELECT s.run_id FROM (SELECT DISTINCT run_id FROM scores) s JOIN runs r USING (run_id) "
        "ORDER BY r.finished_at DESC LIMIT 1"
    )
    if found.empty:
        raise UserError(
            f"stage influence_reweight: the lake at {lake.root} has no scores; run attribution first"
        )
    return str(found["run_id"].iloc[0])


def scored_target_groups(lake: Lake, targets: list[str], p: dict, scores_run: str) -> Any:
    """Each scored target's group; groups asked for but never scored, or no known target, are user errors."""
    groups = target_groups(lake, targets, p["group_by"])
    scored_groups = sorted(set(groups))
    if p["groups"] is not None:
        unknown = sorted(set(p["groups"]) - set(scored_groups))
        if unknown:
            raise UserError(
                f"stage influence_reweight: groups {', '.join(unknown)} have no scored targets "
                f"(scored groups by {p['group_by']}: {', '.join(scored_groups) or 'none'})"
            )
    if not len(groups):
        raise UserError(f"stage influence_reweight: no target of run {scores_run} is an example in the lake")
    return groups


def target_groups(lake: Lake, target_ids: list[str], group_by: str) -> pd.Series:
    """target_id -> group (an `examples` column of the target example, from any dataset)."""
    columns = set(lake.query("SELECT * FROM examples_all LIMIT 0").columns)
    if group_by not in columns or group_by in ("run_id", "messages", "meta"):
        raise UserError(f"stage influence_reweight: group_by {group_by!r} is not an examples column")
    con = lake.connect()
    try:
        con.register("wanted", pd.DataFrame({"example_id": target_ids}))
        rows = con.execute(
            f'SELECT DISTINCT e.example_id, CAST(e."{group_by}" AS VARCHAR) AS grp '
            "FROM examples_all e JOIN wanted USING (example_id)"
        ).df()
    finally:
        con.close()
    rows = rows.dropna(subset=["grp"]).drop_duplicates("example_id", keep="first")
    return pd.Series(rows["grp"].to_numpy(), index=rows["example_id"].astype(str).to_numpy(), dtype=object)


@stage("influence_reweight")
def influence_reweight(ctx: StageContext, params: dict) -> str:
    p = resolve_reweight(params)
    lake = ctx.lake
    versions, examples = _examples(ctx, "influence_reweight")
    scores_run = latest_scores_run(lake) if p["scores_run"] == "latest" else p["scores_run"]
    lake.require_run(scores_run)
    scores = lake.query("SELECT train_id, target_id, score FROM scores WHERE run_id = ?", [scores_run])
    if scores.empty:
        raise UserError(f"stage influence_reweight: run {scores_run} wrote no scores")
    groups = scored_target_groups(lake, sorted(scores["target_id"].astype(str).unique()), p, scores_run)
    resolved = {**p, "scores_run": scores_run}
    inputs = {"datasets": versions, "scores": scores_run}
    with lake.run(kind="curate", method="influence_reweight", params=resolved, inputs=inputs) as run:
        if run.complete:
            return run.run_id
        agg = difficulty.aggregate_influence(scores, groups, p["groups"])
        influence = agg["influence"].reindex(examples["example_id"].astype(str).to_numpy())
        influence.index = examples.index
        out = difficulty.influence_weights(
            influence,
            temperature=p["temperature"],
            transform=p["transform"],
            clip_min=p["clip_min"],
            clip_max=p["clip_max"],
        )
        run.write(
            "weights",
            examples[["dataset", "example_id"]].assign(
                weight=out["weight"].to_numpy(), copies=out["copies"].to_numpy()
            ),
        )
        labels = []
        ids = examples[["dataset", "example_id"]].reset_index(drop=True)
        for name, values in [("influence", influence.to_numpy()), ("influence_z", out["z"].to_numpy())] + [
            (f"influence:{g}", agg[str(g)].reindex(ids["example_id"].astype(str)).to_numpy())
            for g in agg.columns
            if g != "influence"
        ]:
            frame = ids.assign(name=name, value=np.asarray(values, dtype=float))
            labels.append(frame.dropna(subset=["value"]))
        run.write("labels", pd.concat(labels, ignore_index=True))
        scored = int(influence.notna().sum())
        metrics = [
            ("examples", "all", float(len(examples))),
            ("scored", "all", float(scored)),
            ("weight_min", "all", float(out["weight"].min())),
            ("weight_max", "all", float(out["weight"].max())),
            ("copies", "all", float(out["copies"].sum())),
        ]
        metrics += [("targets", f"group={g}", float((groups == g).sum())) for g in sorted(set(groups))]
        run.write("metrics", pd.DataFrame(metrics, columns=["name", "key", "value"]))
        if not ctx.quiet:
            print(
                f"influence_reweight: {scored}/{len(examples)} examples scored by run {scores_run}; "
                f"weights in [{out['weight'].min():.3g}, {out['weight'].max():.3g}], mean 1"
            )
    return run.run_id
