"""Replay files of candidates with known correctness, for demos and dry runs without a capable model.

Each query gets `per_query` candidates; each is correct with a probability that falls with the
query's difficulty, so fail rates track difficulty as they would for a real model:
- math: correct = the reference solution, its final answer stated as `\\boxed{}`, "The answer is"
  or `####` in turn; wrong = the same solution with the final answer changed (answer + 1);
- code: correct = the reference (canonical) solution; wrong = a body that returns None or raises
  (no HumanEval test accepts either), or the reference cut in half and flagged `truncated`.
The `correct` column holds these labels (`label_source` says they are constructed, not measured);
replay them with verify: auto to trust the labels, or verify: verify to check them again.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd

from curation.dart.generators import dump_responses


def success_probability(difficulty: float | None, top: float = 5.0) -> float:
    """0.9 for the easiest level falling linearly to 0.18 at `top` (levels 1..top); 0.5 when unknown."""
    if difficulty is None or (isinstance(difficulty, float) and math.isnan(difficulty)):
        return 0.5
    frac = min(max((float(difficulty) - 1.0) / max(top - 1.0, 1e-9), 0.0), 1.0)
    return 0.9 - 0.72 * frac


def _rows(examples: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[dict]:
    """Lake `examples` rows (example_id, answer, meta JSON) or corpus records (id, answer, test)."""
    records = (
        examples.to_dict("records") if isinstance(examples, pd.DataFrame) else [dict(r) for r in examples]
    )
    out = []
    for r in records:
        meta = r.get("meta")
        meta = json.loads(meta) if isinstance(meta, str) and meta.strip() else (meta or {})
        out.append(
            {
                "query_id": str(r.get("example_id", r.get("id"))),
                "domain": r.get("domain"),
                "difficulty": r.get("difficulty"),
                "prompt": r.get("prompt"),
                "response": r.get("response"),
                "answer": r.get("answer") if r.get("answer") is not None else meta.get("answer"),
                "test": r.get("test") or meta.get("test"),
                "entry_point": r.get("entry_point") or meta.get("entry_point"),
            }
        )
    return out


def _wrong_answer(answer: str) -> str:
    try:
        value = Fraction(answer.replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return answer + "1"
    wrong = value + 1
    return str(wrong.numerator) if wrong.denominator == 1 else f"{wrong.numerator}/{wrong.denominator}"


def _math_candidate(row: dict, correct: bool, k: int) -> str:
    answer = str(row["answer"])
    stated = answer if correct else _wrong_answer(answer)
    body = "\n".join(
        line
        for line in str(row["response"] or "").splitlines()
        if "\\boxed" not in line and "answer is" not in line.lower()
    )
    ending = [f"The answer is \\boxed{{{stated}}}.", f"So the answer is {stated}.", f"#### {stated}"][k % 3]
    return (body + "\n" + ending).strip()


def _code_candidate(row: dict, correct: bool, k: int) -> tuple[str, bool]:
    if correct:
        return str(row["response"]), False
    if k % 3 == 0:
        return "    return None\n", False
    if k % 3 == 1:
        return "    raise ValueError('unsolved')\n", False
    lines = str(row["response"]).splitlines()
    return "\n".join(lines[: max(1, len(lines) // 2)]) + "\n", True


def demo_replay_records(
    examples: pd.DataFrame | Iterable[Mapping[str, Any]],
    per_query: int = 16,
    seed: int = 0,
    top_difficulty: float = 5.0,
) -> list[dict]:
    """Replay rows (query_id, trial, response, correct, truncated, label_source) for math queries with an
    `answer` and code queries with `test` / `entry_point`; other rows are skipped."""
    rng = random.Random(seed)
    out = []
    for row in _rows(examples):
        is_code = row["test"] and row["entry_point"] and row["response"]
        is_math = row["answer"] is not None and not is_code
        if not (is_code or is_math):
            continue
        p = success_probability(row["difficulty"], top_difficulty)
        for k in range(per_query):
            correct = rng.random() < p
            if is_code:
                text, truncated = _code_candidate(row, correct, k)
            else:
                text, truncated = _math_candidate(row, correct, k), False
            out.append(
                {
                    "query_id": row["query_id"],
                    "trial": k,
                    "response": text,
                    "correct": bool(correct and not truncated),
                    "truncated": truncated,
                    "label_source": "constructed",
                }
            )
    return out


def write_demo_replay(
    examples: pd.DataFrame | Iterable[Mapping[str, Any]],
    path: str | Path,
    per_query: int = 16,
    seed: int = 0,
    top_difficulty: float = 5.0,
) -> Path:
    """`demo_replay_records` written as JSONL at `path` (for `assay dart --generator replay --replay PATH`)."""
    return dump_responses(demo_replay_records(examples, per_query, seed, top_difficulty), path)
