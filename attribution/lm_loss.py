"""Response-only causal-LM losses shared by training, influence tasks and TRAK outputs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from attribution.lm_data import IGNORE_INDEX

Reduction = Literal["mean", "sum"]


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood (B x T-1) of the next token and the mask of scored tokens."""
    shift_logits = logits[..., :-1, :].float()
    shift_labels = labels[..., 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.clamp(min=0).reshape(-1),
        reduction="none",
    ).view(shift_labels.shape)
    return nll * mask, mask


def example_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Per-example response loss (B,): mean (default) or sum of its response tokens' NLL."""
    nll, mask = token_nll(logits, labels)
    total = nll.sum(-1)
    if reduction == "sum":
        return total
    return total / mask.sum(-1).clamp(min=1)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Each token's share of the per-example loss (B x T), at the token's own position: entry t is the
    loss of *predicting* token t (from the logits at t-1), divided by the example's number of scored
    tokens for "mean"; 0 where no token is predicted. Rows sum to `example_loss(logits, labels, reduction)`.
    """
    nll, mask = token_nll(logits, labels)
    if reduction == "mean":
        nll = nll / mask.sum(-1, keepdim=True).clamp(min=1)
    return F.pad(nll, (1, 0))  # nothing predicts the first token


def forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
