"""DART's sampling strategies (DART-Math, arXiv 2407.13690), as ../shared/METHODS.md defines them.

- `VRT(n)`: n samples per query, keep the correct ones (the vanilla rejection-tuning baseline).
- `Uniform(k_u, n_max)`: sample each query until it has k_u correct responses or n_max trials.
- `Prop2Diff(k_p, n_max)`: the target number of correct responses grows with the query's difficulty:
  t_i = max(1, ceil(k_p * d_i)) with d_i in [0, 1]; the hardest queries get k_p, every query at least one.
  Difficulty is the fail rate over `n_d` samples normalised by the largest fail rate (the
  normalisation is our reading of the paper), or given labels (`difficulty="labels"`: the query's
  `difficulty` divided by the largest one). The n_d difficulty samples are trials like any other
  and their correct responses count toward the target (ours: `reuse_difficulty_samples`).
Queries are sampled in rounds of at most `batch` per query. Every trial is recorded; a query left
with zero correct responses is uncovered (reported, not kept). Only a `pass` verdict is correct: a
verifier's `unknown` (it could not tell) counts as not correct, in the fail rate too, and is counted
per query as `abstained` (`DartResult.summary()` has the totals). Pure logic: no lake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd

from curation.dart.generators import Generator
from curation.dart.types import Query, Response, Verdict

STRATEGIES = ("vrt", "uniform", "prop2diff")
TRIAL_COLUMNS = [
    "query_id",
    "dataset",
    "trial",
    "phase",
    "response",
    "correct",
    "verdict",
    "message",
    "truncated",
    "kept",
]


class Verifier:
    """Anything with `verify([(query, response), ...]) -> [Verdict, ...]` (see verifiers.AnswerVerifier)."""

    def verify(self, items: Sequence[tuple[Query, Response]]) -> list[Verdict]:
        return [
            Verdict(
                bool(r.correct) and not r.truncated,
                "truncated" if r.truncated else ("pass" if r.correct else "fail"),
                "recorded",
            )
            for _, r in items
        ]


ABSTAINED = "unknown"  # the verdict of a verifier that could not tell


@dataclass
class DartResult:
    trials: pd.DataFrame  # one row per generated response (TRIAL_COLUMNS)
    # one row per query: difficulty, target, trials, correct, abstained, kept, covered, exhausted
    queries: pd.DataFrame
    strategy: dict = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        """Totals for the run's metrics: queries, covered, trials, correct, kept, abstained (verdict
        `unknown`: not counted as correct), truncated, and the count of every verdict as
        `verdict_<name>`."""
        out = {
            "queries": len(self.queries),
            "covered": int(self.queries["covered"].sum()),
            "trials": len(self.trials),
            "correct": int(self.trials["correct"].sum()),
            "kept": int(self.trials["kept"].sum()),
            "abstained": int((self.trials["verdict"] == ABSTAINED).sum()),
            "truncated": int(self.trials["truncated"].sum()),
        }
        for verdict, count in self.trials["verdict"].value_counts().sort_index().items():
            out[f"verdict_{verdict}"] = int(count)
        return out

    @property
    def kept(self) -> pd.DataFrame:
        return self.trials[self.trials["kept"]].reset_index(drop=True)

    @property
    def uncovered(self) -> list[str]:
        return self.queries.loc[~self.queries["covered"], "query_id"].tolist()


class _Sampler:
    """Per-query bookkeeping shared by the strategies."""

    def __init__(
        self,
        queries: Sequence[Query],
        generator: Generator,
        verifier,
        seed: int,
        n_max: int,
        on_round: Callable[[int, int, int], None] | None,
    ) -> None:
        self.queries, self.generator, self.verifier = list(queries), generator, verifier
        self.seed, self.n_max, self.on_round = seed, n_max, on_round
        m = len(self.queries)
        self.trials = [0] * m
        self.correct = [0] * m
        self.abstained = [0] * m
        self.kept = [0] * m
        self.exhausted = [False] * m
        self.target: list[int | None] = [None] * m
        self.rows: list[dict] = []
        self.rounds = 0

    def sample(self, idx: list[int], counts: list[int], phase: str) -> None:
        """One generation round for queries `idx` (counts[j] samples for idx[j]), verified and recorded."""
        pairs = [(i, k) for i, k in zip(idx, counts, strict=True) if k > 0]
        if not pairs:
            return
        batch = self.generator.generate(
            [self.queries[i] for i, _ in pairs],
            [k for _, k in pairs],
            seed=self.seed * 1_000_003 + self.rounds,
        )
        self.rounds += 1
        flat = [(i, r) for (i, _), responses in zip(pairs, batch, strict=True) for r in responses]
        verdicts = self.verifier.verify([(self.queries[i], r) for i, r in flat])
        for (i, k), responses in zip(pairs, batch, strict=True):
            if len(responses) < k:
                self.exhausted[i] = True  # the generator ran out (replay): stop asking
        for (i, response), verdict in zip(flat, verdicts, strict=True):
            query = self.queries[i]
            correct = bool(verdict.correct) and verdict.verdict == "pass"  # never an abstention
            keep = correct and (self.target[i] is None or self.kept[i] < self.target[i])
            self.rows.append(
                {
                    "query_id": query.query_id,
                    "dataset": query.dataset,
                    "trial": self.trials[i],
                    "phase": phase,
                    "response": response.text,
                    "correct": correct,
                    "verdict": verdict.verdict,
                    "message": verdict.message,
                    "truncated": bool(response.truncated),
                    "kept": bool(keep),
                }
            )
            self.trials[i] += 1
            self.correct[i] += int(correct)
            self.abstained[i] += int(verdict.verdict == ABSTAINED)
            self.kept[i] += int(keep)
        if self.on_round is not None:
            self.on_round(self.rounds, len(pairs), len(self.rows))

    def until_targets(self, batch: int) -> None:
        """Rounds until every query has its target of kept responses, n_max trials, or is exhausted."""
        while True:
            active = [
                i
                for i in range(len(self.queries))
                if not self.exhausted[i]
                and self.trials[i] < self.n_max
                and self.target[i] is not None
                and self.kept[i] < self.target[i]
            ]
            if not active:
                return
            self.sample(active, [min(batch, self.n_max - self.trials[i]) for i in active], "sample")

    def keep_earlier_correct(self) -> None:
        """Mark already-recorded correct trials as kept, up to each query's target (in trial order)."""
        for i in range(len(self.queries)):
            self.kept[i] = 0
        index = {q.query_id: i for i, q in enumerate(self.queries)}
        for row in self.rows:
            i = index[row["query_id"]]
            row["kept"] = bool(row["correct"] and self.kept[i] < (self.target[i] or 0))
            self.kept[i] += int(row["kept"])

    def result(self, strategy: dict, difficulty: list[float | None]) -> DartResult:
        trials = pd.DataFrame(self.rows, columns=TRIAL_COLUMNS)
        trials["trial"] = trials["trial"].astype("int32")
        queries = pd.DataFrame(
            {
                "query_id": [q.query_id for q in self.queries],
                "dataset": [q.dataset for q in self.queries],
                "domain": [q.domain for q in self.queries],
                "difficulty": difficulty,
                "target": [t if t is not None else pd.NA for t in self.target],
                "trials": self.trials,
                "correct": self.correct,
                "abstained": self.abstained,
                "kept": self.kept,
            }
        )
        queries["target"] = queries["target"].astype("Int64")
        queries["covered"] = queries["kept"] > 0
        queries["exhausted"] = self.exhausted
        return DartResult(trials, queries, strategy)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class VRT:
    n_per_query: int = 8
    name: str = field(default="vrt", init=False)

    def run(
        self, queries: Sequence[Query], generator: Generator, verifier=None, seed: int = 0, on_round=None
    ) -> DartResult:
        _check_positive(n_per_query=self.n_per_query)
        s = _Sampler(queries, generator, verifier or Verifier(), seed, self.n_per_query, on_round)
        s.sample(list(range(len(s.queries))), [self.n_per_query] * len(s.queries), "sample")
        return s.result(asdict(self), [q.difficulty for q in s.queries])


