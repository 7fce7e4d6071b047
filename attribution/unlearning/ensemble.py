"""Many small MLP classifiers trained at once (one batched matmul per layer), for KLoM: it needs N models
trained on all data, N oracles retrained without the forget set, and (for regression datamodels)
hundreds of models trained on random subsets, all with one recipe.

Each member has its own initialisation (nn.Linear's default, from its own seed), its own training
subset and its own batch order; Adam is elementwise, so members train exactly as they would alone.
`member(k)` returns member k as a plain nn.Sequential for the unlearning methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Recipe:
    hidden: int = 64
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0


def _linear_init(gen: torch.Generator, fan_in: int, fan_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default for weight (kaiming a=sqrt(5)) and bias
    w = (torch.rand(fan_in, fan_out, generator=gen) * 2 - 1) * bound
    b = (torch.rand(1, fan_out, generator=gen) * 2 - 1) * bound
    return w, b


class EnsembleMLP(nn.Module):
    def __init__(self, seeds: list[int], d_in: int, hidden: int, n_out: int):
        super().__init__()
        parts = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            parts.append((*_linear_init(gen, d_in, hidden), *_linear_init(gen, hidden, n_out)))
        self.w1, self.b1, self.w2, self.b2 = (nn.Parameter(torch.stack(p)) for p in zip(*parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, B, d) or (B, d) shared by all members -> (M, B, n_out)."""
        if x.dim() == 2:
            x = x.expand(self.w1.shape[0], *x.shape)
        return torch.baddbmm(self.b2, torch.relu(torch.baddbmm(self.b1, x, self.w1)), self.w2)

    def member(self, k: int) -> nn.Sequential:
        d_in, hidden = self.w1.shape[1:]
        model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, self.w2.shape[2]))
        with torch.no_grad():
            model[0].weight.copy_(self.w1[k].T)
            model[0].bias.copy_(self.b1[k, 0])
            model[2].weight.copy_(self.w2[k].T)
            model[2].bias.copy_(self.b2[k, 0])
        return model.eval()


def train_ensemble(
    x: torch.Tensor, y: torch.Tensor, keep: np.ndarray, seeds: list[int], recipe: Recipe
) -> EnsembleMLP:
    """Train one member per row of `keep` (M x n boolean masks) with seed `seeds[k]`.

    Members whose subsets differ in size take the same number of steps per epoch (that of the largest):
    smaller subsets are cycled, and padded positions beyond a member's own epoch carry zero weight, so
    each member sees each of its examples once per epoch, in batches of `batch_size`.
    """
    keep = np.asarray(keep, dtype=bool)
    members = [np.flatnonzero(row) for row in keep]
    sizes = np.array([len(m) for m in members])
    if (sizes == 0).any():
        raise ValueError("every member needs at least one training example")
    model = EnsembleMLP(seeds, x.shape[1], recipe.hidden, int(y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    rngs = [np.random.default_rng(int(s) + 7919) for s in seeds]
    size = int(sizes.max())
    steps = -(-size // recipe.batch_size)
    for _ in range(recipe.epochs):
        order = np.zeros((len(members), steps * recipe.batch_size), dtype=np.int64)
        weight = np.zeros((len(members), steps * recipe.batch_size), dtype=np.float32)
        for k, (m, r) in enumerate(zip(members, rngs)):
            # a member's epoch is split into the same number of batches as everyone's
            per_batch = -(-len(m) // steps)
            perm = m[r.permutation(len(m))]
            for b in range(steps):
                chunk = perm[b * per_batch : (b + 1) * per_batch]
                order[k, b * recipe.batch_size : b * recipe.batch_size + len(chunk)] = chunk
                weight[k, b * recipe.batch_size : b * recipe.batch_size + len(chunk)] = 1.0
        order_t, weight_t = torch.as_tensor(order), torch.as_tensor(weight)
        for start in range(0, steps * recipe.batch_size, recipe.batch_size):
            idx, w = (
                order_t[:, start : start + recipe.batch_size],
                weight_t[:, start : start + recipe.batch_size],
            )
            logits = model(x[idx])
            losses = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y[idx].reshape(-1), reduction="none"
            ).view(w.shape)
            # sum over members of each member's mean loss: every member gets its own mean-loss gradient
            loss = ((losses * w).sum(1) / w.sum(1).clamp(min=1)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def logits_of(model: EnsembleMLP, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def subset_logits(
    x: torch.Tensor,
    y: torch.Tensor,
    masks: np.ndarray,
    points: torch.Tensor,
    recipe: Recipe,
    seed: int = 0,
    chunk: int = 250,
) -> np.ndarray:
    """Logits on `points` of one model per subset mask (n_subsets x n_points x C): the outcomes a regression
    datamodel is fitted to (attribution.unlearning.datamodels.fit_regression_datamodel)."""
    out = []
    for start in range(0, len(masks), chunk):
        block = masks[start : start + chunk]
        seeds = list(range(seed + start, seed + start + len(block)))
        out.append(logits_of(train_ensemble(x, y, block, seeds, recipe), points))
    return np.concatenate(out)
