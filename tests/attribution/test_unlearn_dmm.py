"""DMM: the target formula, the fine-tuning set, datamodels, and unlearning on small MLPs."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from attribution.unlearning import (
    Datamodel,
    DMMConfig,
    OptimConfig,
    dmm_classifier,
    finetune_points,
    fit_regression_datamodel,
    gradient_ascent,
    klom,
    margins,
    oracle_matching,
    predicted_outputs,
    regression_datamodel,
)
from attribution.unlearning.datamodels import class_heterogeneous_masks, random_masks
from attribution.unlearning.dmm import AUTHORS_OPTIM, DEFAULT_OPTIM
from attribution.unlearning.ensemble import Recipe, logits_of, subset_logits, train_ensemble


def test_target_is_original_output_minus_the_forget_sets_summed_datamodel_weights():
    # 3 train examples, 2 target points, 2 outputs (logits)
    weights = np.array(
        [
            [[1.0, 0.5], [0.0, 2.0]],
            [[0.25, 0.0], [1.0, 1.0]],
            [[9.0, 9.0], [9.0, 9.0]],
        ]
    )
    dm = Datamodel(weights, ["a", "b", "c"], ["p", "q"])
    base = np.array([[3.0, 3.0], [1.0, -1.0]])
    effect = dm.removal_effect(["a", "b"], ["p", "q"])
    np.testing.assert_allclose(effect, [[1.25, 0.5], [1.0, 3.0]])
    np.testing.assert_allclose(predicted_outputs(base, effect), [[1.75, 2.5], [0.0, -4.0]])
    # one datamodel serves a stack of models (leading model dimension)
    stacked = predicted_outputs(np.stack([base, base + 1]), effect)
    np.testing.assert_allclose(stacked[1], [[2.75, 3.5], [1.0, -3.0]])
    with pytest.raises(KeyError, match="forget ids"):
        dm.removal_effect(["zz"], ["p"])


def test_finetune_set_is_forget_repeated_plus_a_retain_sample_of_twenty_times():
    forget, retain = np.array([3, 7]), np.arange(10, 100)
    sequence, points = finetune_points(forget, retain, forget_repeats=5, retain_multiple=20, seed=0)
    assert len(sequence) == 5 * 2 + 40
    assert (np.bincount(sequence)[[3, 7]] == 5).all()
    sample = sequence[10:]
    assert len(set(sample)) == 40 and set(sample) <= set(retain)
    assert list(points[:2]) == [3, 7] and len(points) == 42
    short, _ = finetune_points(forget, np.arange(10, 15))  # fewer retain examples than 20 x |F|
    assert len(short) == 10 + 5


def test_datamodel_from_scores_frame_scales_and_folds_per_logit_targets():
    frame = pd.DataFrame(
        {
            "train_id": ["a", "a", "b", "b"],
            "target_id": ["x#0", "x#1", "x#0", "x#1"],
            "score": [1.0, 2.0, 3.0, 4.0],
        }
    )
    dm = Datamodel.from_scores(frame, scale=0.5, n_outputs=2)
    assert dm.weights.shape == (2, 1, 2)
    np.testing.assert_allclose(dm.removal_effect(["a", "b"], ["x"]), [[2.0, 3.0]])
    with pytest.raises(ValueError, match="cover"):
        Datamodel.from_scores(frame.iloc[:3], n_outputs=2)


def test_fixed_size_subsets_cannot_pin_the_mean_weight_but_random_ones_can():
    rng = np.random.default_rng(4)
    true = 0.5 + rng.normal(0, 0.1, size=(20, 1))  # every example raises the output by about 0.5
    fixed = np.zeros((300, 20), bool)
    for row in fixed:
        row[rng.choice(20, 10, replace=False)] = True
    free = random_masks(20, 300, 0.5, seed=5)
    fit = lambda masks: fit_regression_datamodel(masks, masks @ true, alpha=1e-3)
    assert abs(fit(fixed).weights.mean() - 0.5) > 0.3  # absorbed by the intercept
    assert abs(fit(free).weights.mean() - 0.5) < 0.01


def test_regression_datamodel_recovers_a_linear_datamodel():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(30, 4, 2))
    masks = random_masks(30, 400, 0.5, seed=1)
    outputs = np.einsum("mi,itk->mtk", masks.astype(float), true) + 0.7 + rng.normal(0, 0.01, (400, 4, 2))
    dm = fit_regression_datamodel(masks, outputs, alpha=1e-3)
    np.testing.assert_allclose(dm.weights, true, atol=0.02)
    np.testing.assert_allclose(dm.intercept, 0.7, atol=0.05)
    lasso = fit_regression_datamodel(masks, outputs[:, :1, :1], estimator="lasso", alpha=1e-4)
    np.testing.assert_allclose(lasso.weights[:, 0, 0], true[:, 0, 0], atol=0.05)
    # the retraining harness: retrain_eval(mask) -> outputs, here an exactly linear "training algorithm"
    retrained = regression_datamodel(
        lambda mask: np.einsum("i,itk->tk", mask.astype(float), true),
        30,
        n_subsets=200,
        alpha=1e-4,
        target_ids=list("abcd"),
    )
    np.testing.assert_allclose(retrained.weights, true, atol=1e-3)
    assert retrained.target_ids == list("abcd") and retrained.info["n_subsets"] == 200


@pytest.fixture(scope="module")
def digits_setup():
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))[:600]
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order])
    n = 400
    recipe = Recipe(hidden=32, epochs=15, batch_size=64, lr=3e-3)
    n_models = 40
    full = train_ensemble(x[:n], y[:n], np.ones((n_models, n), bool), list(range(n_models)), recipe)
    forget = np.sort(np.random.default_rng(1).choice(n, 12, replace=False))
    keep = np.ones(n, bool)
    keep[forget] = False
    oracles = train_ensemble(
        x[:n], y[:n], np.tile(keep, (n_models, 1)), list(range(100, 100 + n_models)), recipe
    )
    masks = random_masks(n, 300, 0.5, seed=2)
    datamodel = fit_regression_datamodel(
        masks, subset_logits(x[:n], y[:n], masks, x[:n], recipe, seed=1000), alpha=10.0
    )
    return x, y, n, forget, full, oracles, datamodel


def test_dmm_moves_forget_margins_toward_oracles_more_than_doing_nothing(digits_setup):
    x, y, n, forget, full, oracles, datamodel = digits_setup
    groups = {"forget": forget, "val": np.arange(n, len(x))}
    oracle_m = margins(logits_of(oracles, x), y)
    before_m = margins(logits_of(full, x), y)
    unlearned = copy.deepcopy(full)
    dmm_classifier(
        unlearned, x[:n], forget, datamodel, DMMConfig(optim=OptimConfig(lr=1e-2, epochs=10, batch_size=64))
    )
    after_m = margins(logits_of(unlearned, x), y)
    gap_before = np.abs(before_m[:, forget].mean(0) - oracle_m[:, forget].mean(0)).mean()
    gap_after = np.abs(after_m[:, forget].mean(0) - oracle_m[:, forget].mean(0)).mean()
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)
    nothing, dmm = klom(before_m, oracle_m, groups), klom(after_m, oracle_m, groups)
    assert dmm["forget"] < nothing["forget"], (dmm.groups, nothing.groups)
    assert dmm["val"] < nothing["val"] + 0.5, (dmm.groups, nothing.groups)


def test_stacked_ensemble_unlearns_as_its_members_would_alone(digits_setup):
    x, y, n, forget, full, oracles, datamodel = digits_setup
    config = DMMConfig(optim=OptimConfig(lr=1e-3, epochs=2, batch_size=64))
    stacked = copy.deepcopy(full)
    dmm_classifier(stacked, x[:n], forget, datamodel, config)
    alone = dmm_classifier(full.member(3), x[:n], forget, datamodel, config)
    with torch.no_grad():
        np.testing.assert_allclose(stacked.member(3)(x).numpy(), alone(x).numpy(), atol=1e-4)
    target = logits_of(oracles, x[:n]).mean(0)
    om, ga = (
        oracle_matching(copy.deepcopy(full), x[:n], forget, target),
        gradient_ascent(
            copy.deepcopy(full), x[:n], y[:n], forget, OptimConfig(lr=1e-3, epochs=1, batch_size=8)
        ),
    )
    for model in (om, ga):
        assert np.isfinite(logits_of(model, x)).all()


def test_class_heterogeneous_masks_vary_each_class_density_within_its_range():
    labels = np.repeat(np.arange(4), 200)
    masks = class_heterogeneous_masks(labels, 500, 0.5, 1.0, seed=3)
    assert masks.shape == (500, 800)
    np.testing.assert_array_equal(masks, class_heterogeneous_masks(labels, 500, 0.5, 1.0, seed=3))
    kept = np.stack([masks[:, labels == c].mean(1) for c in range(4)], axis=1)  # per subset and class
    assert kept.min() > 0.5 - 5 * np.sqrt(0.25 / 200) and kept.max() <= 1.0  # binomial noise around [0.5, 1]
    assert kept.std(axis=0).min() > 0.12  # uniform on [0.5, 1]: sd 0.144, Bernoulli(0.75) would give 0.03
    assert abs(np.corrcoef(kept[:, 0], kept[:, 1])[0, 1]) < 0.15  # classes vary independently


def test_dmm_default_is_the_benchmarks_setting_and_the_authors_stay_available():
    assert DMMConfig().optim == DEFAULT_OPTIM and DMMConfig().optim is not DEFAULT_OPTIM
    assert (AUTHORS_OPTIM.lr, AUTHORS_OPTIM.epochs, AUTHORS_OPTIM.batch_size, AUTHORS_OPTIM.lr_decay) == (
        1e-4,
        4,
        512,
        0.95,
    )
