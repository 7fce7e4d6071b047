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
from attribution.unlearning.datamodels import (
    class_heterogeneous_masks,
    class_neighbourhoods,
    fit_context_datamodel,
    group_removal_masks,
    random_masks,
    removal_context,
)
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


def test_group_removal_masks_drop_whole_ranked_windows_or_input_neighbourhoods():
    labels = np.repeat(np.arange(4), 100)
    rng = np.random.default_rng(0)
    scores, features = rng.normal(size=400), rng.normal(size=(400, 2))
    # densities of 1: every removed example belongs to a dropped group
    windows = group_removal_masks(labels, 200, scores=scores, low=1.0, high=1.0, seed=3)
    np.testing.assert_array_equal(
        windows, group_removal_masks(labels, 200, scores=scores, low=1.0, high=1.0, seed=3)
    )
    at_lowest = []
    for mask in windows:
        hit = [c for c in range(4) if (~mask[labels == c]).any()]
        assert 1 <= len(hit) <= 3
        for c in hit:
            members = np.flatnonzero(labels == c)
            removed = np.flatnonzero(~mask[members[np.argsort(scores[members])]])  # ranks of the removed
            assert 10 <= len(removed) <= 60 and removed[-1] - removed[0] == len(removed) - 1  # one window
            at_lowest.append(removed[0] == 0)
    assert 0.4 < np.mean(at_lowest) < 0.65  # half start at the lowest score (a few random starts too)
    balls = group_removal_masks(labels, 100, features=features, low=1.0, high=1.0, seed=4)
    for mask in balls:
        for c in range(4):
            members = np.flatnonzero(labels == c)
            group, rest = members[~mask[members]], members[mask[members]]
            if len(group) == 0:
                continue
            dist = ((features[group][:, None] - features[None]) ** 2).sum(-1)
            # some member of the group (the anchor) has every other member nearer than any kept one
            assert any(dist[a, group].max() <= dist[a, rest].min() for a in range(len(group)))
    # with class densities below 1, the groups come on top of class_heterogeneous_masks' removals
    both = group_removal_masks(labels, 50, scores=scores, features=features, seed=5)
    assert not (both & ~class_heterogeneous_masks(labels, 50, 0.5, 1.0, seed=5)).any()
    with pytest.raises(ValueError, match="scores"):
        group_removal_masks(labels, 5)


def test_class_neighbourhoods_and_removal_context_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    scores = np.array([0.1, 0.4, 0.2, 0.3, 5.0, 1.0, 7.0])
    rank, near = class_neighbourhoods(labels, scores=scores, features=scores[:, None], k=2)
    # class 0 ranked 0, 2, 3, 1: one each side, one at the ends; class 1: each other; class 2: nobody
    expected_rank = np.zeros((7, 7))
    for i, neighbours in {0: [2], 2: [0, 3], 3: [2, 1], 1: [3], 4: [5], 5: [4]}.items():
        expected_rank[i, neighbours] = 1.0 / len(neighbours)
    np.testing.assert_allclose(rank, expected_rank)
    # the 2 nearest scores in the class, itself excluded (class 1: its only other member)
    expected_near = np.zeros((7, 7))
    for i, neighbours in {0: [2, 3], 2: [0, 3], 3: [2, 1], 1: [3, 2], 4: [5], 5: [4]}.items():
        expected_near[i, neighbours] = 1.0 / len(neighbours)
    np.testing.assert_allclose(near, expected_near)
    # removing 0 and 2: 0 loses all its rank neighbourhood (2), 2 half of its (0 of 0 and 3); kept: 0
    masks = np.ones((2, 7), bool)
    masks[0, [0, 2]] = False
    context = removal_context(masks, rank)
    np.testing.assert_allclose(context[0], [1.0, 0, 0.5, 0, 0, 0, 0])
    np.testing.assert_allclose(context[1], np.zeros(7))


