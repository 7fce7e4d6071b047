"""The values DART passes around: queries, generated responses, verdicts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    """One problem to sample responses for. Math queries carry `answer`; code queries carry `test`
    (defining `check(candidate)`) and `entry_point`, HumanEval style."""

    query_id: str
    prompt: str
    domain: str = "math"
    answer: str | None = None
    test: str | None = None
    entry_point: str | None = None
    difficulty: float | None = None  # a given label (higher = harder), used by Prop2Diff with labels
    dataset: str | None = None

    @property
    def verifiable(self) -> bool:
        return self.answer is not None or (self.test is not None and self.entry_point is not None)


@dataclass(frozen=True)
class Response:
    text: str
    truncated: bool = False  # cut off by the length limit: counts as wrong (DART-Math)
    correct: bool | None = None  # recorded correctness (replay / simulated), when known
    num_tokens: int | None = None


@dataclass(frozen=True)
class Verdict:
    correct: bool
    verdict: str  # pass | fail | unknown | timeout | error | truncated
    message: str = ""
