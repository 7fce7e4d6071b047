"""Unlearning a causal LM fine-tuned with SFT: DMM on per-token log-probabilities of the reference
response, Oracle Matching toward a retrained model's, and the gradient ascent / descent baselines.

DMM's outputs for a language model are the response tokens' log-probabilities log p(y_t | y_<t, prompt)
(prompt tokens are not scored, exactly as in SFT). Attribution gives one number per (train, target): the
effect on the response's mean log-likelihood (kronfluence, target_reduction "mean"), its sum ("sum"),
or TRAK's mean per-token margin log p - log(1 - p). Our choice for turning that one number into a
target per token: a shift of the mean moves every token's log-probability by the same amount; a shift
of the sum is spread evenly over the tokens; a margin shift moves token t's log-probability by
(1 - p_t) x the shift (d log p = (1 - p) d margin). Targets are capped at 0, the largest log-probability.

Batches: every loop here groups examples of similar length into one batch (`length_grouped_order`, the
Trainer's `group_by_length`): random batches of 32 pad to their longest example, and on the demo corpus
process 2.18x the real tokens. `padded_tokens` counts what an order costs. Grouping decides which
examples share an optimiser step, so it is off for epochs of few batches (below); there, and in every
pass, a batch is still run as sub-batches of similar length (`length_buckets`) whose per-example
losses are summed: the same loss and gradient up to float rounding (each example's outputs do not
depend on the padding after it), with a fraction of the padding (the quick demo's DMM fine-tuning
processed 2.35x its real tokens in random batches of 32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from attribution.lm_data import IGNORE_INDEX, collate, pad_id
from attribution.lm_loss import example_loss, forward_logits
from attribution.training import encode_records
from attribution.unlearning.loop import OptimConfig, optimise

SHIFT_KINDS = ("mean", "sum", "margin")


def token_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each next response token (B x T-1) and the mask of scored positions."""
    logits = forward_logits(model, batch)[..., :-1, :].float()
    labels = batch["labels"][..., 1:]
    mask = labels != IGNORE_INDEX
    logp = torch.gather(torch.log_softmax(logits, -1), -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


class EncodedSet:
    """SFT-encoded records with batched access by index."""

    def __init__(self, tokenizer: Any, records: Sequence[dict], max_length: int):
        self.items = encode_records(tokenizer, list(records), max_length)
        self.pad = pad_id(tokenizer)
        # tokens per record (prompt and response)
        self.lengths = np.array([int(item["input_ids"].shape[0]) for item in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, idx: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        out = collate([self.items[int(i)] for i in idx], self.pad)
        return {k: v.to(device) for k, v in out.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# A sub-batch holds examples within this factor of its longest: at most 20% of its tokens are padding.
BUCKET_RATIO = 1.25


def length_buckets(lengths: Sequence[int], ratio: float | None = BUCKET_RATIO) -> list[np.ndarray]:
    """Positions 0..len(lengths)-1 cut into sub-batches of similar length: longest first, a new sub-batch
    whenever the next example is shorter than the current sub-batch's longest / `ratio`. `ratio` None:
    one sub-batch of everything (the unbucketed pass, in its own order)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if ratio is None or len(lengths) == 0:
        return [np.arange(len(lengths))] if len(lengths) else []
    order = np.argsort(-lengths, kind="stable")
    out, start = [], 0
    for k in range(1, len(order) + 1):
        if k == len(order) or lengths[order[k]] * ratio < lengths[order[start]]:
            out.append(order[start:k])
            start = k
    return out


def bucketed_sum(
    data: EncodedSet,
    rows: Sequence[int],
    per_example: Callable[[dict[str, torch.Tensor], np.ndarray], torch.Tensor],
    device: torch.device,
    ratio: float | None = BUCKET_RATIO,
) -> torch.Tensor:
    """sum_k per_example(batch of rows[k])[k] over the rows, computed on `length_buckets` of them.
    `per_example(batch, positions)` returns one value per row of the batch; `positions` are the rows'
    places in `rows`."""
    rows = np.asarray(rows, dtype=np.int64)
    parts = [
        per_example(data.batch(rows[bucket], device), bucket).sum()
        for bucket in length_buckets(data.lengths[rows], ratio)
    ]
    return torch.stack(parts).sum() if parts else torch.zeros((), device=device)


def bucketed_collate(pad_token_id: int, ratio: float | None = BUCKET_RATIO) -> Callable[[list[dict]], dict]:
    """A collate function for `attribution.training.train_module`: the batch's SFT items as sub-batches of
    similar length (`length_buckets`), each padded to its own longest, with their places in the batch;
    `bucketed_example_loss` is its per-example loss."""

    def collate_buckets(items: list[dict]) -> dict:
        groups = length_buckets([int(item["input_ids"].shape[0]) for item in items], ratio)
        return {
            "buckets": [collate([items[int(k)] for k in group], pad_token_id) for group in groups],
            "positions": [torch.as_tensor(group, dtype=torch.long) for group in groups],
        }

    return collate_buckets


def bucketed_example_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Per-example SFT loss (mean response NLL) of a `bucketed_collate` batch, in the batch's order: what
    `attribution.training.sft_loss("mean")` gives on the batch padded as one, up to rounding."""
    losses = torch.cat([example_loss(forward_logits(model, b), b["labels"]) for b in batch["buckets"]])
    order = torch.cat([p.to(losses.device) for p in batch["positions"]])
    return torch.empty_like(losses).index_copy(0, order, losses)


def length_grouped_order(
    lengths: Sequence[int],
    batch_size: int,
    group_by_length: bool = True,
    batches_per_group: int = 50,
    bucket_ratio: float = 1.1,
    min_batches: int = 8,
) -> Callable[[np.random.Generator], np.ndarray] | None:
    """An `epoch_order` for `optimise` over items of these lengths: transformers'
    `get_length_grouped_indices` (the Trainer's group_by_length: a random permutation cut into groups
    of `batches_per_group` batches, each group sorted by length), on lengths rounded to buckets that
    grow by `bucket_ratio` (10%), then the batches in random order. Seeded from the loop's generator,
    so a run is reproducible. None (plain random batches) when `group_by_length` is False or an epoch
    has fewer than `min_batches` (8) batches.

    Why each choice: the Trainer's default group (4 groups at least) is too small for unlearning's few
    hundred examples (on the demo corpus' 331 it still processes 2.1x the real tokens in batches of
    32; one group of all of them 1.3x). Sorting by exact length would put DMM's five repeats of a
    forget example side by side, in one batch; within a bucket the order stays random, so repeats mix
    with other examples of about their length. A sorted group runs from the longest batch to the
    shortest, so the batch order is shuffled. Few batches: grouping then decides most of each batch's
    composition (on the LM unlearning test's 28 items in 2 batches it put the forget repeats together
    and raised the retain loss's drift from 0.19-0.21 to 0.22-0.24 nats over 3 seeds), and padding
    costs little."""
    if not group_by_length or len(lengths) < min_batches * batch_size:
        return None
    from transformers.trainer_pt_utils import get_length_grouped_indices

    buckets = [int(np.floor(np.log(max(int(n), 1)) / np.log(bucket_ratio))) for n in lengths]

    def order(rng: np.random.Generator) -> np.ndarray:
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        flat = np.asarray(
            get_length_grouped_indices(buckets, batch_size, batches_per_group, generator=generator),
            dtype=np.int64,
        )
        batches = np.split(flat, range(batch_size, len(flat), batch_size))
        return np.concatenate([batches[i] for i in rng.permutation(len(batches))]) if batches else flat

    return order


def padded_tokens(lengths: Sequence[int], order: np.ndarray, batch_size: int) -> int:
    """Tokens a pass over `order` processes in batches of `batch_size`, each padded to its longest."""
    lengths = np.asarray(lengths)[np.asarray(order)]
    return int(sum(len(b) * b.max() for b in np.split(lengths, range(batch_size, len(lengths), batch_size))))


def eval_batches(data: EncodedSet, batch_size: int, ratio: float | None = BUCKET_RATIO) -> list[np.ndarray]:
    """Record indices in batches of at most `batch_size` for a pass over every record: consecutive
    records, or (`ratio` given) the records sorted by length, each batch within `ratio` of its longest."""
    if ratio is None:
        return [np.arange(s, min(s + batch_size, len(data))) for s in range(0, len(data), batch_size)]
    return [
        b[s : s + batch_size]
        for b in length_buckets(data.lengths, ratio)
        for s in range(0, len(b), batch_size)
    ]


@torch.no_grad()
def per_token_logprobs(
    model: nn.Module, data: EncodedSet, batch_size: int = 16, ratio: float | None = BUCKET_RATIO
) -> list[np.ndarray]:
    """Each record's response-token log-probabilities (a 1-D array per record), in record order."""
    model.eval()
    out: list[np.ndarray] = [np.zeros(0)] * len(data)
    for idx in eval_batches(data, batch_size, ratio):
        logp, mask = token_logprobs(model, data.batch(idx, _device(model)))
        for k, row, m in zip(idx, logp, mask):
            out[int(k)] = row[m].double().cpu().numpy()
    return out


@torch.no_grad()
def mean_losses(
    model: nn.Module, data: EncodedSet, batch_size: int = 16, ratio: float | None = BUCKET_RATIO
) -> np.ndarray:
    """Per-record SFT loss (mean NLL over response tokens), as training minimises it, in record order."""
    model.eval()
    out = np.zeros(len(data))
    for idx in eval_batches(data, batch_size, ratio):
        batch = data.batch(idx, _device(model))
        out[idx] = example_loss(forward_logits(model, batch), batch["labels"]).double().cpu().numpy()
    return out


def token_shifts(
    base: Sequence[np.ndarray], removal_effect: np.ndarray, kind: str = "mean"
) -> list[np.ndarray]:
    """How much each response token's log-probability drops for each point's removal effect (see the
    module docstring for the three kinds)."""
    if kind not in SHIFT_KINDS:
        raise ValueError(f"unknown shift kind {kind!r}; use one of {', '.join(SHIFT_KINDS)}")
    out = []
    for logp, effect in zip(base, np.asarray(removal_effect, dtype=np.float64)):
        if kind == "mean":
            out.append(np.full_like(logp, effect))
        elif kind == "sum":
            out.append(np.full_like(logp, effect / max(1, len(logp))))
        else:
            out.append((1.0 - np.exp(logp)) * effect)
    return out


def dmm_token_targets(
    base: Sequence[np.ndarray], removal_effect: np.ndarray, kind: str = "mean"
) -> list[np.ndarray]:
    """Per-token DMM targets: base log-probabilities minus the removal effect's shifts, capped at 0."""
    return [
        np.minimum(logp - shift, 0.0) for logp, shift in zip(base, token_shifts(base, removal_effect, kind))
    ]


def match_token_logprobs(
    model: nn.Module,
    data: EncodedSet,
    targets: Sequence[np.ndarray],
    sequence: np.ndarray,
    optim: OptimConfig,
    group_by_length: bool = True,
) -> nn.Module:
    """Fine-tune so the response tokens' log-probabilities of data[sequence[k]] approach targets[sequence[k]]:
    squared error, mean over each example's tokens, then over the batch (batches of similar lengths
    unless `group_by_length` is False)."""
    sequence = np.asarray(sequence, dtype=np.int64)
    order = length_grouped_order(data.lengths[sequence], optim.batch_size, group_by_length)
    return optimise(
        model,
        len(sequence),
        lambda idx: matching_loss(model, data, targets, sequence[idx]),
        optim,
        epoch_order=order,
    )


def matching_loss(
    model: nn.Module,
    data: EncodedSet,
    targets: Sequence[np.ndarray],
    rows: Sequence[int],
    ratio: float | None = BUCKET_RATIO,
) -> torch.Tensor:
    """DMM's batch loss on data[rows]: per example the mean over its response tokens of (log p - target)^2,
    then the mean over the rows (computed on sub-batches of similar length, see `length_buckets`)."""
    rows = np.asarray(rows, dtype=np.int64)
    device = _device(model)

    def per_example(batch: dict[str, torch.Tensor], positions: np.ndarray) -> torch.Tensor:
        logp, mask = token_logprobs(model, batch)
        want = torch.zeros_like(logp)
        for r, k in enumerate(rows[positions]):
            want[r, mask[r]] = torch.as_tensor(targets[int(k)], dtype=logp.dtype, device=device)
        err = ((logp - want) ** 2) * mask
        return err.sum(-1) / mask.sum(-1).clamp(min=1)

    return bucketed_sum(data, rows, per_example, device, ratio) / max(1, len(rows))


def sft_batch_loss(
    model: nn.Module, data: EncodedSet, rows: Sequence[int], ratio: float | None = BUCKET_RATIO
) -> torch.Tensor:
    """The SFT loss of data[rows]: the mean of the examples' mean response NLL (on sub-batches of similar
    length, see `length_buckets`)."""
    rows = np.asarray(rows, dtype=np.int64)

    def per_example(batch: dict[str, torch.Tensor], _: np.ndarray) -> torch.Tensor:
        return example_loss(forward_logits(model, batch), batch["labels"])

    return bucketed_sum(data, rows, per_example, _device(model), ratio) / max(1, len(rows))


def lm_gradient_ascent(
    model: nn.Module, data: EncodedSet, forget: np.ndarray, optim: OptimConfig, group_by_length: bool = True
) -> nn.Module:
    forget = np.asarray(forget, dtype=np.int64)
    order = length_grouped_order(data.lengths[forget], optim.batch_size, group_by_length)
    return optimise(
        model, len(forget), lambda idx: -sft_batch_loss(model, data, forget[idx]), optim, epoch_order=order
    )


def lm_gradient_descent(
    model: nn.Module, data: EncodedSet, retain: np.ndarray, optim: OptimConfig, group_by_length: bool = True
) -> nn.Module:
    retain = np.asarray(retain, dtype=np.int64)
    order = length_grouped_order(data.lengths[retain], optim.batch_size, group_by_length)
    return optimise(
        model, len(retain), lambda idx: sft_batch_loss(model, data, retain[idx]), optim, epoch_order=order
    )


def lm_ascent_descent(
    model: nn.Module,
    data: EncodedSet,
    forget: np.ndarray,
    retain: np.ndarray,
    optim: OptimConfig,
    ascent_weight: float = 1.0,
    group_by_length: bool = True,
) -> nn.Module:
    """Each step: a retain batch's SFT loss minus `ascent_weight` x a forget batch's (cycling through F;
    the retain batches are grouped by length unless `group_by_length` is False)."""
    forget, retain = np.asarray(forget, dtype=np.int64), np.asarray(retain, dtype=np.int64)
    state = {"pos": 0}

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        size = min(len(idx), len(forget))
        rows = [forget[(state["pos"] + k) % len(forget)] for k in range(size)]
        state["pos"] += size
        return sft_batch_loss(model, data, retain[idx]) - ascent_weight * sft_batch_loss(model, data, rows)

    order = length_grouped_order(data.lengths[retain], optim.batch_size, group_by_length)
    return optimise(model, len(retain), batch_loss, optim, epoch_order=order)
