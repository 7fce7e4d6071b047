"""Training on an assay export: the schedule and the loss weights, as trainers consume them.

An export (curation/exporter.py) carries two channels: how often each example is drawn (the rows of a
materialised export, in training order; or `copies` and a mixture schedule) and `loss_weight`. Here:

- `ScheduleSampler`: a torch Sampler drawing a dataset's rows step by step with the per-step group
  probabilities of `mixture_schedule.csv` (`curation.mixing.sample_steps`, the mix stage's own sampler),
  for an unmaterialised export; a materialised export is already in training order: read it sequentially.
- `WeightedLossCollator`: wraps a collator; passes each example's `loss_weight` on as a tensor and masks
  the labels of zero-weight examples, so that they add nothing to the loss or to its token count.
- `weighted_causal_lm_loss`: next-token cross-entropy, each example's token losses times its weight,
  summed and divided by the number of scored tokens (with all weights 1, exactly the model's own loss).
- `WeightedTrainer` (transformers) and `WeightedSFTTrainer` (TRL, optional: `pip install 'assay[train]'`):
  trainers that never shuffle (sequential order, or the given sampler) and multiply each example's loss by
  its `loss_weight`.
- `encode_export`: tokenises prompt-completion or chat records for the plain Trainer (prompt masked), with
  `attribution.lm_data.encode_sft`, the encoding attribution uses.

Typical use with TRL (a materialised prompt-completion export):

    train = datasets.load_dataset("exports/mine")["train"]
    trainer = WeightedSFTTrainer(model=model, args=SFTConfig(...), train_dataset=train,
                                 processing_class=tokenizer)
    trainer.train()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers
from torch.utils.data import Sampler, SequentialSampler

from curation import mixing
from curation.export import split_conversation

LOSS_WEIGHT = "loss_weight"
IGNORE_INDEX = -100


# ---- the schedule ----------------------------------------------------------------------------------


def read_schedule(path: str | Path) -> pd.DataFrame:
    """A mixture schedule (`mixture_schedule.csv`: step, group, tau, probability) as a steps x groups frame
    of probabilities."""
    long = pd.read_csv(path, dtype={"group": str})
    wide = long.pivot(index="step", columns="group", values="probability").fillna(0.0).sort_index()
    wide.columns = [str(c) for c in wide.columns]
    return wide


def _export_frame(folder: Path, split: str) -> pd.DataFrame:
    for name in (f"data/{split}.parquet", f"data/{split}.jsonl"):
        path = folder / name
        if path.is_file():
            return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
    if (folder / split).is_dir():
        import datasets

        return datasets.load_from_disk(str(folder))[split].to_pandas()
    raise FileNotFoundError(f"{folder} holds no {split} split of an assay export")


class ScheduleSampler(Sampler[int]):
    """Row indices, `batch_size` per step, whose groups follow a per-step mixture schedule.

    `groups`: the group of each dataset row (the export's `group` column); `schedule`: steps x groups
    probabilities (`read_schedule`). Within a group rows are drawn without replacement (reshuffled when the
    group is used up) unless `replace`. `copies` (the export's column): row i stands `copies[i]` times in its
    group's pool, so within a group rows are drawn in proportion to their copies, as the mix drew them (a
    row with 0 copies is never drawn). Deterministic for a seed; `draws` holds the sequence (step, slot,
    index, group)."""

    def __init__(
        self,
        groups: Sequence[str] | pd.Series | np.ndarray,
        schedule: pd.DataFrame,
        batch_size: int,
        seed: int = 0,
        replace: bool = False,
        copies: Sequence[int] | pd.Series | np.ndarray | None = None,
    ):
        labels = np.asarray(groups, dtype=object).astype(str)
        n_rows = len(labels)
        pool = np.arange(n_rows)
        if copies is not None:
            copies = np.asarray(copies, dtype=np.int64)
            if copies.shape != (n_rows,) or (copies < 0).any():
                raise ValueError("copies must give a non-negative count for every row")
            pool = np.repeat(pool, copies)  # the multiset the mix drew from, by row
            labels = labels[pool]
        unknown = sorted(set(labels) - set(map(str, schedule.columns)))
        if unknown:
            raise ValueError(
                f"groups {unknown} are not in the schedule ({', '.join(map(str, schedule.columns))})"
            )
        present = [g for g in schedule.columns if g in set(labels)]
        if schedule[[c for c in schedule.columns if c not in present]].to_numpy().any():
            raise ValueError("the schedule gives probability to a group that has no rows")
        self.n_rows = n_rows
        self.batch_size = int(batch_size)
        self.draws = mixing.sample_steps(
            labels, schedule[present], self.batch_size, seed=seed, replace=replace
        )
        self.draws["index"] = pool[self.draws["index"].to_numpy()]

    @classmethod
    def from_export(
        cls, folder: str | Path, batch_size: int, seed: int = 0, replace: bool = False, split: str = "train"
    ) -> ScheduleSampler:
        """The sampler for an unmaterialised export folder: its rows' groups and copies and its
        mixture_schedule.csv."""
        folder = Path(folder)
        frame = _export_frame(folder, split)
        if "step" in frame.columns:
            raise ValueError(
                f"{folder} is materialised: its rows are already in training order; read them in order"
            )
        return cls(
            frame["group"].astype(str),
            read_schedule(folder / "mixture_schedule.csv"),
            batch_size,
            seed,
            replace,
            frame["copies"] if "copies" in frame.columns else None,
        )

    @property
    def steps(self) -> int:
        return int(self.draws["step"].max()) + 1 if len(self.draws) else 0

    def __iter__(self):
        return iter(self.draws["index"].tolist())

    def __len__(self) -> int:
        return len(self.draws)


# ---- the loss weights ------------------------------------------------------------------------------


class WeightedLossCollator:
    """Wraps a collator: takes `loss_weight` out of each example, collates the rest, adds the weights as a
    float tensor (batch,) and sets the labels of zero-weight examples to -100. Examples without the column
    weigh 1."""

    def __init__(self, base: Callable[[list[dict[str, Any]]], dict[str, Any]], column: str = LOSS_WEIGHT):
        self.base, self.column = base, column

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [float(e.get(self.column, 1.0)) for e in examples]
        batch = self.base([{k: v for k, v in e.items() if k != self.column} for e in examples])
        w = torch.tensor(weights, dtype=torch.float32)
        labels = batch.get("labels")
        if labels is not None:
            if labels.shape[0] != len(weights):
                raise ValueError(
                    "loss weights need one row per example; padding-free or packed batches are not supported"
                )
            batch["labels"] = labels.masked_fill((w == 0)[:, None].expand_as(labels), IGNORE_INDEX)
        batch[self.column] = w
        return batch


def weighted_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_weight: torch.Tensor | None,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """sum over examples i and scored tokens t of loss_weight_i x CE(logits_i,t-1, label_i,t), divided by
    `num_items_in_batch` (the scored tokens of the whole accumulated batch, as the Trainer counts them) or
    else by this batch's scored tokens. With every weight 1 this is the model's own causal-LM loss."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    per_token = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    if loss_weight is not None:
        per_token = per_token * loss_weight.to(per_token.device, per_token.dtype)[:, None]
    count = num_items_in_batch if num_items_in_batch is not None else (shift_labels != IGNORE_INDEX).sum()
    return per_token.sum() / torch.as_tensor(count, device=per_token.device).clamp(min=1)


class _LossWeightMixin:
    """What both trainers share: the loss_weight column survives column removal and is collated, the
    order is never shuffled (sequential, or `train_sampler`)."""

    def _setup_weights(self, train_sampler: Sampler | None) -> None:
        self.train_sampler = train_sampler
        if not isinstance(self.data_collator, WeightedLossCollator):
            self.data_collator = WeightedLossCollator(self.data_collator)
        rows = getattr(train_sampler, "n_rows", None)
        if rows is not None and hasattr(self.train_dataset, "__len__") and rows != len(self.train_dataset):
            raise ValueError(
                f"the sampler indexes {rows} rows, the training dataset has {len(self.train_dataset)} "
                "(were examples dropped, e.g. truncated to nothing?)"
            )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        if LOSS_WEIGHT not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, LOSS_WEIGHT]

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler:
        if self.train_sampler is not None:
            return self.train_sampler
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


