"""What the scorers consume: encoded train / target items, per-example loss and target functions,
and for the segment and token levels, each training item's per-token loss, response text and the
positions of its predicted tokens.

Two builders: `prepare_lm` (a causal LM + tokenizer + SFT records) and `prepare_module` (any nn.Module
with a `FunctionTask`, on items the user's collate function batches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from attribution.lm_data import IGNORE_INDEX, collate, encode_sft, pad_id
from attribution.lm_loss import Reduction, example_loss, forward_logits
from attribution.tasks import CausalLMTask, FunctionTask, select_modules


@dataclass
class ItemText:
    """The response of one training item and its *predicted* tokens (those with a loss term): where
    they sit in the encoded sequence, in the response, and in its text."""

    text: str
    positions: np.ndarray  # sequence positions of the predicted response tokens
    offsets: np.ndarray  # (n, 2) character spans of those tokens in `text`
    token_ids: np.ndarray
    tokens: list[str]
    response_index: np.ndarray  # index of each among the response's tokens (0 = its first token)


@dataclass
class Prepared:
    model: nn.Module
    train_items: list[Any]
    target_items: list[Any]
    train_ids: list[str]
    target_ids: list[str]
    collate_fn: Callable[[list[Any]], Any]
    loss: Callable[[nn.Module, Any], torch.Tensor]  # per-example training loss
    # (B x T): each token's share of `loss`, at the sequence position of the token it predicts; rows
    # sum to `loss`. Token and segment levels need it.
    token_loss: Callable[[nn.Module, Any], torch.Tensor] | None
    target: Callable[[nn.Module, Any], torch.Tensor]  # per-example f, higher is better
    kron_task: Any
    tracked_modules: list[str] | None
    empirical_fisher: bool = False
    trak_output: Any = None
    to_tuple: Callable[[Any], tuple] = tuple
    texts: list[ItemText] | None = None
    target_groups: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # kronfluence fails on an empty query set with a KeyError deep inside; say what is wrong instead
        if not self.target_items:
            raise ValueError("no target examples to attribute to (the target set is empty)")
        if not self.train_items:
            raise ValueError("no training examples to attribute (the training set is empty)")

    def param_names(self) -> list[str] | None:
        """Parameter names of the tracked modules (None: all parameters)."""
        if self.tracked_modules is None:
            return None
        mods = set(self.tracked_modules)
        return [n for n, p in self.model.named_parameters() if n.rsplit(".", 1)[0] in mods]


def target_groups(
    target_records: Sequence[dict] | None, group_by: Sequence[str] | str | None, n_targets: int
) -> dict[str, list[int]]:
    """'all' plus one group per value of each `group_by` column, e.g. 'domain=math'."""
    groups = {"all": list(range(n_targets))}
    columns = [group_by] if isinstance(group_by, str) else list(group_by or [])
    for col in columns:
        for i, rec in enumerate(target_records or []):
            value = rec.get(col)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            groups.setdefault(f"{col}={value}", []).append(i)
    return groups


def _ids(records: Sequence[dict], prefix: str) -> list[str]:
    def one(i: int, r: dict) -> str:
        for key in ("example_id", "id"):
            if r.get(key) is not None:
                return str(r[key])
        return f"{prefix}{i}"

    ids = [one(i, r) for i, r in enumerate(records)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate example ids among the {prefix.rstrip('_')} records")
    return ids


def _item_text(tokenizer: Any, record: dict, enc: dict[str, torch.Tensor]) -> ItemText:
    from attribution.lm_data import split_record

    _, response = split_record(record)
    resp = np.nonzero((enc["labels"] != IGNORE_INDEX).numpy())[0]
    predicted = resp > 0  # a token at sequence position 0 has no loss term: nothing predicts it
    positions, index = resp[predicted], np.arange(len(resp))[predicted]
    offsets = enc["offsets"].numpy()[positions]
    ids = enc["input_ids"].numpy()[positions]
    # A token's text is its span of the response (exact, even for partial UTF-8 byte tokens); tokens
    # outside the response (end of turn, eos) are decoded.
    tokens = [response[a:b] if b > a else tokenizer.decode([int(t)]) for (a, b), t in zip(offsets, ids)]
    return ItemText(response, positions, offsets, ids, tokens, index)


def prepare_lm(
    model: nn.Module,
    tokenizer: Any,
    train_records: Sequence[dict],
    target_records: Sequence[dict],
    *,
    max_length: int = 512,
    use_chat_template: bool | None = None,
    modules: Any = "mlp",
    train_reduction: Reduction = "mean",
    target_reduction: Reduction = "mean",
    group_by: Sequence[str] | str | None = ("domain",),
    only_correct: bool = False,
    max_new_tokens: int = 256,
) -> Prepared:
    """A causal LM on SFT records (loss on response tokens, chat template when the tokenizer has one).

    `only_correct`: keep only the targets the model answers correctly (greedy generation of at most
    `max_new_tokens`; attribution.correctness), the target f of Infra (METHODS.md).
    """
    from attribution.lm_loss import token_losses
    from attribution.trak_adapter import CausalLMModelOutput, lm_batch

    if only_correct:
        from attribution.correctness import correct_targets

        target_records = correct_targets(model, tokenizer, target_records, max_new_tokens, use_chat_template)
    enc_train = [encode_sft(tokenizer, r, max_length, use_chat_template) for r in train_records]
    enc_target = [encode_sft(tokenizer, r, max_length, use_chat_template) for r in target_records]
    texts = [_item_text(tokenizer, r, e) for r, e in zip(train_records, enc_train)]
    strip = lambda e: {k: v for k, v in e.items() if k != "offsets"}
    pid = pad_id(tokenizer)
    tracked = select_modules(model, modules)

    def loss(m: nn.Module, b: dict) -> torch.Tensor:
        return example_loss(forward_logits(m, b), b["labels"], train_reduction)

    def target(m: nn.Module, b: dict) -> torch.Tensor:
        return -example_loss(forward_logits(m, b), b["labels"], target_reduction)

    def token_loss(m: nn.Module, b: dict) -> torch.Tensor:
        return token_losses(forward_logits(m, b), b["labels"], train_reduction)

    return Prepared(
        model=model,
        train_items=[strip(e) for e in enc_train],
        target_items=[strip(e) for e in enc_target],
        train_ids=_ids(train_records, "train_"),
        target_ids=_ids(target_records, "target_"),
        collate_fn=lambda b: collate(b, pid),
        loss=loss,
        token_loss=token_loss,
        target=target,
        kron_task=CausalLMTask(tracked, train_reduction, target_reduction),
        tracked_modules=tracked,
        trak_output=CausalLMModelOutput(),
        to_tuple=lm_batch,
        texts=texts,
        target_groups=target_groups(target_records, group_by, len(target_records)),
    )


def prepare_module(
    model: nn.Module,
    task: FunctionTask,
    train_items: Sequence[Any],
    target_items: Sequence[Any],
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    train_ids: Sequence[str] | None = None,
    target_ids: Sequence[str] | None = None,
    train_tokens: Sequence[Sequence[str]] | None = None,
    target_groups_: dict[str, list[int]] | None = None,
    trak_output: Any = None,
    to_tuple: Callable[[Any], tuple] = tuple,
) -> Prepared:
    """Any nn.Module. With `train_tokens` (token strings per train item, aligned with the T axis of
    `task.token_loss`) and a `task.token_loss`, the segment and token levels work too."""
    texts = None
    if train_tokens is not None:
        texts = []
        for toks in train_tokens:
            ends = np.cumsum([len(t) for t in toks])
            offsets = (
                np.stack([ends - np.array([len(t) for t in toks]), ends], axis=1)
                if toks
                else np.zeros((0, 2))
            )
            texts.append(
                ItemText(
                    "".join(toks),
                    np.arange(len(toks)),
                    offsets.astype(np.int64),
                    np.full(len(toks), -1),
                    list(toks),
                    np.arange(len(toks)),
                )
            )
    n_targets = len(target_items)
    return Prepared(
        model=model,
        train_items=list(train_items),
        target_items=list(target_items),
        train_ids=[str(i) for i in (train_ids if train_ids is not None else range(len(train_items)))],
        target_ids=[str(i) for i in (target_ids if target_ids is not None else range(n_targets))],
        collate_fn=collate_fn or torch.utils.data.default_collate,
        loss=task.loss,
        token_loss=task.token_loss,
        target=task.target,
        kron_task=task,
        tracked_modules=task.tracked_modules,
        empirical_fisher=task.empirical_fisher,
        trak_output=trak_output,
        to_tuple=to_tuple,
        texts=texts,
        target_groups=target_groups_ or {"all": list(range(n_targets))},
    )
