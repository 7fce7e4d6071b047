"""Infra's difficulty flip (a replacement from a pool) and influence reweighting (on one channel): the pure
functions, their stages, and what reaches the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from assay_testing import stage, tree_digest

from curation.difficulty import (
    PoolTooSmall,
    aggregate_influence,
    copies_from_weights,
    difficulty_bands,
    difficulty_flip,
    influence_weights,
    largest_remainder,
)
from curation.exporter import export_run
from storage import Lake, UserError
from storage.ingest import ColumnMap, ingest_records, normalize
from storage.stage import StageContext


def pool(levels: list[int], domain: str) -> pd.DataFrame:
    return pd.DataFrame({"domain": domain, "difficulty": [float(v) for v in levels]})


def test_largest_remainder_is_proportional_and_exact() -> None:
    assert largest_remainder(np.array([1.0, 1.0, 2.0]), 8).tolist() == [2, 2, 4]
    assert largest_remainder(np.array([1.0, 1.0, 1.0]), 4).tolist() == [2, 1, 1]  # ties: earliest first
    copies = largest_remainder(np.random.default_rng(0).random(50), 77)
    assert copies.sum() == 77 and (copies >= 0).all()
    assert largest_remainder(np.zeros(3), 5).tolist() == [0, 0, 0]


def test_bands_from_per_domain_tertiles_or_thresholds() -> None:
    frame = pd.concat([pool([1, 2, 3, 4, 5, 6], "math"), pool([10, 20, 30], "code")], ignore_index=True)
    bands = difficulty_bands(frame).tolist()
    assert bands[:6] == ["easy", "easy", "medium", "medium", "hard", "hard"]
    assert bands[6:] == ["easy", "medium", "hard"]
    set_by_hand = difficulty_bands(frame, easy_max={"math": 1}, hard_min={"math": 6, "code": 25}).tolist()
    assert set_by_hand[:6] == ["easy", "medium", "medium", "medium", "medium", "hard"]
    assert set_by_hand[6:] == ["easy", "medium", "hard"]  # code keeps its tertile (10) for easy_max


def frame(levels: list[float], domain: str, prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "domain": domain,
            "difficulty": [float(v) for v in levels],
            "key": [f"{prefix}-{domain}-{i}" for i in range(len(levels))],
        }
    )


def mix_and_pool() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A mix (8 math: 4 easy, 2 hard; 6 code: 2 easy, 3 hard; 2 prose) and a pool with 5 hard math (one
    of them already in the mix), 1 easy math, 3 easy code, 1 hard code and 1 prose."""
    mix = pd.concat(
        [
            frame([1, 1, 1, 1, 3, 3, 5, 5], "math", "m"),
            frame([1, 1, 3, 5, 5, 5], "code", "m"),
            frame([1, 5], "prose", "m"),
        ],
        ignore_index=True,
    )
    pool = pd.concat(
        [frame([5, 5, 5, 6, 7, 1], "math", "p"), frame([1, 1, 0, 5], "code", "p"), frame([5], "prose", "p")],
        ignore_index=True,
    )
    pool.loc[0, "key"] = mix.loc[6, "key"]  # the same text as a hard math example of the mix
    return mix, pool


def test_the_flip_replaces_easy_math_by_fresh_hard_math_and_hard_code_by_easy_code() -> None:
    mix, pool = mix_and_pool()
    flip = difficulty_flip(mix, pool, {"math": "hard", "code": "easy"}, easy_max=1, hard_min=5, seed=0)
    removed, added = mix.iloc[flip.removed], pool.iloc[flip.added]
    assert len(set(flip.removed)) == len(flip.removed) and len(set(flip.added)) == len(flip.added)
    for domain, out_levels, in_band in (("math", [1, 1, 1, 1], "hard"), ("code", [3.0, 5, 5, 5], "easy")):
        out = removed[removed["domain"] == domain]
        into = added[added["domain"] == domain]
        assert len(out) == len(into)  # the domain keeps its number of distinct examples
        assert (flip.mix_bands.iloc[out.index] == ("easy" if in_band == "hard" else "hard")).all()
        assert (flip.pool_bands.iloc[into.index] == in_band).all()
    assert sorted(removed.loc[removed["domain"] == "math", "difficulty"]) == [1, 1, 1, 1]
    assert sorted(added.loc[added["domain"] == "math", "difficulty"]) == [
        5,
        5,
        6,
        7,
    ]  # pool row 0 is not fresh
    assert sorted(removed.loc[removed["domain"] == "code", "difficulty"]) == [5, 5, 5]
    assert sorted(added.loc[added["domain"] == "code", "difficulty"]) == [0, 1, 1]
    assert not set(added["key"]) & set(mix["key"])
    assert "prose" not in set(removed["domain"])  # no direction: untouched
    assert flip.counts.loc["math"].to_dict() == {
        "direction": "hard",
        "examples": 8,
        "source_band": 4,
        "pool_candidates": 4,
        "replaced": 4,
    }


