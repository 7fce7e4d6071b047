"""The demo corpus: reproducible, held-out targets, both domains, every level, exact answers."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest

from curation.corpus import demo_corpus, humaneval_records, math_problems


def test_math_is_seeded_levelled_and_answers_match_the_boxed_result() -> None:
    first, again = math_problems(10, seed=5), math_problems(10, seed=5)
    assert first == again and first != math_problems(10, seed=6)
    assert Counter(r["difficulty"] for r in first) == {level: 10 for level in range(1, 6)}
    for record in first:
        boxed = re.search(r"\\boxed\{([^}]*)\}", record["response"]).group(1)
        assert Fraction(boxed) == Fraction(record["answer"]) and record["synthetic"]


def test_targets_are_held_out_and_code_is_all_of_humaneval() -> None:
    corpus = demo_corpus()
    train, targets = corpus["train"], corpus["targets"]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in targets}
    code = humaneval_records()
    assert len(code) == 164 and {r["difficulty"] for r in code} == {1, 2, 3, 4, 5}
    assert sum(r["domain"] == "code" for r in train + targets) == 164
    assert all(r["test"] and r["entry_point"] for r in code)


def test_asking_for_more_problems_than_a_level_has_is_an_error() -> None:
    with pytest.raises(ValueError, match="level 4 has only"):
        math_problems(100, seed=0)
