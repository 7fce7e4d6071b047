"""Datamodel Matching (DMM, arXiv 2410.23232): unlearn a forget set F by fine-tuning the model toward the
outputs a datamodel predicts it would have without F.

1. Predicted outputs: `f_hat(x) = f(x; theta0) - sum_{i in F} beta_i(x)` (the full logit vector of a
   classifier; margins are for evaluation only).
2. Fine-tuning set: F repeated `forget_repeats` (5) times plus a random retain sample of
   `retain_multiple` (20) x |F| examples (fewer when the retain set is smaller).
3. Loss: mean squared error between the model's outputs and f_hat, optionally plus an L2 pull toward
   theta0. Authors' defaults: Adam, lr 1e-4, 4 epochs, batch 512, lr x 0.95 after each epoch
   (`AUTHORS_OPTIM`). They fine-tune ResNets on CIFAR-10 (50,000 examples, so ~100 steps an epoch).
   At the benchmark's sizes (1,200 training examples, a fine-tuning set of 1,000: 2 steps an epoch)
   they barely move the model and score like doing nothing (benchmarks/unlearning: KLoM95 5.8 on the
   random forget set, do-nothing 5.7), so the default here (`DEFAULT_OPTIM`: lr 1e-2, 8 epochs, batch
   128, 0.23 of retraining's examples) is a setting within the benchmark's budget of a quarter of
   retraining that scores, untuned, as well as the benchmark's per-seed tuning (random set 1.14 +- 0.20
   against 1.42 +- 0.18; structured 8.92 +- 0.33 against 8.95 +- 0.34, 3 seeds). Pass
   `DMMConfig(optim=AUTHORS_OPTIM)` for theirs.
Oracle Matching (baselines.py) is the same fine-tuning toward the mean logits of retrained oracles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from attribution.unlearning.datamodels import Datamodel
from attribution.unlearning.loop import OptimConfig, optimise

AUTHORS_OPTIM = OptimConfig(lr=1e-4, epochs=4, batch_size=512, lr_decay=0.95)
DEFAULT_OPTIM = OptimConfig(lr=1e-2, epochs=8, batch_size=128, lr_decay=0.95)


@dataclass
class DMMConfig:
    forget_repeats: int = 5
    retain_multiple: int = 20
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(**DEFAULT_OPTIM.params()))
    seed: int = 0  # the retain sample

    def params(self) -> dict:
        return asdict(self)


def predicted_outputs(base: np.ndarray, removal_effect: np.ndarray) -> np.ndarray:
    """The DMM target: f(x; theta0) - sum_{i in F} beta_i(x), elementwise over (points x outputs).

    `base` may carry leading model dimensions (M x points x outputs): one datamodel serves every model.
    """
    base, removal_effect = np.asarray(base, dtype=np.float64), np.asarray(removal_effect, dtype=np.float64)
    if base.shape[-removal_effect.ndim :] != removal_effect.shape:
        raise ValueError(f"outputs {base.shape} and removal effects {removal_effect.shape} differ in shape")
    return base - removal_effect


def finetune_points(
    forget: np.ndarray, retain: np.ndarray, forget_repeats: int = 5, retain_multiple: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(fine-tuning sequence with repeats, its distinct points): F x forget_repeats + a retain sample."""
    forget, retain = np.asarray(forget), np.asarray(retain)
    rng = np.random.default_rng(seed)
    k = min(len(retain), retain_multiple * len(forget))
    sample = rng.choice(retain, size=k, replace=False) if k else retain[:0]
    sequence = np.concatenate([np.tile(forget, forget_repeats), sample])
    return sequence, np.concatenate([forget, sample])


def match_logits(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, optim: OptimConfig) -> nn.Module:
    """Fine-tune `model` so its logits on `x` (n x d) approach `targets` (n x C): MSE, mean over classes
    and batch.

    A stacked ensemble (a module returning M x B x C) takes targets (M x n x C); the loss is the sum of
    the members' mean losses, so each member trains exactly as it would alone.
    """
    x, targets = torch.as_tensor(x), torch.as_tensor(targets, dtype=torch.float32)

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(idx)
        err = (model(x[index]) - targets[..., index, :]) ** 2
        return err.mean((-2, -1)).sum()

    return optimise(model, len(x), batch_loss, optim)


def dmm_classifier(
    model: nn.Module,
    x: torch.Tensor,
    forget: np.ndarray,
    datamodel: Datamodel,
    config: DMMConfig | None = None,
    retain: np.ndarray | None = None,
    ids: list[str] | None = None,
) -> nn.Module:
    """DMM for a classifier on training inputs `x` (n x d); `forget` / `retain` index x.

    The datamodel's train and target ids are the training indices as strings unless `ids` names them.
    Works on a stacked ensemble too (see `match_logits`): one datamodel, each member's own f(x; theta0).
    Returns the model (changed in place) in eval mode.
    """
    config = config or DMMConfig()
    n = len(x)
    forget = np.asarray(forget, dtype=np.int64)
    retain = np.setdiff1d(np.arange(n), forget) if retain is None else np.asarray(retain, dtype=np.int64)
    names = ids if ids is not None else [str(i) for i in range(n)]
    sequence, points = finetune_points(
        forget, retain, config.forget_repeats, config.retain_multiple, config.seed
    )
    with torch.no_grad():
        base = model.eval()(x[torch.as_tensor(points)]).double().numpy()
    effect = datamodel.removal_effect([names[i] for i in forget], [names[i] for i in points])
    f_hat = predicted_outputs(base, effect)
    target_of = {int(p): k for k, p in enumerate(points)}
    rows = torch.as_tensor(np.array([target_of[int(i)] for i in sequence]))
    targets = torch.as_tensor(f_hat, dtype=torch.float32)[..., rows, :]
    return match_logits(model, x[torch.as_tensor(sequence)], targets, config.optim)
