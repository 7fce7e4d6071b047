"""Stages `difficulty_flip` and `influence_reweight` (Infra, arXiv 2505.19949) over the recipe's examples.

difficulty_flip (`FlipParams`) writes `weights` (weight, copies; each domain keeps its size), `labels`
difficulty_band (0 easy, 1 medium, 2 hard) and `metrics` (examples and copies per domain and band).

influence_reweight (`ReweightParams`) writes `weights` for every example of the recipe's datasets
(unscored ones keep weight 1), `labels` influence (the aggregate), influence_z and influence:<group>, and
`metrics`. Scores are assay's convention: positive = helpful. `scores_run: auto` reads the scores of the
latest earlier stage of the recipe that wrote some (an `attribute` stage), else the latest in the lake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curation import difficulty
from curation.stages import RunSpec, Stage, StageContext, load_examples
from storage import Lake, Run, UserError
from storage.params import (
    COLUMN,
    NAME,
    RUN_ID,
    Choice,
    MapOf,
    OneOf,
    Params,
    number,
    optional,
    param,
)

BAND_CODES = {"easy": 0.0, "medium": 1.0, "hard": 2.0}
THRESHOLD = optional(OneOf((number(-1e12, 1e12), MapOf(NAME, number(-1e12, 1e12)))))


@dataclass
class FlipParams(Params):
    directions: dict = param(
        {"math": "hard", "code": "easy"},
        "domain -> hard | easy | none (the paper: harder math, easier code)",
        MapOf(NAME, Choice(difficulty.DIRECTIONS), min_items=1),
    )
    fraction: float = param(1.0, "share of the source band's weight moved (1: a full swap)", number(0, 1))
    easy_max: Any = param(
        None,
        "difficulty at or below which an example is easy (number or {domain: number}); "
        "default: the domain's lower tertile",
        THRESHOLD,
    )
    hard_min: Any = param(
        None,
        "difficulty at or above which an example is hard (number or {domain: number}); "
        "default: the domain's upper tertile",
        THRESHOLD,
    )


@dataclass
class ReweightParams(Params):
    scores_run: str = param("auto", "attribution run whose scores to use: auto | latest | a run id", RUN_ID)
    group_by: str = param("domain", "examples column grouping the targets", COLUMN)
    groups: dict | None = param(
        None,
        "{group: weight} over target groups (default: every scored group, equal weights)",
        optional(MapOf(NAME, number(0, 1e6), min_items=1)),
    )
    temperature: float = param(1.0, "weights = exp(z / temperature)", number(0, 1e6, "right"))
    transform: str = param("exp", "exp | linear (1 + z / temperature)", Choice(difficulty.TRANSFORMS))
    clip_min: float = param(0.25, "smallest weight", number(0, 1))
    clip_max: float = param(4.0, "largest weight", number(1, 1e6))


class DifficultyFlip(Stage):
    """Infra's difficulty flip: move weight from easy to hard examples of a domain (or the reverse)."""

    name = "difficulty_flip"
    Params = FlipParams
    reads = ("examples",)
    writes = ("weights", "labels", "metrics")
    cli_aliases = ("flip",)

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        versions = ctx.dataset_versions(self.name)
        present = set(domains_of(ctx.lake, versions))
        absent = sorted(set(p["directions"]) - present)
        if absent == sorted(p["directions"]):
            raise UserError(
                f"stage difficulty_flip: no example has domain {', '.join(absent)} "
                f"(domains: {', '.join(sorted(present)) or 'none'})"
            )
        return RunSpec("curate", self.name, p, {"datasets": versions})

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        p = spec.params
        examples = load_examples(ctx.lake, spec.inputs["datasets"])
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


def domains_of(lake: Lake, versions: dict[str, str]) -> list[str]:
    """The distinct domains of the given dataset versions."""
    found = []
    for name, version in versions.items():
        rows = lake.query(
            "SELECT DISTINCT domain FROM examples_all WHERE dataset = ? AND version = ? AND domain IS NOT NULL",
            [name, version],
        )
        found += rows["domain"].astype(str).tolist()
    return sorted(set(found))


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


class InfluenceReweight(Stage):
    """Infra's influence reweighting: weight examples by their influence on the target groups."""

    name = "influence_reweight"
    Params = ReweightParams
    reads = ("examples", "scores")
    writes = ("weights", "labels", "metrics")
    executors = ("local", "dask")
    cli_aliases = ("reweight",)

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        lake = ctx.lake
        versions = ctx.dataset_versions(self.name)
        scores_run = ctx.find_run(self.name, "scores", p["scores_run"])
        targets = lake.query("SELECT DISTINCT target_id FROM scores WHERE run_id = ?", [scores_run])
        groups = scored_target_groups(lake, sorted(targets["target_id"].astype(str)), p, scores_run)
        return RunSpec(
            "curate",
            self.name,
            {**p, "scores_run": scores_run},
            {"datasets": versions, "scores": scores_run},
            context={"groups": groups},
        )

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        examples = load_examples(ctx.lake, spec.inputs["datasets"])[["dataset", "example_id"]]
        scores = ctx.lake.query(
            "SELECT train_id, target_id, score FROM scores WHERE run_id = ?", [spec.inputs["scores"]]
        )
        groups = spec.context["groups"]
        agg = difficulty.aggregate_influence(scores, groups, spec.params["groups"])
        self.write(ctx, run, spec, examples, agg)

    def execute_dask(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        """The same weights with the scores (train x target rows) reduced on a Dask cluster."""
        from curation import dask_stages

        with dask_stages.cluster(ctx):
            examples = dask_stages.read_examples(ctx.lake, spec.inputs["datasets"], dask_stages.KEY)
            scores = dask_stages.read_scores(ctx.lake, spec.inputs["scores"])
            agg = dask_stages.aggregate_influence(scores, spec.context["groups"], spec.params["groups"])
        self.write(ctx, run, spec, examples, agg)

    def executor_for(self, ctx: StageContext, spec: RunSpec) -> Any:
        from curation import dask_stages

        return (
            self.execute_dask
            if dask_stages.wants_dask(ctx, scores_run=spec.inputs["scores"])
            else self.execute
        )

    def write(
        self, ctx: StageContext, run: Run, spec: RunSpec, examples: pd.DataFrame, agg: pd.DataFrame
    ) -> None:
        p, groups = spec.params, spec.context["groups"]
        ids = examples[["dataset", "example_id"]].reset_index(drop=True)
        influence = agg["influence"].reindex(ids["example_id"].astype(str).to_numpy())
        influence.index = ids.index
        out = difficulty.influence_weights(
            influence,
            temperature=p["temperature"],
            transform=p["transform"],
            clip_min=p["clip_min"],
            clip_max=p["clip_max"],
        )
        run.write("weights", ids.assign(weight=out["weight"].to_numpy(), copies=out["copies"].to_numpy()))
        labels = []
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
            ("examples", "all", float(len(ids))),
            ("scored", "all", float(scored)),
            ("weight_min", "all", float(out["weight"].min())),
            ("weight_max", "all", float(out["weight"].max())),
            ("copies", "all", float(out["copies"].sum())),
        ]
        metrics += [("targets", f"group={g}", float((groups == g).sum())) for g in sorted(set(groups))]
        run.write("metrics", pd.DataFrame(metrics, columns=["name", "key", "value"]))
        if not ctx.quiet:
            print(
                f"influence_reweight: {scored}/{len(ids)} examples scored by run {spec.inputs['scores']}; "
                f"weights in [{out['weight'].min():.3g}, {out['weight'].max():.3g}], mean 1"
            )
