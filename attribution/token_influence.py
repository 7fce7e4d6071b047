"""Exact token-level influence by forward-mode differentiation.

Token t of a training example has influence `-grad f^T H^-1 grad l_t`, with l_t the loss of
*predicting* token t (METHODS.md). With v = H^-1 grad(-f) (kronfluence's preconditioned query gradient
over the tracked modules), that is `<v, grad l_t>` = the directional derivative of l_t along v. One
forward-mode pass (`torch.func.jvp`) of the per-token loss vector in direction v gives every token of a
batch at once, for about the cost of a forward and a half; several directions share one primal forward
(`torch.func.vmap` over the tangents). By linearity an example's token influences sum to `<v, grad L>`,
its example score, when the per-token losses are the token's shares of the training loss (divided by
the token count for a mean; `attribution.lm_loss.token_losses`).

Per-token gradients would give the same numbers at one backward pass per token; kronfluence's own
per-token scores are a per-*position* split of the parameter gradient (position p mostly carries the
loss of token p+1, and prompt positions carry part of the score): not this definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from kronfluence.module.tracked_module import TrackedModule
from torch import nn

from attribution.tasks import FunctionModule, PerToken

DIRECTIONS_PER_PASS = 4  # tangents propagated together: activation memory grows with it


def low_rank(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mix, basis) with weights = mix @ basis and as few basis rows as weights' rank.

    Token influence is linear in the direction, so rows of `weights` (target groups as weighted sums of
    targets) that are combinations of others need no pass of their own: 'all' is a mix of the domain
    groups. Full-rank weights come back as (identity, weights), untouched.
    """
    weights = np.asarray(weights, dtype=np.float64)
    rank = np.linalg.matrix_rank(weights)
    if rank == weights.shape[0]:
        return np.eye(rank), weights
    u, s, vt = np.linalg.svd(weights, full_matrices=False)
    return u[:, :rank] * s[:rank], vt[:rank]


def parameter_tangents(model: nn.Module, directions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kronfluence's per-module direction matrices (k x d_out x d_in, plus a last column for the bias)
    as tangents (k x parameter shape) of the parameters of `model` (a kronfluence-prepared model)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for module in model.modules():
        if not isinstance(module, TrackedModule) or module.name not in directions:
            continue
        layer, mat = module.original_module, directions[module.name]
        if getattr(layer, "groups", 1) != 1:
            raise ValueError(f"token-level influence: grouped convolution {module.name} is not supported")
        weight = layer.weight
        out[names[id(weight)]] = mat[..., : weight[0].numel()].reshape(mat.shape[0], *weight.shape)
        if layer.bias is not None:
            out[names[id(layer.bias)]] = mat[..., -1]
    return {n: t.to(dtype=dict(model.named_parameters())[n].dtype) for n, t in out.items()}


@torch.no_grad()
def token_influence(
    model: nn.Module, token_loss: PerToken, batch: Any, tangents: dict[str, torch.Tensor]
) -> torch.Tensor:
    """(k x B x T): `<grad l_t, tangent_k>` for every token t of the batch, l = token_loss(model, batch),
    by forward-mode AD (forward AD does not depend on grad mode; no_grad keeps reverse graphs away)."""
    wrapper = FunctionModule(model, token_loss)
    named = dict(model.named_parameters())
    primals = {f"model.{n}": named[n].detach() for n in tangents}

    def loss_at(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(wrapper, params, (batch,))

    def along(tangent: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.jvp(loss_at, (primals,), ({f"model.{n}": t for n, t in tangent.items()},))[1]

    k = next(iter(tangents.values())).shape[0]
    parts = [
        torch.func.vmap(along)({n: t[a : a + DIRECTIONS_PER_PASS] for n, t in tangents.items()})
        for a in range(0, k, DIRECTIONS_PER_PASS)
    ]
    return torch.cat(parts)
