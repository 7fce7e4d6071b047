"""Influence on a convex model against real leave-one-out retraining (logistic regression)."""

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from attribution.api import attribute
from attribution.lds import lds, leave_one_out
from attribution.tasks import classification_task

N_TRAIN, LAM = 100, 0.03


@pytest.fixture(scope="module")
def data():
    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    order = np.random.default_rng(0).permutation(len(x))
    tr, te = order[:N_TRAIN], order[300:330]
    as_t = lambda a: torch.tensor(a, dtype=torch.float64)
    return as_t(x[tr]), torch.tensor(y[tr]), as_t(x[te]), torch.tensor(y[te])


def fit_lr(x, y, mask, n_total):
    """L2-regularised logistic regression to convergence (mean loss over the *full* set size, as the
    influence derivation assumes: removing one example removes 1/n of the objective)."""
    model = torch.nn.Linear(x.shape[1], 2).double()
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    xm, ym = x[mask], y[mask]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xm), ym, reduction="sum") / n_total
        loss = loss + LAM / 2 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model


def target_f(model, xq, yq):
    with torch.no_grad():
        return -torch.nn.functional.cross_entropy(model(xq), yq, reduction="none").numpy()


def ekfac_scores(data):
    x, y, xq, yq = data
    model = fit_lr(x, y, np.ones(len(x), bool), len(x)).float()
    result = attribute(
        model,
        [(a.float(), b) for a, b in zip(x, y)],
        [(a.float(), b) for a, b in zip(xq, yq)],
        task=classification_task(),
        method="ekfac",
        # damping = the L2 strength (the Hessian of the regularised objective is GGN + lambda I);
        # 20 Fisher passes average out the sampled labels on this small set.
        method_params={"damping": LAM, "fisher_samples": 20, "train_batch_size": 50},
    )
    return result.matrix().loc[[str(i) for i in range(len(x))], [str(i) for i in range(len(xq))]].to_numpy()


def test_ekfac_matches_leave_one_out_on_logistic_regression(data):
    torch.set_num_threads(1)
    x, y, xq, yq = data
    scores = ekfac_scores(data)
    loo = leave_one_out(lambda m: target_f(fit_lr(x, y, m, len(x)), xq, yq), len(x))
    pooled = pearsonr(scores.ravel(), loo.ravel()).statistic
    total = pearsonr(scores.sum(1), loo.sum(1)).statistic
    assert pooled >= 0.9, pooled
    assert total >= 0.9, total


def test_lds_harness_ranks_influence_above_random(data):
    torch.set_num_threads(1)
    x, y, xq, yq = data
    scores = ekfac_scores(data)

    def retrain_eval(mask):
        return target_f(fit_lr(x, y, mask, len(x)), xq, yq)

    good = lds(scores, retrain_eval, n_subsets=30, seed=0)
    rand = lds(np.random.default_rng(0).normal(size=scores.shape), retrain_eval, n_subsets=30, seed=0)
    assert good.per_target.shape == (len(xq),)
    assert good.mean > 0.5 and good.mean > rand.mean + 0.3, (good.mean, rand.mean)
