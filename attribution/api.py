"""Python API: `attribute(model, train, targets, method=..., level=...)`.

- a Hugging Face causal LM directory (or an already-loaded causal LM plus `tokenizer=`), with SFT
  records (`prompt`/`response` or `messages`): loss on response tokens, chat template when present;
- any torch nn.Module with `task=FunctionTask(loss, target)` (or `classification_task()`), on items
  its collate function batches.

Scores follow one sign convention: positive = helpful (upweighting the training example raises the
target's log-likelihood / f). See attribution/tasks.py.

Token level (kronfluence methods): a row is the influence of one training token's own loss term, the
loss of *predicting* that token, `-grad f^T H^-1 grad l_t` (attribution/token_influence.py); an example's
token rows sum to its example score (averaged like the row's target group), and a segment is the sum of
its tokens. Prompt tokens have no loss term and no row; a response cut by max_length has rows only for
the tokens kept.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from attribution.engine import Levels, ShardScorer, check_level, iter_shard_frames, method_config
from attribution.sources import Prepared, prepare_lm, prepare_module
from attribution.tasks import FunctionTask
from attribution.training import pick_device


@dataclass
class Attribution:
    """Scores at the requested level; coarser levels come along (token -> segment -> example)."""

    scores: pd.DataFrame  # train_id, target_id, score
    segment_scores: pd.DataFrame | None = None  # train_id, target_id (group), segment, text, ..., score
    # train_id, target_id (group), position (in the response), token_id, token, char_start, char_end, score
    token_scores: pd.DataFrame | None = None

    def matrix(self) -> pd.DataFrame:
        """train x target score matrix."""
        return self.scores.pivot(index="train_id", columns="target_id", values="score")


def load_causal_lm(model_dir: str | Path, device: torch.device | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a Hugging Face directory, eager attention (torch.func needs it)."""
    from transformers import AutoModelForCausalLM

    from attribution.lm_data import load_tokenizer

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    return model.to(device or "cpu").eval(), tokenizer


def _records(data: Any) -> list[dict]:
    if isinstance(data, pd.DataFrame):
        return data.to_dict("records")
    return [dict(r) for r in data]


def prepare(
    model: Any,
    train: Any,
    targets: Any,
    *,
    tokenizer: Any = None,
    task: FunctionTask | None = None,
    device: torch.device | None = None,
    **kw: Any,
) -> Prepared:
    """Build what the scorers need from either kind of input (see module docstring)."""
    if task is not None:
        if kw.get("only_correct"):
            raise ValueError(
                "only_correct needs a causal LM (it generates answers); filter the targets first"
            )
        keys = ("collate_fn", "train_ids", "target_ids", "train_tokens", "trak_output", "to_tuple")
        extra = {k: kw[k] for k in keys if k in kw}
        if "target_groups" in kw:
            extra["target_groups_"] = kw["target_groups"]
        return prepare_module(model, task, train, targets, **extra)
    if isinstance(model, (str, Path)):
        model, loaded_tok = load_causal_lm(model, device)
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ValueError(
            "a causal LM needs its tokenizer (tokenizer=...), or pass task=... for a plain module"
        )
    keys = (
        "max_length",
        "use_chat_template",
        "modules",
        "train_reduction",
        "target_reduction",
        "group_by",
        "only_correct",
        "max_new_tokens",
    )
    return prepare_lm(
        model, tokenizer, _records(train), _records(targets), **{k: kw[k] for k in keys if k in kw}
    )


def attribute(
    model: nn.Module | str | Path,
    train: Sequence[Any] | pd.DataFrame,
    targets: Sequence[Any] | pd.DataFrame,
    *,
    method: str = "ekfac",
    level: str = "example",
    tokenizer: Any = None,
    task: FunctionTask | None = None,
    method_params: dict | None = None,
    segmenter: str = "lines",
    token_targets: str = "groups",
    checkpoints: Sequence[dict | str | Path] | None = None,
    shard_size: int = 256,
    device: str | None = None,
    work_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    only_correct: bool = False,
    **prepare_kw: Any,
) -> Attribution:
    """Scores of every training example on every target (and per segment / token at those levels).

    `method`: ekfac | kfac | diagonal | identity (kronfluence), trak (traker), gradsim.
    `level`: example | segment | token (segment / token need a kronfluence method).
    `method_params`: fields of InfluenceConfig / TrakConfig / GradSimConfig (damping, proj_dim, ...).
    `checkpoints` (trak): state dicts or model directories to ensemble over (default: the model).
    `only_correct` (causal LM): f covers only the targets the model answers correctly (greedy
    generation, attribution.correctness), as Infra defines it; none correct, or no targets at all, is
    a one-line ValueError.
    LM keywords: max_length, use_chat_template, modules ("mlp" | "all" | regexes), train_reduction,
    target_reduction, group_by (target columns for segment/token groups, default domain),
    max_new_tokens (only_correct's generation length).
    Plain-module keywords: collate_fn, train_ids, target_ids, train_tokens, target_groups, trak_output;
    segment / token levels need `train_tokens` and `FunctionTask(token_loss=...)`.
    """
    check_level(method, level)
    config = method_config(method, method_params)
    dev = pick_device(device)
    prepared = prepare(
        model,
        train,
        targets,
        tokenizer=tokenizer,
        task=task,
        device=dev,
        only_correct=only_correct,
        **prepare_kw,
    )
    check_level(method, level, prepared)
    with tempfile.TemporaryDirectory(prefix="assay-attr-") as tmp:
        scorer = ShardScorer(
            method,
            prepared,
            config,
            dev,
            Path(work_dir or tmp),
            load_checkpoints(checkpoints),
            seed=seed,
            progress=progress,
        )
        scorer.prepare()
        parts: dict[str, list[pd.DataFrame]] = {}
        for _, frames in iter_shard_frames(
            scorer, level, Levels(segmenter, token_targets), shard_size, progress=progress
        ):
            for name, frame in frames.items():
                parts.setdefault(name, []).append(frame)
    joined = {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}
    return Attribution(joined["scores"], joined.get("segment_scores"), joined.get("token_scores"))


def load_checkpoints(
    checkpoints: Sequence[dict | str | Path] | None, loader: Callable[[str | Path], dict] | None = None
) -> list[dict] | None:
    """State dicts from state dicts or Hugging Face directories."""
    if not checkpoints:
        return None
    out = []
    for ckpt in checkpoints:
        if isinstance(ckpt, dict):
            out.append(ckpt)
        else:
            out.append((loader or (lambda p: load_causal_lm(p)[0].state_dict()))(ckpt))
    return out
