"""Unlearning baselines for classifiers, all on training tensors x (n x d), y (n,) and index arrays:

Every method also takes a stacked ensemble (a module returning M x B x C logits): losses are sums of the
members' mean losses, so the members train as they would alone (the benchmark unlearns 100 models at once).

- do_nothing: the model as trained (the ceiling of KLoM);
- gradient_ascent: raise the cross-entropy on the forget set F;
- gradient_descent: keep training on the retain set (forgetting by fine-tuning on the rest);
- ascent_descent: both at once, each step a retain batch's loss minus `ascent_weight` x a forget batch's;
- oracle_matching: DMM's fine-tuning toward the *mean logits of oracles retrained without F* instead of
  a datamodel's prediction (authors' defaults: lr 5e-4, 5 epochs).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attribution.unlearning.dmm import DMMConfig, finetune_points, match_logits
from attribution.unlearning.loop import OptimConfig, optimise


def do_nothing(model: nn.Module) -> nn.Module:
    return model.eval()


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """Mean cross-entropy of a batch; for a stacked ensemble (M x B x C logits) the sum of the members'
    means, so each member gets the gradient it would get alone."""
    index = torch.as_tensor(idx)
    logits = model(x[index])
    labels = y[index].expand(logits.shape[:-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum") / len(
        idx
    )


def gradient_ascent(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, forget: np.ndarray, optim: OptimConfig
) -> nn.Module:
    forget = np.asarray(forget, dtype=np.int64)
    return optimise(model, len(forget), lambda idx: -_ce(model, x, y, forget[idx]), optim)


def gradient_descent(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, retain: np.ndarray, optim: OptimConfig
) -> nn.Module:
    retain = np.asarray(retain, dtype=np.int64)
    return optimise(model, len(retain), lambda idx: _ce(model, x, y, retain[idx]), optim)


def ascent_descent(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    forget: np.ndarray,
    retain: np.ndarray,
    optim: OptimConfig,
    ascent_weight: float = 1.0,
) -> nn.Module:
    """One pass over the retain set per epoch; each step pairs its retain batch with a forget batch
    (cycling through F)."""
    forget, retain = np.asarray(forget, dtype=np.int64), np.asarray(retain, dtype=np.int64)
    rng = np.random.default_rng(optim.seed + 1)
    state = {"order": rng.permutation(len(forget)), "pos": 0}

    def forget_batch(size: int) -> np.ndarray:
        take = []
        while len(take) < size:
            if state["pos"] >= len(forget):
                state["order"], state["pos"] = rng.permutation(len(forget)), 0
            chunk = state["order"][state["pos"] : state["pos"] + size - len(take)]
            state["pos"] += len(chunk)
            take.extend(forget[chunk])
        return np.array(take)

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        size = min(len(idx), len(forget))
        return _ce(model, x, y, retain[idx]) - ascent_weight * _ce(model, x, y, forget_batch(size))

    return optimise(model, len(retain), batch_loss, optim)


def oracle_matching(
    model: nn.Module,
    x: torch.Tensor,
    forget: np.ndarray,
    oracle_logits: np.ndarray,
    config: DMMConfig | None = None,
    retain: np.ndarray | None = None,
) -> nn.Module:
    """Fine-tune toward `oracle_logits` (n x C: the mean logits of oracles retrained without F) on DMM's
    fine-tuning set (F repeated plus a retain sample)."""
    config = config or DMMConfig(optim=OptimConfig(lr=5e-4, epochs=5))
    forget = np.asarray(forget, dtype=np.int64)
    retain = np.setdiff1d(np.arange(len(x)), forget) if retain is None else np.asarray(retain, dtype=np.int64)
    sequence, _ = finetune_points(forget, retain, config.forget_repeats, config.retain_multiple, config.seed)
    index = torch.as_tensor(sequence)
    targets = torch.as_tensor(oracle_logits, dtype=torch.float32)[..., index, :]
    return match_logits(model, x[index], targets, config.optim)
