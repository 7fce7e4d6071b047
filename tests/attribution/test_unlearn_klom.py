"""KLoM on known distributions, and the margin it is computed from."""

import numpy as np
import pytest

from attribution.unlearning.klom import EMPTY, klom, klom_per_example, margins, oracle_floor


def test_margin_is_correct_logit_minus_logsumexp_of_the_others():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, -1.0, 2.0]])
    got = margins(logits, np.array([2, 0, 1]))
    want = [3 - np.log(np.exp(1) + np.exp(2)), -np.log(2), -1 - np.log(np.exp(5) + np.exp(2))]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # a leading model dimension; adding a constant to every logit leaves margins unchanged
    stacked = margins(np.stack([logits, logits + 1]), np.array([2, 0, 1]))
    assert stacked.shape == (2, 3)
    np.testing.assert_allclose(stacked[1], want, rtol=1e-12)


def test_identical_samples_give_about_zero():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(100, 30))
    values = klom_per_example(samples, samples)
    # Empty oracle bins get 1e-5 before renormalising: at most 20 x 1e-5 of mass moves.
    assert values.max() < 20 * EMPTY * 1.01


def test_same_distribution_is_small_and_shifted_is_larger():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 50)), rng.normal(size=(200, 50))
    same = klom_per_example(a, b)
    shifted = klom_per_example(a, b + 2.0)
    assert np.median(same) < 0.3
    assert np.median(shifted) > 5 * np.median(same)


def test_disjoint_samples_give_the_cap():
    rng = np.random.default_rng(2)
    unlearned = rng.normal(0.0, 0.01, size=(50, 10))  # all in the lowest bin
    oracle = rng.normal(40.0, 0.01, size=(50, 10))  # all in the highest bin
    cap = np.log(1 / EMPTY)
    np.testing.assert_allclose(klom_per_example(unlearned, oracle), cap, atol=20 * EMPTY)


def test_margins_are_clipped_to_plus_minus_100():
    unlearned = np.full((10, 1), 1e6)
    oracle = np.full((10, 1), 100.0)
    # both clip to 100: one shared value, zero divergence
    assert klom_per_example(unlearned, oracle)[0] == pytest.approx(0.0, abs=20 * EMPTY)


def test_klom_reports_the_95th_percentile_per_group():
    rng = np.random.default_rng(3)
    oracle = rng.normal(size=(100, 40))
    unlearned = oracle.copy()
    unlearned[:, :20] = 50.0 + rng.normal(0.0, 0.01, size=(100, 20))  # the first 20 points: disjoint
    report = klom(unlearned, oracle, {"forget": np.arange(20), "val": np.arange(20, 40)})
    assert report["forget"] == pytest.approx(np.log(1 / EMPTY), abs=0.01)
    assert report["val"] < 0.01
    per = report.per_example
    assert report["forget"] == pytest.approx(np.percentile(per[:20], 95))
    floor = oracle_floor(oracle[:50], oracle[50:], {"all": np.arange(40)})
    assert 0 < floor["all"] < report["forget"]


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="n_models x n_examples"):
        klom_per_example(np.zeros((3, 4)), np.zeros((3, 5)))