def test_a_partial_flip_replaces_that_fraction_chosen_by_the_seed() -> None:
    mix, pool = mix_and_pool()
    flips = [
        difficulty_flip(mix, pool, {"math": "hard"}, fraction=0.5, easy_max=1, hard_min=5, seed=s)
        for s in range(6)
    ]
    assert {len(f.removed) for f in flips} == {2}
    assert len({tuple(f.removed) for f in flips}) > 1  # the seed picks which ones
    again = difficulty_flip(mix, pool, {"math": "hard"}, fraction=0.5, easy_max=1, hard_min=5, seed=3)
    assert list(again.removed) == list(flips[3].removed) and list(again.added) == list(flips[3].added)


def test_too_small_a_pool_says_how_many_were_needed() -> None:
    mix, pool = mix_and_pool()
    small = pool[pool["domain"] != "math"].reset_index(drop=True)
    with pytest.raises(
        PoolTooSmall, match="0 hard math examples not already in the mix; replacing 4 easy math"
    ):
        difficulty_flip(mix, small, {"math": "hard"}, easy_max=1, hard_min=5)
    with pytest.raises(ValueError):
        difficulty_flip(mix, pool, {"math": "harder"})
    with pytest.raises(ValueError):
        difficulty_flip(mix, pool, {"math": "hard"}, fraction=1.5)


def scores_frame() -> pd.DataFrame:
    # train a helps math, hurts code; b helps code; c is neutral; d is only scored on math
    rows = [
        ("a", "m1", 2.0),
        ("a", "m2", 4.0),
        ("a", "c1", -1.0),
        ("b", "m1", 0.0),
        ("b", "m2", 0.0),
        ("b", "c1", 3.0),
        ("c", "m1", 0.0),
        ("c", "m2", 0.0),
        ("c", "c1", 0.0),
        ("d", "m1", 1.0),
        ("x", "unknown-target", 9.0),
    ]
    return pd.DataFrame(rows, columns=["train_id", "target_id", "score"])


GROUPS = {"m1": "math", "m2": "math", "c1": "code"}


def test_influence_aggregates_per_group_means_with_group_weights() -> None:
    agg = aggregate_influence(scores_frame(), GROUPS)
    assert agg.loc["a", "math"] == 3.0 and agg.loc["a", "code"] == -1.0
    assert agg.loc["a", "influence"] == 1.0 and agg.loc["b", "influence"] == 1.5
    assert agg.loc["d", "influence"] == 1.0  # only its math groups count
    assert "x" not in agg.index  # its target has no group
    weighted = aggregate_influence(scores_frame(), GROUPS, {"math": 3.0, "code": 1.0})
    assert weighted.loc["a", "influence"] == pytest.approx((3 * 3.0 - 1.0) / 4)
    code_only = aggregate_influence(scores_frame(), GROUPS, {"code": 1.0})
    assert code_only.loc["b", "influence"] == 3.0 and np.isnan(code_only.loc["d", "influence"])


def test_influence_weights_are_clipped_normalised_and_monotone() -> None:
    influence = pd.Series(np.linspace(-3, 3, 41))
    out = influence_weights(influence, clip_min=0.5, clip_max=2.0)
    assert out["weight"].mean() == pytest.approx(1.0)
    assert out["weight"].min() >= 0.5 - 1e-12 and out["weight"].max() <= 2.0 + 1e-12
    assert out["weight"].is_monotonic_increasing and out["weight"].iloc[-1] > out["weight"].iloc[0]
    linear = influence_weights(influence, transform="linear", temperature=4.0, clip_min=0.0, clip_max=3.0)
    assert linear["weight"].mean() == pytest.approx(1.0) and linear["weight"].min() >= 0.0
    with_gap = influence_weights(pd.Series([1.0, np.nan, 3.0, 5.0]))
    assert with_gap["z"].iloc[1] == 0.0  # unscored: neutral before normalisation
    for bad in ({"transform": "softmax"}, {"temperature": 0}, {"clip_min": 2.0}):
        with pytest.raises(ValueError):
            influence_weights(influence, **bad)


