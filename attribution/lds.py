"""Faithfulness checks usable with any model: leave-one-out and the linear datamodeling score (LDS).

Both retrain through a user callable `retrain_eval(mask) -> f per target` (f higher is better, e.g. the
reference response's mean log-likelihood), so the same harness serves logistic regression and LMs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

RetrainEval = Callable[[np.ndarray], np.ndarray]


def leave_one_out(
    retrain_eval: RetrainEval, n_train: int, indices: Sequence[int] | None = None
) -> np.ndarray:
    """(len(indices) x n_targets): f(full) - f(without i). Positive = removing i hurts = i is helpful."""
    full = np.asarray(retrain_eval(np.ones(n_train, dtype=bool)), dtype=np.float64)
    rows = []
    for i in indices if indices is not None else range(n_train):
        mask = np.ones(n_train, dtype=bool)
        mask[i] = False
        rows.append(full - np.asarray(retrain_eval(mask), dtype=np.float64))
    return np.stack(rows)


def subset_masks(n_train: int, n_subsets: int, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """(n_subsets x n_train) boolean masks, each keeping round(fraction * n_train) random examples."""
    rng = np.random.default_rng(seed)
    k = round(fraction * n_train)
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for row in masks:
        row[rng.choice(n_train, size=k, replace=False)] = True
    return masks


@dataclass
class LDSResult:
    mean: float
    per_target: np.ndarray  # Spearman per target (nan where a target's outputs are constant)
    outputs: np.ndarray  # (n_subsets x n_targets) measured f
    masks: np.ndarray


def lds_from_outputs(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray) -> LDSResult:
    """LDS of `scores` (n_train x n_targets) against measured `outputs` of models trained on `masks`."""
    predicted = masks.astype(np.float64) @ scores  # each subset's prediction: sum of its members' scores
    per = np.array(
        [
            spearmanr(predicted[:, t], outputs[:, t]).statistic
            if np.ptp(outputs[:, t]) > 0 and np.ptp(predicted[:, t]) > 0
            else np.nan
            for t in range(outputs.shape[1])
        ]
    )
    return LDSResult(float(np.nanmean(per)) if np.isfinite(per).any() else float("nan"), per, outputs, masks)


def subset_outputs(retrain_eval: RetrainEval, masks: np.ndarray, progress: bool = False) -> np.ndarray:
    """Retrain once per mask and stack the targets' f: (n_subsets x n_targets). Reuse across methods."""
    from tqdm.auto import tqdm

    return np.stack(
        [
            np.asarray(retrain_eval(m), dtype=np.float64)
            for m in tqdm(masks, desc="LDS retrain", disable=not progress)
        ]
    )


def lds(
    scores: np.ndarray, retrain_eval: RetrainEval, n_subsets: int = 20, fraction: float = 0.5, seed: int = 0
) -> LDSResult:
    masks = subset_masks(scores.shape[0], n_subsets, fraction, seed)
    return lds_from_outputs(scores, masks, subset_outputs(retrain_eval, masks))


def causal_lm_retrain_eval(
    make_model: Callable[[], Any],
    tokenizer: Any,
    train_records: Sequence[dict],
    target_records: Sequence[dict],
    *,
    max_length: int = 256,
    device: str = "cpu",
    **train_kw: Any,
) -> RetrainEval:
    """retrain_eval for a causal LM: fine-tune a fresh `make_model()` on the masked records with
    `finetune_causal_lm(**train_kw)`, return each target's mean response log-likelihood."""
    import torch

    from attribution.lm_data import collate, pad_id
    from attribution.lm_loss import example_loss, forward_logits
    from attribution.training import encode_records, finetune_causal_lm

    targets = collate(encode_records(tokenizer, target_records, max_length), pad_id(tokenizer))

    def run(mask: np.ndarray) -> np.ndarray:
        chosen = [r for r, keep in zip(train_records, mask) if keep]
        model = finetune_causal_lm(
            make_model(), tokenizer, chosen, max_length=max_length, device=device, **train_kw
        )
        with torch.no_grad():
            batch = {k: v.to(device) for k, v in targets.items()}
            return (-example_loss(forward_logits(model, batch), batch["labels"])).cpu().numpy()

    return run


def lds_standard_error(
    scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray, n_boot: int = 200, seed: int = 0
) -> float:
    """Bootstrap standard error of the LDS that includes subset noise: each replicate redraws the
    subsets (rows of masks / outputs) and the targets with replacement and recomputes the mean
    Spearman. A standard error over targets alone treats the subsets as fixed."""
    rng = np.random.default_rng(seed)
    n_subsets, n_targets = outputs.shape
    means = []
    for _ in range(n_boot):
        rows = rng.integers(0, n_subsets, n_subsets)
        cols = rng.integers(0, n_targets, n_targets)
        res = lds_from_outputs(scores[:, cols], masks[rows], outputs[np.ix_(rows, cols)])
        if np.isfinite(res.mean):
            means.append(res.mean)
    return float(np.std(means, ddof=1)) if len(means) > 1 else float("nan")
