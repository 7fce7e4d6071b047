"""Stages `difficulty_flip` and `influence_reweight` (Infra, arXiv 2505.19949) over the recipe's examples.

difficulty_flip (`FlipParams`) is a replacement: it needs a candidate `pool` (a dataset, or a DART stage's
kept responses) and replaces easy examples of a `hard` domain by hard pool examples not already in the mix
(and the reverse for `easy`). It acts on the copies channel (curation/curated.py): its `weights` are the
flipped set (the kept examples with their copies and loss weights, and the pool examples that took the
replaced ones' places and copies, loss weight 1); the replaced examples leave the set. Writes `labels`
difficulty_band (0 easy, 1 medium, 2 hard), flip_removed / flip_added (1), and `metrics` per domain.

influence_reweight (`ReweightParams`) writes `weights` for every example of the recipe's datasets (unscored
ones keep weight 1), on the channel `channel` names: `loss_weight` (the weight multiplies the loss; copies
unchanged) or `copies` (integer copies in proportion, never below `min_copies`; loss weight unchanged).
Also `labels` influence (the aggregate), influence_z, influence:<group> and influence_weight, and `metrics`.
Scores are assay's convention: positive = helpful. `scores_run: auto` reads the scores of the latest
earlier stage of the recipe that wrote some (an `attribute` stage), else the latest in the lake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curation import curated, difficulty
from curation.stages import RunSpec, Stage, StageContext, load_examples
from storage import Lake, Run, UserError
from storage.ingest import content_id
from storage.params import (
    COLUMN,
    NAME,
    RUN_ID,
    SEED,
    Choice,
    MapOf,
    OneOf,
    Params,
    integer,
    number,
    optional,
    param,
)

BAND_CODES = {"easy": 0.0, "medium": 1.0, "hard": 2.0}
THRESHOLD = optional(OneOf((number(-1e12, 1e12), MapOf(NAME, number(-1e12, 1e12)))))


@dataclass
class FlipParams(Params):
    pool: str | None = param(
        None,
        "candidate pool the replacements come from: a dataset, an earlier stage that wrote examples "
        "(e.g. dart: its kept responses) or a run id; required (without one a flip could only duplicate)",
        optional(RUN_ID),
    )
    directions: dict = param(
        {"math": "hard", "code": "easy"},
        "domain -> hard | easy | none (the paper: harder math, easier code)",
        MapOf(NAME, Choice(difficulty.DIRECTIONS), min_items=1),
    )
    fraction: float = param(
        1.0, "share of the mix's source band replaced (1: every easy math / hard code example)", number(0, 1)
    )
    easy_max: Any = param(
        None,
        "difficulty at or below which an example is easy (number or {domain: number}); "
        "default: the mix domain's lower tertile",
        THRESHOLD,
    )
    hard_min: Any = param(
        None,
        "difficulty at or above which an example is hard (number or {domain: number}); "
        "default: the mix domain's upper tertile",
        THRESHOLD,
    )
    seed: int = param(0, "which examples are replaced, and by which pool examples", SEED)
    weights_from: str | None = param("auto", curated.WEIGHTS_FROM_HELP, curated.WEIGHTS_FROM)


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
    channel: str = param(
        "loss_weight",
        "what the weights act on: loss_weight (scalarization: each example's loss x weight, every example "
        "kept once) | copies (sampling: integer copies in proportion, at least min_copies)",
        Choice(curated.CHANNELS),
    )
    min_copies: int = param(
        1,
        "channel copies: the fewest copies an example keeps (0 lets low weights drop examples)",
        integer(0, 1000),
    )
    weights_from: str | None = param("none", curated.WEIGHTS_FROM_HELP, curated.WEIGHTS_FROM)


def content_keys(examples: pd.DataFrame) -> pd.Series:
    """A content identity per example (prompt and response), so that the same text under another id or in
    another dataset counts as already in the mix."""
    return pd.Series(
        [content_id(str(p), str(r)) for p, r in zip(examples["prompt"], examples["response"], strict=True)],
        index=examples.index,
        dtype=object,
    )


def resolve_pool(ctx: StageContext, name: str) -> tuple[dict[str, str], str | None]:
    """(dataset versions, run id or None) of the candidate pool: an earlier stage of the recipe or a run
    (the examples it wrote: DART's kept responses), else a dataset of the lake."""
    lake = ctx.lake
    run_id = ctx.previous.get(name) or (name if lake.run_record(name) is not None else None)
    if run_id is not None:
        lake.require_run(run_id)
        written = lake.query("SELECT DISTINCT dataset, version FROM examples_all WHERE run_id = ?", [run_id])
        if written.empty:
            raise UserError(
                f"stage difficulty_flip: pool {name!r} (run {run_id}) wrote no examples; a pool is a dataset "
                "or a stage that writes examples (dart)"
            )
        return dict(zip(written["dataset"].astype(str), written["version"].astype(str), strict=True)), run_id
    known = lake.query("SELECT dataset FROM datasets ORDER BY dataset")["dataset"].astype(str).tolist()
    if name not in known:
        raise UserError(
            f"stage difficulty_flip: pool {name!r} is neither a dataset ({', '.join(known) or 'none'}) nor an "
            f"earlier stage ({', '.join(ctx.previous) or 'none'}) nor a run id"
        )
    return {name: lake.dataset_version(name)}, None


class DifficultyFlip(Stage):
    """Infra's difficulty flip: replace easy examples of a domain by hard ones from a pool (or the reverse)."""

    name = "difficulty_flip"
    Params = FlipParams
    reads = ("examples", "weights")
    writes = ("weights", "labels", "metrics")
    cli_aliases = ("flip",)

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        ctx.dataset_versions(self.name)
        if p["pool"] is None:
            raise UserError(
                "stage difficulty_flip: needs a candidate pool (pool: a dataset, or a dart stage whose kept "
                "responses to draw from); without one a flip could only duplicate examples, so it refuses"
            )
        prior = curated.resolve_weights_from(ctx, self.name, p["weights_from"])
        versions = curated.stage_versions(ctx, self.name, prior)
        present = set(domains_of(ctx.lake, versions))
        absent = sorted(set(p["directions"]) - present)
        if absent == sorted(p["directions"]):
            raise UserError(
                f"stage difficulty_flip: no example has domain {', '.join(absent)} "
                f"(domains: {', '.join(sorted(present)) or 'none'})"
            )
        pool_versions, pool_run = resolve_pool(ctx, p["pool"])
        examples, copies, loss_weight = curated.load_curated(ctx.lake, versions, prior)
        keep = curated.drawable(copies, loss_weight)
        mix = examples[keep].reset_index(drop=True)
        mix = mix.assign(key=content_keys(mix), copies=copies[keep], loss_weight=loss_weight[keep])
        pool = load_examples(ctx.lake, pool_versions)
        pool = pool.assign(key=content_keys(pool))
        try:
            flip = difficulty.difficulty_flip(
                mix, pool, p["directions"], p["fraction"], p["easy_max"], p["hard_min"], p["seed"]
            )
        except difficulty.PoolTooSmall as exc:
            raise UserError(
                f"stage difficulty_flip: {exc} (pool {p['pool']}); lower fraction or give a larger pool"
            ) from None
        inputs = {
            "datasets": {**versions, **pool_versions},
            "pool": pool_versions,
            "pool_run": pool_run,
            "weights": prior,
        }
        return RunSpec("curate", self.name, p, inputs, context={"mix": mix, "pool": pool, "flip": flip})

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        mix, pool, flip = spec.context["mix"], spec.context["pool"], spec.context["flip"]
        kept = np.ones(len(mix), dtype=bool)
        kept[flip.removed] = False
        added = pool.iloc[flip.added].reset_index(drop=True)
        members = pd.concat([mix[kept], added], ignore_index=True)
        copies = np.concatenate([mix["copies"].to_numpy()[kept], mix["copies"].to_numpy()[flip.removed]])
        loss_weight = np.concatenate([mix["loss_weight"].to_numpy()[kept], np.ones(len(added))])
        run.write("weights", curated.weights_frame(members, copies, loss_weight))
        bands = pd.concat([flip.mix_bands[kept], flip.pool_bands.iloc[flip.added]], ignore_index=True).map(
            BAND_CODES
        )
        labels = [members[curated.KEY].assign(name="difficulty_band", value=bands.to_numpy(dtype=float))]
        labels.append(mix.iloc[flip.removed][curated.KEY].assign(name="flip_removed", value=1.0))
        labels.append(added[curated.KEY].assign(name="flip_added", value=1.0))
        run.write("labels", pd.concat(labels, ignore_index=True).dropna(subset=["value"]))
        rows = [
            (name, f"domain={domain}", float(value))
            for domain, r in flip.counts.iterrows()
            for name, value in r.items()
            if name != "direction"
        ]
        run.write("metrics", pd.DataFrame(rows, columns=["name", "key", "value"]))
        if not ctx.quiet:
            for domain, r in flip.counts.iterrows():
                print(
                    f"difficulty_flip: {domain} ({r['direction']}): {int(r['replaced'])} of "
                    f"{int(r['examples'])} examples replaced from {int(r['pool_candidates'])} pool candidates"
                )


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
    reads = ("examples", "scores", "weights")
    writes = ("weights", "labels", "metrics")
    executors = ("local", "dask")
    cli_aliases = ("reweight",)

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        lake = ctx.lake
        ctx.dataset_versions(self.name)
        prior = curated.resolve_weights_from(ctx, self.name, p["weights_from"])
        versions = curated.stage_versions(ctx, self.name, prior)
        scores_run = ctx.find_run(self.name, "scores", p["scores_run"])
        targets = lake.query("SELECT DISTINCT target_id FROM scores WHERE run_id = ?", [scores_run])
        groups = scored_target_groups(lake, sorted(targets["target_id"].astype(str)), p, scores_run)
        return RunSpec(
            "curate",
            self.name,
            {**p, "scores_run": scores_run},
            {"datasets": versions, "scores": scores_run, "weights": prior},
            context={"groups": groups},
        )

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        examples, copies, loss_weight = curated.load_curated(
            ctx.lake, spec.inputs["datasets"], spec.inputs["weights"]
        )
        scores = ctx.lake.query(
            "SELECT train_id, target_id, score FROM scores WHERE run_id = ?", [spec.inputs["scores"]]
        )
        agg = difficulty.aggregate_influence(scores, spec.context["groups"], spec.params["groups"])
        self.write(ctx, run, spec, curated.weights_frame(examples, copies, loss_weight), agg)

    def execute_dask(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        """The same weights with the scores (train x target rows) reduced on a Dask cluster."""
        from curation import dask_stages

        prior_run = spec.inputs["weights"]
        with dask_stages.cluster(ctx):
            examples = dask_stages.read_examples(ctx.lake, spec.inputs["datasets"], dask_stages.KEY)
            prior = dask_stages.read_weights(ctx.lake, prior_run) if prior_run else None
            scores = dask_stages.read_scores(ctx.lake, spec.inputs["scores"])
            agg = dask_stages.aggregate_influence(scores, spec.context["groups"], spec.params["groups"])
        examples, copies, loss_weight = curated.restrict_to(examples, prior)
        self.write(ctx, run, spec, curated.weights_frame(examples, copies, loss_weight), agg)

    def executor_for(self, ctx: StageContext, spec: RunSpec) -> Any:
        from curation import dask_stages

        return (
            self.execute_dask
            if dask_stages.wants_dask(ctx, scores_run=spec.inputs["scores"])
            else self.execute
        )

    def write(
        self, ctx: StageContext, run: Run, spec: RunSpec, current: pd.DataFrame, agg: pd.DataFrame
    ) -> None:
        """`current`: the examples with the copies and loss weights they start from."""
        p, groups = spec.params, spec.context["groups"]
        ids = current[curated.KEY].reset_index(drop=True)
        influence = agg["influence"].reindex(ids["example_id"].astype(str).to_numpy())
        influence.index = ids.index
        out = difficulty.influence_weights(
            influence,
            temperature=p["temperature"],
            transform=p["transform"],
            clip_min=p["clip_min"],
            clip_max=p["clip_max"],
        )
        weight = out["weight"].to_numpy()
        copies = current["copies"].to_numpy(dtype=np.int64)
        loss_weight = current["loss_weight"].to_numpy(dtype=np.float64)
        if p["channel"] == "copies":
            copies = difficulty.copies_from_weights(weight, copies, p["min_copies"])
        else:
            loss_weight = loss_weight * weight
        run.write("weights", curated.weights_frame(ids, copies, loss_weight))
        labels = []
        named = [("influence", influence.to_numpy()), ("influence_z", out["z"].to_numpy())]
        named.append(("influence_weight", weight))
        named += [
            (f"influence:{g}", agg[str(g)].reindex(ids["example_id"].astype(str)).to_numpy())
            for g in agg.columns
            if g != "influence"
        ]
        for name, values in named:
            frame = ids.assign(name=name, value=np.asarray(values, dtype=float))
            labels.append(frame.dropna(subset=["value"]))
        run.write("labels", pd.concat(labels, ignore_index=True))
        scored = int(influence.notna().sum())
        metrics = [
            ("examples", "all", float(len(ids))),
            ("scored", "all", float(scored)),
            ("weight_min", "all", float(weight.min())),
            ("weight_max", "all", float(weight.max())),
            ("copies", "all", float(copies.sum())),
            ("dropped", "all", float(((copies == 0) & (current["copies"].to_numpy() > 0)).sum())),
        ]
        metrics += [("targets", f"group={g}", float((groups == g).sum())) for g in sorted(set(groups))]
        run.write("metrics", pd.DataFrame(metrics, columns=["name", "key", "value"]))
        if not ctx.quiet:
            print(
                f"influence_reweight: {scored}/{len(ids)} examples scored by run {spec.inputs['scores']}; "
                f"weights in [{weight.min():.3g}, {weight.max():.3g}], mean 1, applied as {p['channel']}"
            )