def test_copies_from_weights_keep_every_example_unless_min_copies_is_zero() -> None:
    w = np.array([0.3, 0.35, 0.38, 1.0, 1.5, 2.47])  # mean 1
    assert copies_from_weights(w).tolist() == [1, 1, 1, 1, 2, 3]  # the floor raises the three low ones
    assert (
        copies_from_weights(w, min_copies=0).tolist()
        == largest_remainder(w, 6).tolist()
        == [0, 0, 0, 1, 2, 3]
    )
    prior = np.array([2, 0, 1, 1, 1, 1])  # an example an earlier stage left out stays out
    assert copies_from_weights(w, prior).tolist()[1] == 0
    assert (copies_from_weights(w, prior)[prior > 0] >= 1).all()
    with pytest.raises(ValueError):
        copies_from_weights(w, min_copies=-1)


# ---- stages ----------------------------------------------------------------------------------


def ingest(lake: Lake, name: str, rows: list[dict]) -> None:
    ingest_records(
        lake, normalize(rows, name, ColumnMap(), f"{name}.jsonl"), name, ColumnMap(), f"{name}.jsonl"
    )


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake(tmp_path / "lake")
    train = [
        {"id": f"m{i}", "domain": "math", "difficulty": 1 + i % 5, "prompt": f"q{i}", "response": f"r{i}"}
        for i in range(10)
    ]
    train += [
        {"id": f"c{i}", "domain": "code", "difficulty": 1 + i % 5, "prompt": f"w{i}", "response": f"d{i}"}
        for i in range(10)
    ]
    targets = [
        {"id": "tm1", "domain": "math", "prompt": "t", "response": "1"},
        {"id": "tm2", "domain": "math", "prompt": "u", "response": "2"},
        {"id": "tc1", "domain": "code", "prompt": "v", "response": "3"},
    ]
    # Candidates: 6 hard math (one the same text as a training example), 5 easy code, 3 easy math.
    pool = [
        {"id": f"pm{i}", "domain": "math", "difficulty": 4 + i % 2, "prompt": f"pq{i}", "response": f"pr{i}"}
        for i in range(5)
    ]
    pool += [{"id": "dup", "domain": "math", "difficulty": 5, "prompt": "q4", "response": "r4"}]
    pool += [
        {"id": f"pc{i}", "domain": "code", "difficulty": 1 + i % 2, "prompt": f"pw{i}", "response": f"pd{i}"}
        for i in range(5)
    ]
    pool += [
        {"id": f"pe{i}", "domain": "math", "difficulty": 1, "prompt": f"pe{i}", "response": f"pf{i}"}
        for i in range(3)
    ]
    for name, rows in (("train", train), ("targets", targets), ("pool", pool)):
        ingest(lake, name, rows)
    return lake


FLIP = {"pool": "pool", "easy_max": 2, "hard_min": 4}


def test_difficulty_flip_stage_replaces_from_the_pool_and_the_export_repeats_nothing(
    lake: Lake, tmp_path: Path
) -> None:
    run_id = stage("difficulty_flip")(StageContext(lake, ["train"], quiet=True), FLIP)
    weights = lake.table("weights", "run_id = ?", [run_id])
    examples = lake.query("SELECT dataset, example_id, domain, difficulty FROM examples")
    flipped = weights.merge(examples, on=["dataset", "example_id"])
    # Each domain keeps its 10 distinct examples, each drawn once; 4 easy math and 4 hard code left.
    assert flipped.groupby("domain")["example_id"].nunique().to_dict() == {"code": 10, "math": 10}
    assert (weights["copies"] == 1).all() and (weights["loss_weight"] == 1).all()
    math_, code = flipped[flipped["domain"] == "math"], flipped[flipped["domain"] == "code"]
    assert (math_["difficulty"] > 2).all() and (code["difficulty"] < 4).all()
    assert (flipped["dataset"] == "pool").sum() == 8 and "dup" not in set(weights["example_id"])
    labels = lake.table("labels", "run_id = ?", [run_id])
    removed = set(labels.loc[labels["name"] == "flip_removed", "example_id"])
    assert removed == {"m0", "m1", "m5", "m6", "c3", "c4", "c8", "c9"}
    assert set(labels.loc[labels["name"] == "flip_added", "example_id"]) == set(
        flipped.loc[flipped["dataset"] == "pool", "example_id"]
    )
    record = lake.run_record(run_id)
    assert '"pool"' in record["inputs"]
    result = export_run(lake, run_id, tmp_path / "flip", fmt="jsonl", materialise=True)
    rows = pd.read_json(tmp_path / "flip" / "data" / "train.jsonl", lines=True)
    assert result.rows == len(rows) == 20 and rows["example_id"].is_unique
    assert not removed & set(rows["example_id"])


