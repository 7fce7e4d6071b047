"""Infra's difficulty flip and influence reweighting: the pure functions and their stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from assay_testing import stage

from curation.difficulty import (
    aggregate_influence,
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


def test_flip_swaps_easy_math_for_hard_math_and_hard_code_for_easy_code_keeping_sizes() -> None:
    frame = pd.concat(
        [pool([1, 1, 1, 1, 3, 3, 5, 5], "math"), pool([1, 1, 3, 5, 5, 5], "code"), pool([1, 5], "prose")],
        ignore_index=True,
    )
    out = difficulty_flip(frame, {"math": "hard", "code": "easy"}, easy_max=1, hard_min=5)
    math_, code, prose = out.iloc[:8], out.iloc[8:14], out.iloc[14:]
    assert math_["weight"].tolist() == [0, 0, 0, 0, 1, 1, 3, 3]  # 4 easy moved onto 2 hard
    assert math_["copies"].tolist() == [0, 0, 0, 0, 1, 1, 3, 3]
    assert code["weight"].tolist() == [2.5, 2.5, 1, 0, 0, 0]  # 3 hard moved onto 2 easy
    assert code["copies"].sum() == 6 and sorted(code["copies"].tolist()[:2]) == [2, 3]
    assert prose["weight"].tolist() == [1, 1] and prose["copies"].tolist() == [1, 1]
    for part in (math_, code, prose):
        assert part["weight"].sum() == pytest.approx(len(part))


def test_a_partial_flip_moves_that_fraction() -> None:
    out = difficulty_flip(pool([1, 1, 5, 5], "math"), {"math": "hard"}, fraction=0.5, easy_max=1, hard_min=5)
    assert out["weight"].tolist() == [0.5, 0.5, 1.5, 1.5]
    assert out["copies"].sum() == 4


def test_examples_without_difficulty_or_a_counterpart_band_keep_weight_one() -> None:
    frame = pd.DataFrame({"domain": ["math"] * 4 + ["code"] * 2, "difficulty": [1, 5, None, 3, 2, 2]})
    out = difficulty_flip(frame, {"math": "hard", "code": "easy"}, easy_max=1, hard_min=5)
    assert out["weight"].tolist() == [0, 2, 1, 1, 1, 1]
    assert pd.isna(out["band"].iloc[2])
    with pytest.raises(ValueError):
        difficulty_flip(frame, {"math": "harder"})
    with pytest.raises(ValueError):
        difficulty_flip(frame, {"math": "hard"}, fraction=1.5)


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


def test_influence_weights_are_clipped_normalised_monotone_and_give_copies() -> None:
    influence = pd.Series(np.linspace(-3, 3, 41))
    out = influence_weights(influence, clip_min=0.5, clip_max=2.0)
    assert out["weight"].mean() == pytest.approx(1.0)
    assert out["weight"].min() >= 0.5 - 1e-12 and out["weight"].max() <= 2.0 + 1e-12
    assert out["weight"].is_monotonic_increasing and out["weight"].iloc[-1] > out["weight"].iloc[0]
    assert out["copies"].sum() == 41
    assert (np.abs(out["copies"] - out["weight"]) < 1).all()  # each rounds its weight down or up
    assert influence_weights(influence, total=100)["copies"].sum() == 100
    linear = influence_weights(influence, transform="linear", temperature=4.0, clip_min=0.0, clip_max=3.0)
    assert linear["weight"].mean() == pytest.approx(1.0) and linear["weight"].min() >= 0.0
    with_gap = influence_weights(pd.Series([1.0, np.nan, 3.0, 5.0]))
    assert with_gap["z"].iloc[1] == 0.0  # unscored: neutral before normalisation
    for bad in ({"transform": "softmax"}, {"temperature": 0}, {"clip_min": 2.0}):
        with pytest.raises(ValueError):
            influence_weights(influence, **bad)


# ---- stages ----------------------------------------------------------------------------------


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
    for name, rows in (("train", train), ("targets", targets)):
        ingest_records(
            lake, normalize(rows, name, ColumnMap(), f"{name}.jsonl"), name, ColumnMap(), f"{name}.jsonl"
        )
    return lake


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


def test_difficulty_flip_stage_writes_weights_labels_and_exports(lake: Lake, tmp_path: Path) -> None:
    run_id = stage("difficulty_flip")(
        StageContext(lake=lake, datasets=["train"], quiet=True), {"easy_max": 2, "hard_min": 4}
    )
    weights = lake.table("weights", "run_id = ?", [run_id]).set_index("example_id")
    assert len(weights) == 20 and weights["copies"].sum() == 20
    assert (
        weights.loc["m0", "copies"] == 0 and weights.loc["m3", "copies"] == 2
    )  # easy math out, hard math in
    assert (
        weights.loc["c0", "copies"] == 2 and weights.loc["c3", "copies"] == 0
    )  # hard code out, easy code in
    bands = lake.table("labels", "run_id = ? AND name = 'difficulty_band'", [run_id]).set_index("example_id")
    assert bands.loc["m0", "value"] == 0.0 and bands.loc["m4", "value"] == 2.0
    result = export_run(lake, run_id, tmp_path / "flip", fmt="jsonl", materialise=True)
    assert result.rows == 20


def test_difficulty_flip_stage_rejects_bad_parameters(lake: Lake) -> None:
    flip = stage("difficulty_flip")
    ctx = StageContext(lake=lake, datasets=["train"], quiet=True)
    before = len(lake.runs())
    for bad in (
        {"directions": {"math": "harder"}},
        {"fraction": 2},
        {"easy_max": "low"},
        {"directions": {"poetry": "hard"}},
        {"direction": {}},
    ):
        with pytest.raises(UserError):
            flip(ctx, bad)
    assert len(lake.runs()) == before


def test_influence_reweight_stage_upweights_helpful_examples(lake: Lake) -> None:
    scores_run = write_scores(lake)
    reweight = stage("influence_reweight")
    ctx = StageContext(lake=lake, datasets=["train"], quiet=True)
    run_id = reweight(ctx, {"groups": {"math": 1.0}, "clip_min": 0.25, "clip_max": 4.0})
    record = lake.run_record(run_id)
    assert scores_run in record["inputs"] and scores_run in record["params"]  # `latest` resolved
    weights = lake.table("weights", "run_id = ?", [run_id]).set_index("example_id")
    assert weights["weight"].mean() == pytest.approx(1.0) and weights["copies"].sum() == 20
    math_mean = weights.loc[[f"m{i}" for i in range(10)], "weight"].mean()
    code_mean = weights.loc[[f"c{i}" for i in range(9)], "weight"].mean()
    assert math_mean > code_mean  # math training examples carry the helpful math influence
    labels = lake.table("labels", "run_id = ?", [run_id])
    assert {"influence", "influence_z", "influence:math", "influence:code"} <= set(labels["name"])
    assert "c9" not in set(labels.loc[labels["name"] == "influence", "example_id"])  # unscored
    with pytest.raises(UserError, match="no scored targets"):
        reweight(ctx, {"scores_run": scores_run, "groups": {"poetry": 1.0}})
    with pytest.raises(UserError, match="not found"):
        reweight(ctx, {"scores_run": "attribute-nope-000000000000"})


def test_influence_reweight_without_scores_is_a_user_error(lake: Lake) -> None:
    with pytest.raises(UserError, match="no scores"):
        stage("influence_reweight")(StageContext(lake=lake, datasets=["train"], quiet=True), {})