@dataclass(frozen=True)
class Uniform:
    k_u: int = 40
    n_max: int = 2048
    batch: int = 16
    name: str = field(default="uniform", init=False)

    def run(
        self, queries: Sequence[Query], generator: Generator, verifier=None, seed: int = 0, on_round=None
    ) -> DartResult:
        _check_positive(k_u=self.k_u, n_max=self.n_max, batch=self.batch)
        s = _Sampler(queries, generator, verifier or Verifier(), seed, self.n_max, on_round)
        s.target = [self.k_u] * len(s.queries)
        s.until_targets(self.batch)
        return s.result(asdict(self), [q.difficulty for q in s.queries])


def normalised_difficulty(values: Sequence[float]) -> list[float]:
    """Divide by the largest value (all zeros stay zeros): the hardest query gets 1."""
    top = max(values, default=0.0)
    return [float(v) / top if top > 0 else 0.0 for v in values]


def prop2diff_targets(difficulty: Sequence[float], k_p: int) -> list[int]:
    """t_i = max(1, ceil(k_p * d_i)) for d_i in [0, 1]."""
    # round() first: 0.1 * 30 is 3.0000000000000004 in floating point, which must not ceil to 4
    return [max(1, math.ceil(round(k_p * d, 9))) for d in difficulty]