def test_the_flip_builds_on_earlier_weights_keeping_their_loss_weights(lake: Lake) -> None:
    version = lake.dataset_version("train")
    ids = lake.examples("train")["example_id"]
    with lake.run(kind="curate", method="weigh", params={}, inputs={"datasets": {"train": version}}) as run:
        run.write(
            "weights", pd.DataFrame({"dataset": "train", "example_id": ids, "copies": 2, "loss_weight": 0.5})
        )
    ctx = StageContext(lake, ["train"], previous={"weigh": run.run_id}, quiet=True)
    flip = stage("difficulty_flip")(ctx, {**FLIP, "directions": {"math": "hard"}})
    weights = lake.table("weights", "run_id = ?", [flip]).set_index("example_id")
    assert weights["copies"].sum() == 40 and len(weights) == 20  # sizes and draws kept
    newcomers = weights[weights["dataset"] == "pool"]
    assert (
        len(newcomers) == 4 and (newcomers["copies"] == 2).all() and (newcomers["loss_weight"] == 1.0).all()
    )
    assert (weights.loc[weights["dataset"] == "train", "loss_weight"] == 0.5).all()


def test_the_flip_takes_a_runs_written_examples_as_its_pool(lake: Lake) -> None:
    from storage.ingest import dataset_version, records_table

    rows = [
        {"id": f"g{i}", "domain": "math", "difficulty": 5, "prompt": f"gen{i}", "response": f"ans{i}"}
        for i in range(4)
    ]
    table = records_table(normalize(rows, "generated", ColumnMap(), "a dart run"))
    import pyarrow as pa

    with lake.run(kind="curate", method="dart", params={"fake": True}) as run:
        version = dataset_version(table)
        run.write("examples", table.add_column(1, "version", pa.array([version] * len(table), pa.string())))
    ctx = StageContext(lake, ["train"], previous={"dart": run.run_id}, quiet=True)
    flip = stage("difficulty_flip")(ctx, {**FLIP, "pool": "dart", "directions": {"math": "hard"}})
    weights = lake.table("weights", "run_id = ?", [flip])
    assert (weights["dataset"] == "generated").sum() == 4 and len(weights) == 20
    assert run.run_id in lake.run_record(flip)["inputs"]  # the lineage reaches the run


def test_the_flip_refuses_without_a_pool_or_with_too_small_a_one_and_writes_nothing(lake: Lake) -> None:
    flip = stage("difficulty_flip")
    ctx = StageContext(lake, ["train"], quiet=True)
    before = tree_digest(lake.root)
    with pytest.raises(UserError, match="needs a candidate pool") as err:
        flip(ctx, {"easy_max": 2, "hard_min": 4})
    assert "duplicate" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(
        UserError,
        match=r"the pool has 0 easy code examples .* replacing 4 hard code examples needs 4 \(pool targets\)",
    ):
        flip(
            ctx,
            {"pool": "targets", "easy_max": 2, "hard_min": 4, "directions": {"code": "easy"}, "fraction": 1},
        )
    with pytest.raises(UserError, match="nor an earlier stage"):
        flip(ctx, {"pool": "nothing"})
    assert tree_digest(lake.root) == before


def test_difficulty_flip_stage_rejects_bad_parameters(lake: Lake) -> None:
    flip = stage("difficulty_flip")
    ctx = StageContext(lake, ["train"], quiet=True)
    before = len(lake.runs())
    for bad in (
        {"directions": {"math": "harder"}},
        {"fraction": 2},
        {"easy_max": "low"},
        {"directions": {"poetry": "hard"}},
        {"direction": {}},
        {"weights_from": "reweight"},
    ):
        with pytest.raises(UserError):
            flip(ctx, {"pool": "pool", **bad})
    assert len(lake.runs()) == before


