"""A small lake for the flow tests: a training and a target dataset, and an attribution run whose
`scores` are written as several shards (a partitioned table), so no test needs a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from storage import Lake
from storage.ingest import ColumnMap, ingest_records, normalize

TRAIN, TARGETS = "tiny_train", "tiny_targets"
POOL = "tiny_pool"  # candidates for the difficulty flip (add_pool)


def records(n: int, prefix: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        domain = "math" if i % 3 else "code"
        a, b = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        out.append(
            {
                "id": f"{prefix}{i:04d}",
                "domain": domain,
                "difficulty": float(1 + i % 5),
                "prompt": f"What is {a} + {b}?" if domain == "math" else f"Write add({a}, {b}).",
                "response": f"{a} + {b} = {a + b}."
                if domain == "math"
                else f"def add():\n    return {a + b}",
            }
        )
    return out


def scores_frame(train_ids: list[str], target_ids: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "train_id": np.repeat(train_ids, len(target_ids)),
            "target_id": np.tile(target_ids, len(train_ids)),
            "score": rng.normal(size=len(train_ids) * len(target_ids)),
        }
    )


def make_lake(root: Path, n_train: int = 60, n_targets: int = 12, shards: int = 4) -> tuple[Lake, str]:
    """(lake, attribution run id) with TRAIN, TARGETS and sharded scores of TARGETS on TRAIN."""
    lake = Lake(root)
    train = records(n_train, "t", 0)
    targets = records(n_targets, "q", 1)
    ingest_records(
        lake, normalize(train, TRAIN, ColumnMap(), "train.jsonl"), TRAIN, ColumnMap(), "train.jsonl"
    )
    ingest_records(
        lake, normalize(targets, TARGETS, ColumnMap(), "targets.jsonl"), TARGETS, ColumnMap(), "targets.jsonl"
    )
    scores = scores_frame([r["id"] for r in train], [r["id"] for r in targets])
    per_shard = int(np.ceil(n_train / shards))
    with lake.run(
        "attribute",
        "fixture",
        params={"shards": shards},
        inputs={"datasets": {TRAIN: lake.dataset_version(TRAIN)}},
    ) as run:
        for k in range(shards):
            ids = {r["id"] for r in train[k * per_shard : (k + 1) * per_shard]}
            run.write("scores", scores[scores["train_id"].isin(ids)], shard=k)
    return lake, run.run_id


def add_pool(lake: Lake, n: int = 90) -> str:
    """A third dataset of the same shape: the candidate pool a difficulty flip draws replacements from."""
    rows = records(n, "p", 2)
    ingest_records(lake, normalize(rows, POOL, ColumnMap(), "pool.jsonl"), POOL, ColumnMap(), "pool.jsonl")
    return POOL


def recipe(**extra: object) -> dict:
    doc = {
        "name": "tiny",
        "datasets": [TRAIN],
        "stages": [
            {"stage": "influence_reweight", "params": {"scores_run": "latest"}},
            {
                "stage": "mix",
                "params": {"by": "domain", "weights_from": "influence_reweight", "batch_size": 4},
            },
        ],
    }
    doc.update(extra)
    return doc


def tiny_causal_lm(tokenizer, seed: int = 0):
    """The tests' smallest Qwen2-style causal LM for `tokenizer` (one layer, hidden 32)."""
    from attribution.reference_model import build_model

    return build_model(
        tokenizer,
        seed=seed,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )


def tiny_model(folder: Path, texts: list[str]) -> Path:
    from attribution.reference_model import build_tokenizer

    tokenizer = build_tokenizer(texts, vocab_size=300)
    model = tiny_causal_lm(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