@dataclass(frozen=True)
class Prop2Diff:
    k_p: int = 192
    n_max: int = 2048
    batch: int = 16
    n_d: int = 8
    difficulty: str = "fail_rate"  # or "labels": use each query's given difficulty
    reuse_difficulty_samples: bool = True
    name: str = field(default="prop2diff", init=False)

    def run(
        self, queries: Sequence[Query], generator: Generator, verifier=None, seed: int = 0, on_round=None
    ) -> DartResult:
        _check_positive(k_p=self.k_p, n_max=self.n_max, batch=self.batch, n_d=self.n_d)
        if self.difficulty not in ("fail_rate", "labels"):
            raise ValueError(f"difficulty must be fail_rate or labels, got {self.difficulty!r}")
        if self.difficulty == "fail_rate" and self.n_d > self.n_max:
            raise ValueError(f"n_d ({self.n_d}) cannot exceed n_max ({self.n_max})")
        s = _Sampler(queries, generator, verifier or Verifier(), seed, self.n_max, on_round)
        if self.difficulty == "labels":
            labels = [q.difficulty for q in s.queries]
            missing = [q.query_id for q, d in zip(s.queries, labels, strict=True) if d is None or d < 0]
            if missing:
                raise ValueError(
                    f"difficulty=labels, but {len(missing)} queries lack a non-negative "
                    f"difficulty (first: {missing[0]})"
                )
            difficulty = normalised_difficulty([float(d) for d in labels])
        else:
            everyone = list(range(len(s.queries)))
            s.sample(everyone, [self.n_d] * len(everyone), "difficulty")
            fail = [1.0 - s.correct[i] / s.trials[i] if s.trials[i] else 1.0 for i in everyone]
            difficulty = normalised_difficulty(fail)
        s.target = prop2diff_targets(difficulty, self.k_p)
        if self.reuse_difficulty_samples:
            s.keep_earlier_correct()
        else:
            for row in s.rows:
                row["kept"] = False
            s.kept = [0] * len(s.queries)
        s.until_targets(self.batch)
        return s.result(asdict(self), difficulty)


def build_strategy(name: str, **params) -> VRT | Uniform | Prop2Diff:
    classes = {"vrt": VRT, "uniform": Uniform, "prop2diff": Prop2Diff}
    if name not in classes:
        raise ValueError(f"strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    return classes[name](**params)