def write_scores(lake: Lake) -> str:
    rng = np.random.default_rng(0)
    rows = [
        (f"{d}{i}", t, float(rng.normal() + (1.0 if d == "m" and t.startswith("tm") else 0.0)))
        for d in "mc"
        for i in range(10)
        for t in ("tm1", "tm2", "tc1")
        if not (d == "c" and i == 9)
    ]
    with lake.run(kind="attribute", method="test-scores", params={"seed": 0}) as run:
        run.write("scores", pd.DataFrame(rows, columns=["train_id", "target_id", "score"]))
    return run.run_id


def test_influence_reweight_stage_upweights_helpful_examples_as_loss_weights(lake: Lake) -> None:
    scores_run = write_scores(lake)
    reweight = stage("influence_reweight")
    ctx = StageContext(lake, ["train"], quiet=True)
    run_id = reweight(ctx, {"groups": {"math": 1.0}, "clip_min": 0.25, "clip_max": 4.0})
    record = lake.run_record(run_id)
    assert scores_run in record["inputs"] and scores_run in record["params"]  # `auto` resolved
    weights = lake.table("weights", "run_id = ?", [run_id]).set_index("example_id")
    assert weights["loss_weight"].mean() == pytest.approx(1.0) and (weights["copies"] == 1).all()
    math_mean = weights.loc[[f"m{i}" for i in range(10)], "loss_weight"].mean()
    code_mean = weights.loc[[f"c{i}" for i in range(9)], "loss_weight"].mean()
    assert math_mean > code_mean  # math training examples carry the helpful math influence
    labels = lake.table("labels", "run_id = ?", [run_id])
    assert {"influence", "influence_z", "influence_weight", "influence:math", "influence:code"} <= set(
        labels["name"]
    )
    assert "c9" not in set(labels.loc[labels["name"] == "influence", "example_id"])  # unscored
    with pytest.raises(UserError, match="no scored targets"):
        reweight(ctx, {"scores_run": scores_run, "groups": {"poetry": 1.0}})
    with pytest.raises(UserError, match="not found"):
        reweight(ctx, {"scores_run": "attribute-nope-000000000000"})


def test_influence_reweight_without_scores_is_a_user_error(lake: Lake) -> None:
    with pytest.raises(UserError, match="no scores"):
        stage("influence_reweight")(StageContext(lake=lake, datasets=["train"], quiet=True), {})


def conversations() -> list[dict]:
    """47 examples as chat records: 30 math, 8 code, 5 with a system prompt, 4 multi-turn."""
    rows = [
        {
            "id": f"m{i}",
            "domain": "math",
            "messages": [
                {"role": "user", "content": f"{i} + {i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
            ],
        }
        for i in range(30)
    ]
    rows += [
        {
            "id": f"c{i}",
            "domain": "code",
            "messages": [
                {"role": "user", "content": f"Write f{i}."},
                {"role": "assistant", "content": f"def f{i}(): return {i}"},
            ],
        }
        for i in range(8)
    ]
    rows += [
        {
            "id": f"s{i}",
            "domain": "chat",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Name {i}?"},
                {"role": "assistant", "content": f"N{i}."},
            ],
        }
        for i in range(5)
    ]
    rows += [
        {
            "id": f"t{i}",
            "domain": "chat",
            "messages": [
                {"role": "user", "content": f"Start {i}."},
                {"role": "assistant", "content": "Go on."},
                {"role": "user", "content": f"More {i}."},
                {"role": "assistant", "content": f"Done {i}."},
            ],
        }
        for i in range(4)
    ]
    return rows


