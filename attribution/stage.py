"""The lake stage: attribution of a training dataset on a target dataset, written shard by shard.

`run_attribution(lake, model_dir, train, targets, method, level)` registers one `attribute` run whose
id derives from the method, its parameters, the model fingerprint and the dataset versions. Each
training shard's rows go to `token_scores` / `segment_scores` / `scores` as soon as they are computed
(`scores` last: a shard counts as done when its `scores` file exists). Running the same call again
after a kill resumes: fitted factors are reused, finished shards are skipped, and the run ends with the
rows an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from attribution.engine import (
    LEVELS,
    METHODS,
    Levels,
    ShardScorer,
    check_level,
    iter_shard_frames,
    method_config,
)
from attribution.sources import prepare_lm
from attribution.training import pick_device
from storage import Lake, UserError

BIG_FILE = 256 << 20


def model_fingerprint(model_dir: str | Path) -> str:
    """Content hash of a model directory's config, tokenizer and weights (big files: size + head + tail)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        if path.suffix not in (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja"):
            continue
        digest.update(str(path.relative_to(model_dir)).encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as fh:
            if size <= BIG_FILE:
                digest.update(fh.read())
            else:
                digest.update(fh.read(16 << 20))
                fh.seek(size - (16 << 20))
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def _check_modules(model_dir: Path, modules: str | Sequence[str]) -> None:
    """The module selection matches layers of the model (checked on a weightless copy)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from attribution.tasks import select_modules

    try:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {model_dir}: cannot read the model config ({exc})") from None
    try:
        select_modules(skeleton, modules)
    except (ValueError, re.error) as exc:
        raise UserError(f"--modules: {exc}") from None


def _validate(method: str, level: str, model_dir: str | Path, method_params: dict | None) -> Any:
    if method not in METHODS:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if level not in LEVELS:
        raise UserError(f"--level {level}: expected one of {', '.join(LEVELS)}")
    try:
        check_level(method, level)
        config = method_config(method, method_params)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    if not (Path(model_dir) / "config.json").exists():
        raise UserError(f"--model {model_dir}: not a Hugging Face model directory (no config.json)")
    return config


def _records(frame: pd.DataFrame) -> list[dict]:
    keep = [
        c
        for c in ("example_id", "domain", "difficulty", "prompt", "response", "messages", "answer")
        if c in frame.columns
    ]
    return frame[keep].to_dict("records")


def run_attribution(
    lake: Lake,
    model_dir: str | Path,
    train_dataset: str,
    target_dataset: str,
    method: str = "ekfac",
    level: str = "example",
    *,
    device: str | None = None,
    only_correct: bool = False,
    method_params: dict | None = None,
    segmenter: str = "lines",
    token_targets: str = "groups",
    group_by: Sequence[str] = ("domain",),
    modules: str | Sequence[str] = "mlp",
    shard_size: int = 256,
    max_length: int = 512,
    checkpoints: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> str:
    """Compute and store attribution scores; returns the run id (an identical finished run is reused)."""
    from attribution.api import load_causal_lm, load_checkpoints

    config = _validate(method, level, model_dir, method_params)
    if segmenter not in ("lines", "sentences"):
        try:
            re.compile(segmenter)
        except re.error as exc:
            raise UserError(
                f"--segmenter {segmenter!r}: not lines, sentences or a regular expression ({exc})"
            ) from None
    if token_targets not in ("groups", "each"):
        raise UserError(f"token_targets {token_targets!r}: expected 'groups' or 'each'")
    if checkpoints and method != "trak":
        raise UserError("--checkpoint is for --method trak (an ensemble over models)")
    for ckpt in checkpoints or []:
        if not (Path(ckpt) / "config.json").exists():
            raise UserError(f"--checkpoint {ckpt}: not a Hugging Face model directory (no config.json)")
    _check_modules(Path(model_dir), modules)
    train_frame, target_frame = lake.examples(train_dataset), lake.examples(target_dataset)
    dev = pick_device(device)
    model_dir = Path(model_dir).absolute()
    params = {
        "level": level,
        "config": config.params(),
        "segmenter": segmenter,
        "token_targets": token_targets,
        "group_by": list(group_by),
        "modules": modules if isinstance(modules, str) else list(modules),
        "shard_size": shard_size,
        "max_length": max_length,
        "only_correct": only_correct,
        "seed": seed,
        "checkpoints": [model_fingerprint(c) for c in checkpoints or []],
    }
    inputs = {
        "datasets": {
            train_dataset: lake.dataset_version(train_dataset),
            target_dataset: lake.dataset_version(target_dataset),
        }
    }
    model_ref = f"{model_dir}@{model_fingerprint(model_dir)}"
    with lake.run("attribute", method, params=params, inputs=inputs, model=model_ref) as run:
        if run.complete:
            return run.run_id
        model, tokenizer = load_causal_lm(model_dir, dev)
        train, targets = _records(train_frame), _records(target_frame)
        if only_correct:
            from attribution.correctness import correct_mask

            targets = [t for t, ok in zip(targets, correct_mask(model, tokenizer, targets)) if ok]
            if not targets:
                raise UserError(
                    f"--only-correct: the model answers none of {target_dataset}'s targets correctly"
                )
        prepared = prepare_lm(
            model, tokenizer, train, targets, max_length=max_length, modules=modules, group_by=list(group_by)
        )
        work = lake.root / ".work" / "attribution" / run.run_id
        scorer = ShardScorer(
            method, prepared, config, dev, work, load_checkpoints(checkpoints), seed=seed, progress=progress
        )
        scorer.prepare()
        for k, frames in iter_shard_frames(
            scorer,
            level,
            Levels(segmenter, token_targets),
            shard_size,
            skip=lambda k: run.has_shard("scores", k),
            progress=progress,
        ):
            for table in ("token_scores", "segment_scores", "scores"):  # scores last: marks the shard done
                if table in frames:
                    run.write(table, frames[table], shard=k)
        shutil.rmtree(work, ignore_errors=True)
        run_id = run.run_id
    return run_id
