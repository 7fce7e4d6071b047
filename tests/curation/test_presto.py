"""PRESTO: the solver against cvxpy, the lambda path and CV rule, probabilities, the reproduction."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from benchmarks.presto.bench import cvxpy_fit, rare_probabilities, simulate
from curation.presto import Presto, cumulative_to_proba, lambda_max


@pytest.fixture(autouse=True)
def one_blas_thread():
    # the machine's 2 cores are shared: threaded BLAS on tiny matrices only waits for its siblings
    with threadpool_limits(1):
        yield


def ordinal_data(n: int, p: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features on mixed scales and offsets (standardisation matters), ordinal y with K classes."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, p)) * rng.uniform(0.5, 3.0, p) + rng.normal(0, 1, p)
    eta = np.array([0.0, 1.5, 3.0][: K - 1]) + X @ rng.normal(0, 0.35, (p, K - 1))
    F = np.maximum.accumulate(1 / (1 + np.exp(-eta)), axis=1)
    return X, (rng.uniform(size=n)[:, None] > F).sum(axis=1)


def cvxpy_presto(X: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's cvxpy form of the objective (an independent solver), mapped back to X's scale."""
    _, yi = np.unique(y, return_inverse=True)
    mean, sd = X.mean(axis=0), X.std(axis=0)
    theta, _ = cvxpy_fit((X - mean) / sd, yi, lam, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    coef = np.cumsum(theta[:, 1:], axis=0) / sd
    return theta[:, 0] - coef @ mean, coef


@pytest.mark.parametrize(
    ("K", "p", "n", "lam", "seed"),
    [(3, 4, 200, 0.01, 0), (4, 5, 300, 0.02, 1), (4, 3, 150, 0.002, 2), (2, 4, 120, 0.05, 3)],
)
def test_solver_matches_cvxpy(K, p, n, lam, seed):
    X, y = ordinal_data(n, p, K, seed)
    model = Presto(lam=lam).fit(X, y)
    intercept, coef = cvxpy_presto(X, y, lam)
    np.testing.assert_allclose(model.coef_, coef, atol=1e-4)
    np.testing.assert_allclose(model.intercept_, intercept, atol=1e-4)


def test_lambda_max_zeroes_every_psi_and_below_it_some_move():
    X, y = ordinal_data(300, 5, 4, seed=4)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    lmax = lambda_max(Z, y, 4)
    at = Presto(lam=lmax * (1 + 1e-9)).fit(X, y)
    assert np.abs(at.coef_).max() < 1e-8
    cum = np.cumsum(np.bincount(y), dtype=float)[:-1] / len(y)
    np.testing.assert_allclose(at.intercept_, np.log(cum / (1 - cum)), atol=1e-8)  # the null model
    below = Presto(lam=lmax * 0.9).fit(X, y)
    assert np.abs(below.coef_).max() > 1e-6


def test_path_and_cv_rule():
    X, y = ordinal_data(400, 4, 4, seed=5)
    model = Presto().fit(X, y)
    assert len(model.lambdas_) == 20
    assert model.lambdas_[-1] == pytest.approx(0.01 * model.lambdas_[0])
    assert np.all(np.diff(model.lambdas_) < 0)
    best = model.cv_scores_.min()
    # the largest lambda whose mean CV Brier score is the minimum
    assert model.lambda_ == model.lambdas_[np.flatnonzero(model.cv_scores_ == best)[0]]
    refit = Presto(lam=model.lambda_).fit(X, y)  # the final fit is a refit on all the data
    np.testing.assert_allclose(model.coef_, refit.coef_, atol=1e-7)
    assert clone(model).get_params() == model.get_params()


def test_probabilities_floored_monotone_and_normalised():
    X, y = ordinal_data(300, 3, 4, seed=6)
    model = Presto().fit(X, y)
    far = np.vstack([X, X * 50])  # far outside the data, separate slopes cross
    P = model.predict_proba(far)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    assert P.min() >= 1e-8 * (1 - 1e-6)
    crossing = np.array([[2.0, -1.0, 3.0], [-50.0, -60.0, -70.0]])  # F_2 < F_1: must not go negative
    Q = cumulative_to_proba(crossing, 1e-8)
    assert Q.min() >= 1e-8 * (1 - 1e-6)
    np.testing.assert_allclose(Q.sum(axis=1), 1.0)
    assert model.predict_rare_proba(X).shape == (len(X),)
    assert set(model.predict(X)) <= set(model.classes_)


def test_a_class_with_one_example_is_an_error_and_fewer_than_the_folds_warns():
    X, y = ordinal_data(100, 3, 3, seed=7)
    y[y == 2] = 1
    y[:3] = 2
    # 3 rare examples for 5 folds: scikit-learn's StratifiedKFold warns, every training part still
    # holds the class (a test fold takes at most one of them)
    with pytest.warns(UserWarning, match="least populated class"):
        model = Presto().fit(X, y)
    assert list(model.classes_) == [0, 1, 2]
    y[1:3] = 1
    with pytest.raises(ValueError, match="class 2 has 1 example"):
        Presto().fit(X, y)


def test_constant_fit_warns_and_is_flagged():
    X, y = ordinal_data(200, 4, 3, seed=8)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    with pytest.warns(UserWarning, match="the fit is constant"):
        at_max = Presto(lam=lambda_max(Z, y, 3) * 1.01).fit(X, y)
    assert at_max.constant_ and not np.any(at_max.coef_)
    # a constant fit predicts the class shares (the null model's MLE) for every input
    shares = np.bincount(y) / len(y)
    np.testing.assert_allclose(at_max.predict_proba(X[:5] * 100), np.tile(shares, (5, 1)), atol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fit with slopes says nothing
        assert not Presto().fit(X, y).constant_


@pytest.mark.parametrize("seed", range(6))
def test_cross_validation_on_noise_warns_exactly_when_it_picks_lambda_max(seed):
    # 47 rows of features unrelated to y (the size that returned a silent constant in issue 19)
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(47, 8)), rng.choice(3, 47, p=[0.5, 0.35, 0.15])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Presto().fit(X, y)
    constant_warnings = [w for w in caught if "the fit is constant" in str(w.message)]
    assert model.constant_ == (model.best_index_ == 0) == bool(constant_warnings)
    assert model.constant_ == (not np.any(model.coef_))


def test_small_reproduction_presto_beats_both_baselines():
    """The sparse-differences setting (sec. 4.1), 8 paired draws: lower mean MSE of P(y = K | x)."""
    mse = {"PRESTO": [], "logistic (rare vs rest)": [], "proportional odds": []}
    for rep in range(8):
        pi = (1 / 3, 1 / 2)[rep % 2]
        X, y, truth = simulate(np.random.default_rng([7, rep]), pi)
        for name, est in rare_probabilities(X, y).items():
            mse[name].append(np.mean((est - truth) ** 2))
    means = {name: float(np.mean(v)) for name, v in mse.items()}
    assert means["PRESTO"] < means["logistic (rare vs rest)"], means
    assert means["PRESTO"] < means["proportional odds"], means