@pytest.fixture
def chat_lake(tmp_path: Path) -> tuple[Lake, list[str]]:
    """The issue's case: the 9 system-prompt and multi-turn examples hurt the targets, so their weights land
    at 0.30-0.38, where rounding weights to copies gave them none."""
    lake = Lake(tmp_path / "chat-lake")
    rows = conversations()
    ingest(lake, "chats", rows)
    ingest(lake, "goals", [{"id": "g1", "domain": "math", "prompt": "1 + 1?", "response": "2"}])
    ids = [r["id"] for r in rows]
    low = [i for i in ids if i[0] in "st"]
    # Others' influence is 1 to 2 (median 1.5, MAD-scaled spread 0.37); the low ones sit 1.02 to 1.24
    # spreads below the median, which exp(z), normalised to mean 1, maps to weights 0.30-0.38.
    below = {i: 1.5 - (1.02 + 0.028 * j) * 0.3706 for j, i in enumerate(low)}
    scores = [(i, "g1", below.get(i, 1 + (k % 5) / 4)) for k, i in enumerate(ids)]
    with lake.run(kind="attribute", method="test-scores", params={"chat": True}) as run:
        run.write("scores", pd.DataFrame(scores, columns=["train_id", "target_id", "score"]))
    return lake, low


def test_reweighting_drops_no_example_unless_asked(chat_lake: tuple[Lake, list[str]], tmp_path: Path) -> None:
    lake, low = chat_lake
    reweight = stage("influence_reweight")
    ctx = StageContext(lake, ["chats"], quiet=True)
    as_loss = reweight(ctx, {})
    w = lake.table("weights", "run_id = ?", [as_loss]).set_index("example_id")
    assert w.loc[low, "loss_weight"].between(0.30, 0.38).all()  # the weights
    assert (w["copies"] == 1).all() and len(w) == 47  # loss_weight channel: every example once

    as_copies = reweight(ctx, {"channel": "copies"})
    c = lake.table("weights", "run_id = ?", [as_copies]).set_index("example_id")
    assert (c["copies"] >= 1).all() and (c.loc[low, "copies"] == 1).all() and (c["loss_weight"] == 1).all()
    assert c["copies"].max() >= 2  # the helpful ones are upsampled
    asked = reweight(ctx, {"channel": "copies", "min_copies": 0})
    dropped = lake.table("weights", "run_id = ?", [asked]).set_index("example_id")
    # Rounding weights below 0.5 to copies drops most of them: that takes asking for min_copies 0.
    assert (dropped.loc[low, "copies"] == 0).sum() >= len(low) // 2
    metrics = lake.table("metrics", "run_id = ? AND name = 'dropped'", [asked])
    assert metrics["value"].iloc[0] == (dropped["copies"] == 0).sum()

    for run_id, name in ((as_loss, "loss"), (as_copies, "copies")):
        export_run(lake, run_id, tmp_path / name, style="chat")
        rows = pd.read_json(tmp_path / name / "data" / "train.jsonl", lines=True)
        assert set(low) <= set(rows["example_id"])
        system = rows[rows["example_id"] == "s0"]["messages"].iloc[0]
        assert system[0] == {"role": "system", "content": "You are terse."}
        assert len(rows[rows["example_id"] == "t0"]["messages"].iloc[0]) == 4


def test_a_mix_over_loss_weights_keeps_each_channel_once(
    chat_lake: tuple[Lake, list[str]], tmp_path: Path
) -> None:
    lake, _ = chat_lake
    ctx = StageContext(lake, ["chats"], quiet=True)
    reweighted = stage("influence_reweight")(ctx, {})
    ctx.previous = {"influence_reweight": reweighted}
    mixed = stage("mix")(ctx, {"by": "domain", "epochs": 3, "batch_size": 8})
    before = lake.table("weights", "run_id = ?", [reweighted]).set_index("example_id")
    after = lake.table("weights", "run_id = ?", [mixed]).set_index("example_id")
    draws = lake.table("mixture_draws", "run_id = ?", [mixed])["example_id"].value_counts()
    np.testing.assert_allclose(after["loss_weight"], before.loc[after.index, "loss_weight"])  # passed through
    assert after.loc[after["copies"] > 0, "copies"].to_dict() == draws.to_dict()  # copies = draws, unweighted
    result = export_run(lake, mixed, tmp_path / "out", materialise=True)
    rows = pd.read_json(tmp_path / "out" / "data" / "train.jsonl", lines=True)
    np.testing.assert_allclose(rows["loss_weight"], before.loc[rows["example_id"], "loss_weight"])
    # The card's loss share is draws x loss weight per group, as the file gives it.
    mass = rows.groupby("group")["loss_weight"].sum()
    np.testing.assert_allclose(
        result.summary["loss_share"], (mass / mass.sum()).reindex(result.summary.index)
    )
