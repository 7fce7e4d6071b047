"""The unlearning health check: the silent no-op of issue 19 (r^2 -4.07, scale 0, forget loss unchanged)
and each failure on its own, against healthy outcomes; the thresholds by hand."""

from __future__ import annotations

import pytest

from attribution.unlearning import unlearning_problem

HEALTHY = {"forget_loss.before": 1.20, "forget_loss.after": 1.55, "forget_loss.retrained": 1.70}


def test_the_issue_19_no_op_names_the_calibration():
    metrics = {
        "forget_loss.before": 1.2034,
        "forget_loss.after": 1.2034,
        "forget_loss.retrained": 1.71,
        "calibration_r2": -4.07,
        "datamodel_scale": 0.0,
    }
    problem = unlearning_problem(metrics)
    assert problem.startswith("scale calibration failed (r^2 = -4.07 < 0")
    assert "--calibration-retrains" in problem and "\n" not in problem


def test_scale_zero_alone():
    problem = unlearning_problem({**HEALTHY, "calibration_r2": 0.4, "datamodel_scale": 0.0})
    assert problem.startswith("the datamodel scale is 0") and "--scale" in problem


def test_healthy_outcomes_pass():
    assert unlearning_problem(HEALTHY) is None
    assert unlearning_problem({**HEALTHY, "calibration_r2": 0.3, "datamodel_scale": 2e-4}) is None
    # overshooting the retrained model is not a no-op
    assert unlearning_problem({**HEALTHY, "forget_loss.after": 2.5}) is None
    assert unlearning_problem({}) is None  # nothing measured, nothing to say


@pytest.mark.parametrize(
    ("after", "stuck"),
    [(1.20, True), (1.24, True), (1.15, True), (1.26, False)],  # gap 0.5: 10% is 0.05
)
def test_forget_loss_against_the_retrained_gap(after, stuck):
    metrics = {"forget_loss.before": 1.20, "forget_loss.after": after, "forget_loss.retrained": 1.70}
    problem = unlearning_problem(metrics)
    assert (problem is not None) == stuck
    if stuck:
        assert problem.startswith("the forget loss did not move toward the retrained model's")


def test_a_gap_within_the_noise_means_not_moving_is_right():
    metrics = {"forget_loss.before": 1.20, "forget_loss.after": 1.20, "forget_loss.retrained": 1.21}
    assert unlearning_problem({**metrics, "forget_loss.se": 0.05}) is None
    assert unlearning_problem({**metrics, "forget_loss.se": 0.001}) is not None


def test_without_a_retrained_model_the_move_is_compared_with_the_noise():
    base = {"forget_loss.before": 2.0}
    assert unlearning_problem({**base, "forget_loss.after": 2.0015}) is not None  # < 0.1% of 2.0
    assert unlearning_problem({**base, "forget_loss.after": 2.003}) is None
    assert unlearning_problem({**base, "forget_loss.after": 2.03, "forget_loss.se": 0.04}) is not None
    assert unlearning_problem({**base, "forget_loss.after": 2.05, "forget_loss.se": 0.04}) is None
