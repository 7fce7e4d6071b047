"""One loop for every method and level: prepare the method once, then score training shards and turn
each shard into `scores` / `segment_scores` / `token_scores` frames.

A shard is a contiguous block of training items; its frames depend only on the shard and the prepared
method, so a resumed run that skips finished shards ends with exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

# The built-in methods register themselves with the scorer registry when their modules are imported.
from attribution import ekfac, gradsim, trak_adapter  # noqa: F401
from attribution.scoring import SCORERS, Scorer, ShardScores, TokenTargets, scorer_class
from attribution.segments import segment_sums, split_segments, token_segments
from attribution.sources import ItemText, Prepared

METHODS = tuple(SCORERS)
LEVELS = ("example", "segment", "token")


def method_config(method: str, params: dict | None = None) -> Any:
    """The method's config dataclass from user params (unknown keys are the user's error)."""
    return scorer_class(method).make_config(method, dict(params or {}))


def check_level(method: str, level: str, prepared: Prepared | None = None) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    if level != "example" and not scorer_class(method).token_level:
        token_methods = [m for m, cls in SCORERS.items() if cls.token_level]
        raise ValueError(
            f"level {level!r} needs per-token scores: use method {', '.join(token_methods[:-1])} or "
            f"{token_methods[-1]}"
        )
    if level != "example" and prepared is not None and prepared.texts is None:
        raise ValueError(
            f"level {level!r} needs the training items' tokens (train_tokens for a plain module)"
        )
    if level != "example" and prepared is not None and prepared.token_loss is None:
        raise ValueError(
            f"level {level!r} needs each token's share of the training loss (FunctionTask(token_loss=...))"
        )


class ShardScorer:
    """A method prepared on one `Prepared`: `score(indices, per_token)` gives the shard's `ShardScores`.
    The registered `Scorer` of the method does the work."""

    def __init__(
        self,
        method: str,
        prepared: Prepared,
        config: Any,
        device: torch.device,
        work_dir: Path,
        checkpoints: Sequence[dict] | None = None,
        seed: int = 0,
        progress: bool = False,
    ):
        self.method, self.p, self.seed = method, prepared, seed
        self.impl: Scorer = scorer_class(method)(
            method, config, device, work_dir, checkpoints, seed=seed, progress=progress
        )

    def prepare(self) -> None:
        torch.manual_seed(self.seed)  # sampled Fisher labels: a rerun fits the same factors
        self.impl.fit(self.p)

    def score(self, indices: Sequence[int], per_token: TokenTargets | None = None) -> ShardScores:
        return self.impl.score(indices, per_token)


@dataclass
class Levels:
    """How segment / token rows are formed: the segment splitter, and which targets they are about."""

    segmenter: str = "lines"
    token_targets: str = "groups"  # "groups": the target groups (e.g. domain=math, all); "each": every target


def token_targets(p: Prepared, how: str) -> TokenTargets:
    """The keys of segment / token rows and their (n_keys x n_targets) averaging matrix."""
    if how == "each":
        return TokenTargets(list(p.target_ids), np.eye(len(p.target_ids)))
    if how != "groups":
        raise ValueError(f"token_targets {how!r}: expected 'groups' or 'each'")
    keys = list(p.target_groups)
    mat = np.zeros((len(keys), len(p.target_ids)))
    for k, key in enumerate(keys):
        mat[k, p.target_groups[key]] = 1.0 / max(1, len(p.target_groups[key]))
    return TokenTargets(keys, mat)


SEGMENT_COLUMNS = ["train_id", "target_id", "segment", "text", "char_start", "char_end", "score"]
TOKEN_COLUMNS = ["train_id", "target_id", "position", "token_id", "token", "char_start", "char_end", "score"]


def _segment_rows(
    train_id: str, keys: list[str], text: ItemText, per_tok: np.ndarray, segmenter: str
) -> list[dict]:
    """One row per (key, segment) holding a predicted token. A response cut by max_length keeps the
    segments (their text cut too) up to its last token: the rest has no loss term, hence no row."""
    spans = split_segments(text.text, segmenter)
    seg_of = token_segments(text.offsets, spans)
    seg = segment_sums(per_tok, seg_of, len(spans))
    cut = int(text.offsets[:, 1].max()) if len(text.offsets) else 0  # the text's end unless truncated
    kept = [(g, spans[g][0], min(spans[g][1], cut)) for g in sorted(set(seg_of[seg_of >= 0].tolist()))]
    return [
        {
            "train_id": train_id,
            "target_id": key,
            "segment": g,
            "text": text.text[a:b],
            "char_start": a,
            "char_end": b,
            "score": seg[k, g],
        }
        for k, key in enumerate(keys)
        for g, a, b in kept
    ]


def _token_rows(train_id: str, keys: list[str], text: ItemText, per_tok: np.ndarray) -> pd.DataFrame:
    n = len(text.positions)
    return pd.DataFrame(
        {
            "train_id": train_id,
            "target_id": np.repeat(keys, n),
            "position": np.tile(text.response_index, len(keys)),
            "token_id": np.tile(text.token_ids, len(keys)),
            "token": np.tile(np.asarray(text.tokens, dtype=object), len(keys)),
            "char_start": np.tile(text.offsets[:, 0], len(keys)),
            "char_end": np.tile(text.offsets[:, 1], len(keys)),
            "score": per_tok.reshape(-1),
        },
        columns=TOKEN_COLUMNS,
    )


def shard_frames(
    p: Prepared, indices: Sequence[int], scores: ShardScores, level: str, levels: Levels
) -> dict[str, pd.DataFrame]:
    """Frames of one shard: `scores` for every (train, target) pair, and at the segment / token levels
    one row per (train item, token-target key, segment / predicted token)."""
    example = scores.example.double().numpy()
    train_ids = [p.train_ids[i] for i in indices]
    frames = {
        "scores": pd.DataFrame(
            {
                "train_id": np.repeat(train_ids, len(p.target_ids)),
                "target_id": np.tile(p.target_ids, len(train_ids)),
                "score": example.T.reshape(-1),
            }
        )
    }
    if level == "example":
        return frames
    if scores.tokens is None or p.texts is None:
        raise ValueError(f"level {level!r}: the scorer returned no token scores")
    keys = token_targets(p, levels.token_targets).keys
    seg_rows: list[dict] = []
    tok_parts: list[pd.DataFrame] = []
    for i, per_tok in zip(indices, scores.tokens, strict=True):
        seg_rows += _segment_rows(p.train_ids[i], keys, p.texts[i], per_tok, levels.segmenter)
        if level == "token":
            tok_parts.append(_token_rows(p.train_ids[i], keys, p.texts[i], per_tok))
    frames["segment_scores"] = pd.DataFrame(seg_rows, columns=SEGMENT_COLUMNS)
    if level == "token":
        frames["token_scores"] = (
            pd.concat(tok_parts, ignore_index=True) if tok_parts else pd.DataFrame(columns=TOKEN_COLUMNS)
        )
    return frames


def shards(n_train: int, shard_size: int) -> list[list[int]]:
    return [list(range(a, min(a + shard_size, n_train))) for a in range(0, n_train, shard_size)]


def iter_shard_frames(
    scorer: ShardScorer,
    level: str,
    levels: Levels,
    shard_size: int,
    skip: Callable[[int], bool] = lambda _: False,
    progress: bool = False,
) -> Iterator[tuple[int, dict[str, pd.DataFrame]]]:
    """Yield (shard index, frames) for every shard not skipped; scores are computed lazily per shard."""
    from tqdm.auto import tqdm

    blocks = shards(len(scorer.p.train_items), shard_size)
    per_token = None if level == "example" else token_targets(scorer.p, levels.token_targets)
    for k, idx in enumerate(tqdm(blocks, desc=f"attribute ({scorer.method}, {level})", disable=not progress)):
        if skip(k):
            continue
        yield k, shard_frames(scorer.p, idx, scorer.score(idx, per_token), level, levels)