class WeightedTrainer(_LossWeightMixin, transformers.Trainer):
    """transformers' Trainer reading rows in order (or with `train_sampler`) and multiplying each example's
    loss by its `loss_weight` (`weighted_causal_lm_loss`). The dataset holds input_ids, labels (prompt
    tokens -100: see `encode_export`) and loss_weight; the default collator pads them."""

    def __init__(self, *args: Any, train_sampler: Sampler | None = None, **kwargs: Any):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("WeightedTrainer computes the loss itself; do not pass compute_loss_func")
        kwargs["compute_loss_func"] = self._weighted_loss
        if kwargs.get("data_collator") is None and kwargs.get("processing_class") is not None:
            kwargs["data_collator"] = transformers.DataCollatorForSeq2Seq(
                kwargs["processing_class"], padding=True, label_pad_token_id=IGNORE_INDEX
            )
        self._batch_weights: torch.Tensor | None = None
        super().__init__(*args, **kwargs)
        self._setup_weights(train_sampler)

    def _weighted_loss(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        return weighted_causal_lm_loss(outputs.logits, labels, self._batch_weights, num_items_in_batch)

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self._batch_weights = inputs.pop(LOSS_WEIGHT, None)
        try:
            return super().compute_loss(model, inputs, *args, **kwargs)
        finally:
            self._batch_weights = None


class _WeightedLogProbs:
    """The model, seen by TRL's loss: with the fused LM head its per-token log-probabilities come back
    multiplied by each example's weight (TRL's nll loss is their negative sum over the scored tokens)."""

    def __init__(self, model: Any, weights: torch.Tensor):
        self._model, self._weights = model, weights

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self._model(*args, **kwargs)
        if kwargs.get("fused_lm_head") and getattr(outputs, "log_probs", None) is not None:
            w = self._weights.to(outputs.log_probs.device, outputs.log_probs.dtype)
            outputs.log_probs = outputs.log_probs * w[:, None]
        return outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _split_conversation(row: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = split_conversation(list(row["messages"]), row.get("example_id"))
    return {"prompt": prompt, "completion": completion}


def conversation_as_prompt_completion(dataset: Any) -> Any:
    """A chat export's `messages` rows as TRL's conversational prompt-completion rows (prompt: the turns
    before the last, completion: the last assistant message): TRL then applies the chat template and
    puts the loss on the final response only, the tokens attribution scored and the curation weighed.
    On `messages` rows TRL would train on every turn (system prompt, user turns, earlier answers).
    Datasets without `messages`, or with prompt / completion already, are returned as they are."""
    columns = getattr(dataset, "column_names", None) or []
    if "messages" not in columns or "prompt" in columns or "completion" in columns:
        return dataset
    return dataset.map(_split_conversation, remove_columns=["messages"])


def _refuse_dropped_rows(given: Any, prepared: Any, config: Any) -> None:
    """TRL drops the rows whose trained tokens all fall beyond `max_length` (a long prompt with
    truncation_mode "keep_start"). On an export that silently removes curated examples and shifts a
    materialised training order, so it is an error naming the first such example."""
    if not (hasattr(given, "__len__") and hasattr(prepared, "__len__")) or len(given) == len(prepared):
        return
    dropped = len(given) - len(prepared)
    first = ""
    names = getattr(given, "column_names", None) or []
    if "example_id" in names and "example_id" in (getattr(prepared, "column_names", None) or []):
        kept = set(prepared["example_id"])
        missing = [i for i in given["example_id"] if i not in kept]
        first = f" (first: example {missing[0]!r})" if missing else ""
    limit = getattr(config, "max_length", None)
    raise ValueError(
        f"TRL dropped {dropped} of {len(given)} rows whose trained tokens were all cut by max_length={limit}"
        f"{first}; raise max_length or set truncation_mode='keep_end', so every row of the export trains"
    )


def _weighted_sft_trainer() -> type:
    """WeightedSFTTrainer, built on first use: TRL is optional (`pip install 'assay[train]'`)."""
    try:
        from trl import SFTTrainer
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("WeightedSFTTrainer needs TRL: pip install 'assay[train]'") from exc

    class WeightedSFTTrainer(_LossWeightMixin, SFTTrainer):
        """TRL's SFTTrainer reading rows in order (or with `train_sampler`) and multiplying each example's
        loss by its `loss_weight`: TRL's negative log-likelihood, each scored token's term times its
        example's weight, over the scored tokens of the batch. Any TRL dataset format works (messages,
        prompt / completion, text); a chat export's `messages` rows are trained as conversational
        prompt-completion (`conversation_as_prompt_completion`: the loss on the final response only) unless
        `completion_only=False`; packing, padding-free batches, DFT loss, label smoothing and a dataset
        shuffle are refused (they would mix examples' weights or the order)."""

        def __init__(
            self,
            *args: Any,
            train_sampler: Sampler | None = None,
            completion_only: bool = True,
            **kwargs: Any,
        ):
            if completion_only and kwargs.get("train_dataset") is not None:
                kwargs["train_dataset"] = conversation_as_prompt_completion(kwargs["train_dataset"])
            config = kwargs.get("args")
            if config is not None:
                refused = {
                    "packing": getattr(config, "packing", False),
                    "padding_free": getattr(config, "padding_free", False),
                    "shuffle_dataset": getattr(config, "shuffle_dataset", False),
                    "loss_type='dft'": getattr(config, "loss_type", "nll") != "nll",
                    "label_smoothing_factor": getattr(config, "label_smoothing_factor", 0) > 0,
                }
                on = [name for name, value in refused.items() if value]
                if on:
                    raise ValueError(f"WeightedSFTTrainer cannot apply loss weights with {', '.join(on)}")
            if kwargs.get("compute_loss_func") is not None:
                raise ValueError("WeightedSFTTrainer computes the loss itself; do not pass compute_loss_func")
            given = kwargs.get("train_dataset")
            super().__init__(*args, **kwargs)
            _refuse_dropped_rows(given, self.train_dataset, self.args)
            self._setup_weights(train_sampler)

        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            weights = inputs.pop(LOSS_WEIGHT, None)
            if weights is not None:
                model = _WeightedLogProbs(model, weights)
            return super().compute_loss(model, inputs, *args, **kwargs)

    return WeightedSFTTrainer


def __getattr__(name: str) -> Any:
    if name == "WeightedSFTTrainer":
        cls = _weighted_sft_trainer()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# ---- tokenising an export for the plain Trainer ------------------------------------------------------


def encode_export(
    dataset: Any, tokenizer: Any, max_length: int = 1024, use_chat_template: bool | None = None
) -> Any:
    """A `datasets.Dataset` of prompt-completion or chat records tokenised for `WeightedTrainer`: input_ids,
    attention_mask, labels (prompt tokens -100) and loss_weight (1 where the export has none); rows in the
    same order. `attribution.lm_data.encode_sft` encodes (a chat template when the tokenizer has one)."""
    from attribution.lm_data import encode_sft

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        if row.get("messages"):
            record = {"messages": row["messages"]}
        elif "prompt" in row and "completion" in row:
            record = {"prompt": row["prompt"], "response": row["completion"]}
        else:
            raise ValueError(
                "encode_export takes chat (messages) or prompt_completion (prompt, completion) records"
            )
        enc = encode_sft(tokenizer, record, max_length, use_chat_template=use_chat_template)
        out = {k: enc[k].tolist() for k in ("input_ids", "attention_mask", "labels")}
        out[LOSS_WEIGHT] = float(row.get(LOSS_WEIGHT, 1.0))
        return out

    return dataset.map(encode, remove_columns=list(dataset.column_names))
