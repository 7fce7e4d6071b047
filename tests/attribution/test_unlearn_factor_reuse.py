"""DMM scores its fine-tuning points with the scores run's kept EK-FAC factors (attribute keeps them in
factors_dir) instead of fitting them again: the same calibration and unlearned model as a fresh fit, and
never factors fitted for another model."""

import shutil

import pytest
from tiny_lm import scored_lake

from attribution.stages.attribute import factors_dir, work_dir
from attribution.stages.unlearn import Unlearn
from attribution.stages.unlearn_work import reusable_factors, unlearn
from storage.stage import StageContext

SETTINGS = {
    "lr": 1e-3,
    "epochs": 2,
    "batch_size": 16,
    "calibration_retrains": 2,
    "calibration_fraction": 0.2,
    "retrain": False,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("factor_reuse")
    _, model_dir, lake, scores, forget = scored_lake(root, epochs=4, targets=True)
    return root, model_dir, lake, scores, forget


def outcome(lake, model_dir, out, scores, forget) -> dict[str, float]:
    """The metrics an unlearn run records (the guardrail's verdict aside: this tiny model's calibration
    need not pass it for the numbers to be compared)."""
    stage = Unlearn(
        {"model": str(model_dir), "out": str(out), "forget_ids": forget, "scores": scores, **SETTINGS}
    )
    plan = stage.plan(StageContext(lake, ["train"], quiet=True)).context["plan"]
    return unlearn(lake, plan, show_progress=False).summary


def test_the_attribution_run_keeps_its_factors_and_drops_its_work(setup):
    _, _, lake, scores, _ = setup
    kept = factors_dir(lake, scores)
    assert (kept / "factors_ekfac.done").is_file()
    assert any(kept.rglob("lambda_matrix.safetensors"))  # the fitted factors
    assert not any(kept.glob("targets_*"))  # the targets' gradients are not kept
    assert not work_dir(lake, scores).exists()


def test_reused_factors_give_the_numbers_of_a_fresh_fit(setup):
    root, model_dir, lake, scores, forget = setup
    got = outcome(lake, model_dir, root / "reused", scores, forget)
    moved = root / "moved-factors"
    shutil.move(factors_dir(lake, scores), moved)  # the same run without kept factors: a fresh fit
    try:
        want = outcome(lake, model_dir, root / "fresh", scores, forget)
    finally:
        shutil.move(moved, factors_dir(lake, scores))
    assert got["factors_reused"] == 1.0 and want["factors_reused"] == 0.0
    for name in ("datamodel_scale", "calibration_r2", "forget_loss.after", "retain_loss.after"):
        assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-9), name
    assert got["datamodel_scale"] > 0 and got["forget_loss.after"] != got["forget_loss.before"]


def test_factors_of_another_model_or_unfinished_ones_are_not_reused(setup):
    _, _, lake, scores, _ = setup
    record = lake.run_record(scores)
    own = str(record["model"])
    assert reusable_factors(lake, record, own, 128) == factors_dir(lake, scores)
    other = own.rsplit("@", 1)[0] + "@0123456789abcdef"
    assert reusable_factors(lake, record, other, 128) is None
    assert reusable_factors(lake, {**record, "method": "trak"}, own, 128) is None
    assert reusable_factors(lake, record, own, 64) is None  # examples cut elsewhere: other factors
    marker = factors_dir(lake, scores) / "factors_ekfac.done"
    marker.rename(marker.with_suffix(".hidden"))  # a folder whose move was cut short
    try:
        assert reusable_factors(lake, record, own, 128) is None
    finally:
        marker.with_suffix(".hidden").rename(marker)
