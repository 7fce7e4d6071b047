"""The optimisation loop every unlearning method shares: shuffled mini-batches of item indices, Adam (or
SGD), a learning rate multiplied by `lr_decay` after each epoch, and an optional L2 pull toward the
starting weights.

`train_module` in attribution/training.py has no learning-rate schedule and clips gradients by default;
DMM's recipe needs the per-epoch decay and none of the clipping, so unlearning has this small loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float = 1e-4
    epochs: int = 4
    batch_size: int = 512
    lr_decay: float = 0.95  # learning rate x lr_decay after every epoch
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    l2_to_init: float = 0.0  # + l2_to_init * ||theta - theta0||^2 in every step's loss
    max_grad_norm: float | None = None
    seed: int = 0

    def params(self) -> dict:
        return asdict(self)


def optimise(
    model: nn.Module,
    n_items: int,
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    config: OptimConfig,
    steps_per_epoch: int | None = None,
    epoch_order: Callable[[np.random.Generator], np.ndarray] | None = None,
) -> nn.Module:
    """Minimise `batch_loss(indices)` over shuffled batches of range(n_items); returns the model in eval mode.

    `steps_per_epoch` (default: one pass over the items) lets a method draw its own batches.
    `epoch_order(rng)` replaces the epoch's random permutation (e.g. `length_grouped_order`, which puts
    items of similar length in one batch); consecutive `batch_size` items of it form the batches.
    """
    if config.optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'adam' or 'sgd'")
    if n_items == 0 or config.epochs <= 0:
        return model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    anchor = [p.detach().clone() for p in params] if config.l2_to_init else None
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs):
        order = rng.permutation(n_items) if epoch_order is None else np.asarray(epoch_order(rng))
        starts = range(0, n_items, config.batch_size)
        if steps_per_epoch is not None:
            starts = [(k * config.batch_size) % n_items for k in range(steps_per_epoch)]
        for start in starts:
            idx = order[start : start + config.batch_size]
            loss = batch_loss(idx)
            if anchor is not None:
                loss = loss + config.l2_to_init * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
        sched.step()
    return model.eval()


def examples_processed(n_items: int, config: OptimConfig, steps_per_epoch: int | None = None) -> int:
    """Forward/backward passes over examples the loop makes (for compute as a fraction of retraining)."""
    if steps_per_epoch is None:
        return n_items * config.epochs
    return min(n_items, config.batch_size) * steps_per_epoch * config.epochs
