"""The LDS harness pieces: subset masks, the LDS formula, and the causal-LM retrain callable."""

import numpy as np
import torch
from tiny_lm import make_model

from attribution.lds import causal_lm_retrain_eval, lds_from_outputs, lds_standard_error, subset_masks


def test_subset_masks_keep_half_and_are_seeded():
    masks = subset_masks(11, 5, 0.5, seed=3)
    assert masks.shape == (5, 11) and (masks.sum(1) == 6).all()
    assert (masks == subset_masks(11, 5, 0.5, seed=3)).all()
    assert not (masks == subset_masks(11, 5, 0.5, seed=4)).all()


def test_lds_is_one_for_an_exact_linear_datamodel_and_low_for_noise():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 4))
    masks = subset_masks(20, 30, seed=0)
    outputs = masks @ scores + 0.01 * rng.normal(size=(30, 4))
    assert lds_from_outputs(scores, masks, outputs).mean > 0.95
    assert abs(lds_from_outputs(rng.normal(size=(20, 4)), masks, outputs).mean) < 0.5


def test_causal_lm_retrain_eval_measures_target_log_likelihood(tokenizer, records, targets):
    torch.set_num_threads(1)
    run = causal_lm_retrain_eval(
        lambda: make_model(tokenizer), tokenizer, records, targets, max_length=64, epochs=2, lr=3e-3
    )
    full, none = run(np.ones(len(records), bool)), run(np.zeros(len(records), bool))
    assert full.shape == (len(targets),)
    assert full.mean() > none.mean() + 0.5  # training on the data raises the targets' log-likelihood


def test_lds_standard_error_includes_subset_noise():
    """Targets that move together (here: nearly equal scores and a noise term shared by all targets of
    a subset) make the spread over targets tiny while the LDS still varies from one draw of subsets to
    the next. The bootstrap over subsets and targets tracks that variation (measured over 200 fresh
    draws); the standard error over targets alone is several times too small. Every seed tried."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        scores = rng.normal(size=(30, 1)) + 0.05 * rng.normal(size=(30, 8))

        def draw(r, scores=scores):
            masks = subset_masks(30, 12, seed=r)
            noise = np.random.default_rng(r + 10_000)
            shared, own = noise.normal(size=(12, 1)), noise.normal(size=(12, 8))
            return masks, masks @ scores + 2.0 * shared + 0.3 * own

        spread = np.std([lds_from_outputs(scores, *draw(1000 * (seed + 1) + r)).mean for r in range(200)])
        masks, outputs = draw(seed)
        per_target = lds_from_outputs(scores, masks, outputs).per_target
        over_targets = per_target.std(ddof=1) / np.sqrt(len(per_target))
        boot = lds_standard_error(scores, masks, outputs, n_boot=200, seed=0)
        assert 0.3 * spread < boot < 2 * spread, (seed, boot, spread)
        assert boot > 3 * over_targets, (seed, boot, over_targets)
