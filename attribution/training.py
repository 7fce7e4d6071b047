"""Fine-tuning loops: SFT of a causal LM on response tokens, and a generic loop for any nn.Module.

Both are deterministic given `seed` (shuffling and dropout), support per-example loss weights (weight
0 removes an example, 2 counts it twice: the batch loss is mean_i(w_i * loss_i)) and stream batches.
The same loops retrain models for LDS, so attribution and its evaluation share one definition of
"training".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from attribution.lm_data import collate, encode_sft, pad_id
from attribution.lm_loss import Reduction, example_loss, forward_logits

PerExampleLoss = Callable[[nn.Module, Any], torch.Tensor]


def pick_device(device: str | None = None) -> torch.device:
    """`device` when given, else cuda when present, else cpu."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensor, or dicts / lists / tuples of them) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def train_module(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    dataset: Sequence[Any],
    *,
    collate_fn: Callable[[list[Any]], Any],
    epochs: int = 1,
    lr: float = 5e-4,
    batch_size: int = 8,
    seed: int = 0,
    weight_decay: float = 0.0,
    example_weights: Sequence[float] | None = None,
    optimizer: str = "adamw",
    max_grad_norm: float | None = 1.0,
    device: str | None = "cpu",
    progress: bool = False,
) -> nn.Module:
    """Train `model` in place on `dataset` and return it in eval mode.

    `loss_fn(model, batch)` returns the per-example losses (B,) of a collated batch.
    `optimizer` is "adamw" or "sgd" (plain full-batch-style gradient steps, used for convex checks).
    """
    if example_weights is not None and len(example_weights) != len(dataset):
        raise ValueError(f"example_weights has {len(example_weights)} entries for {len(dataset)} examples")
    dev = pick_device(device)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adamw' or 'sgd'")
    weights = (
        torch.ones(len(dataset))
        if example_weights is None
        else torch.tensor(list(example_weights), dtype=torch.float32)
    )
    order_gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout, if any
    steps = epochs * math.ceil(len(dataset) / batch_size)
    bar = _bar(steps, progress)
    for _ in range(epochs):
        order = torch.randperm(len(dataset), generator=order_gen).tolist()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            w = weights[idx].to(dev)
            if not bool((w != 0).any()):
                bar.update(1)
                continue
            batch = move_to_device(collate_fn([dataset[i] for i in idx]), dev)
            loss = (loss_fn(model, batch) * w).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def _bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="train", leave=False)


def sft_loss(reduction: Reduction = "mean") -> PerExampleLoss:
    """Per-example response-only loss of a causal LM on a collated SFT batch."""

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return example_loss(forward_logits(model, batch), batch["labels"], reduction)

    return loss


def encode_records(
    tokenizer: Any, records: Sequence[dict], max_length: int, use_chat_template: bool | None = None
) -> list[dict[str, torch.Tensor]]:
    """Encode records for SFT; offsets are dropped (training does not need them)."""
    out = []
    for rec in records:
        item = encode_sft(tokenizer, rec, max_length, use_chat_template)
        item.pop("offsets")
        out.append(item)
    return out


def finetune_causal_lm(
    model: nn.Module,
    tokenizer: Any,
    records: list[dict],
    *,
    epochs: int = 1,
    lr: float = 5e-4,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    example_weights: list[float] | None = None,
    device: str = "cpu",
    progress: bool = False,
    use_chat_template: bool | None = None,
    weight_decay: float = 0.0,
) -> nn.Module:
    """SFT a causal LM on `records` (loss on response tokens only, mean per example); eval mode out."""
    data = encode_records(tokenizer, records, max_length, use_chat_template)
    pid = pad_id(tokenizer)
    return train_module(
        model,
        sft_loss("mean"),
        data,
        collate_fn=lambda b: collate(b, pid),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        weight_decay=weight_decay,
        example_weights=example_weights,
        device=device,
        progress=progress,
    )