def test_context_datamodel_removal_effect_adds_each_members_neighbourhood_share_times_its_interaction():
    weights = np.arange(12.0).reshape(3, 2, 2)  # train x targets x outputs
    phi = np.ones((3, 2, 2)) * np.array([1.0, 10.0, 100.0])[:, None, None]
    neighbourhood = np.array([[0, 0.5, 0.5], [1.0, 0, 0], [0.5, 0.5, 0]])
    other, psi = np.array([[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]]), -0.5 * phi
    dm = Datamodel(weights, ["a", "b", "c"], ["x", "y"], interactions=[(neighbourhood, phi), (other, psi)])
    # F = {a, b}: a's neighbourhood share removed 0.5 (b), b's 1.0 (a); in the other, a's 1.0 (b), b's 0
    # (c); c's row is not in F. Each neighbourhood goes with its own interaction weights.
    expected = weights[0] + weights[1] - (0.5 * phi[0] + 1.0 * phi[1]) - (1.0 * psi[0] + 0.0 * psi[1])
    np.testing.assert_allclose(dm.removal_effect(["a", "b"], ["x", "y"]), expected)
    np.testing.assert_allclose(dm.removal_effect(["c"], ["y"]), weights[2, 1:])  # alone: no context


def test_context_datamodel_predicts_a_groups_super_additive_removal_and_a_scattered_one():
    labels = np.repeat(np.arange(4), 100)
    rng = np.random.default_rng(0)
    scores, features = rng.normal(size=400), rng.normal(size=(400, 2))
    rank = np.empty(400, int)
    for c in range(4):
        members = np.flatnonzero(labels == c)
        rank[members[np.argsort(scores[members])]] = np.arange(100)
    # each example's outcome: 0.5 for itself, minus 2 x the squared share removed of the 20 class members
    # nearest it in the ranking: removing a window costs its members far more than the sum of single removals
    near = (
        (labels[:, None] == labels[None])
        & (np.abs(rank[:, None] - rank[None]) <= 10)
        & ~np.eye(400, dtype=bool)
    )
    near = near / near.sum(1, keepdims=True)

    def outcome(masks):
        return 0.5 * masks - 2.0 * ((1.0 - masks) @ near.T) ** 2

    het = class_heterogeneous_masks(labels, 1500, seed=1)
    grouped = group_removal_masks(labels, 1500, scores=scores, features=features, seed=2)
    pooled = np.r_[het, grouped]
    linear_het = fit_regression_datamodel(het, outcome(het), alpha=10)
    linear_pooled = fit_regression_datamodel(pooled, outcome(pooled), alpha=10)
    neighbourhoods = class_neighbourhoods(labels, scores=scores, features=features, k=5)
    context = fit_context_datamodel(
        (het, outcome(het)), (grouped, outcome(grouped)), neighbourhoods, alpha=10
    )
    members = np.flatnonzero(labels == 0)
    window, scattered = members[np.argsort(scores[members])[:30]], rng.choice(400, 30, replace=False)
    ids = [str(i) for i in range(400)]

    def predicted(dm, forget):
        return dm.removal_effect([str(i) for i in forget], ids)[forget, 0].mean()

    def true(forget):
        keep = np.ones(400)
        keep[forget] = 0
        return (outcome(np.ones(400)) - outcome(keep))[forget].mean()

    def worst_error(dm):
        return max(abs(predicted(dm, f) / true(f) - 1) for f in (window, scattered))

    # The property: one datamodel for both kinds of request. Each linear fit is wrong on one kind (the fit
    # on independent removals misses the window's collective effect, the pooled fit over-predicts
    # scattered removals); the context datamodel's worst error is below either's. Over 10 seeds of this
    # setup (data and masks) its worst error was 7-15%, an over-prediction; the independent fit's 28-31%
    # (the window), the pooled fit's 11-21% (scattered); it held on every seed.
    assert worst_error(context) < min(worst_error(linear_het), worst_error(linear_pooled))
    assert worst_error(context) < 0.25
    assert predicted(linear_het, window) < 0.8 * true(window)
    assert predicted(linear_pooled, scattered) > 1.1 * true(scattered)


def test_dmm_default_is_the_benchmarks_setting_and_the_authors_stay_available():
    assert DMMConfig().optim == DEFAULT_OPTIM and DMMConfig().optim is not DEFAULT_OPTIM
    assert (AUTHORS_OPTIM.lr, AUTHORS_OPTIM.epochs, AUTHORS_OPTIM.batch_size, AUTHORS_OPTIM.lr_decay) == (
        1e-4,
        4,
        512,
        0.95,
    )
