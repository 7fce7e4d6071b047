"""DART strategies against a simulated generator with a known success probability q_i per query."""

from __future__ import annotations

from itertools import pairwise

import pandas as pd
import pytest

from curation.dart.generators import ReplayGenerator, SimulatedGenerator
from curation.dart.strategies import (
    VRT,
    Prop2Diff,
    Uniform,
    build_strategy,
    normalised_difficulty,
    prop2diff_targets,
)
from curation.dart.types import Query, Response, Verdict
from curation.dart.verifiers import AnswerVerifier

Q = [0.9, 0.7, 0.5, 0.3, 0.1]  # success probability per query, easiest first


def queries(n: int = len(Q)) -> list[Query]:
    return [Query(f"q{i}", f"problem {i}", answer=str(10 + i), difficulty=float(i + 1)) for i in range(n)]


def simulated(extra: dict[str, float] | None = None) -> SimulatedGenerator:
    return SimulatedGenerator({**{f"q{i}": q for i, q in enumerate(Q)}, **(extra or {})})


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in pairwise(values))


def test_vrt_keeps_every_correct_sample_so_its_count_grows_with_q() -> None:
    result = VRT(n_per_query=200).run(queries(), simulated(), seed=3)
    per_query = result.queries.set_index("query_id")
    assert per_query["trials"].tolist() == [200] * 5
    kept = per_query["kept"].tolist()
    assert strictly_increasing(kept[::-1])  # q falls along the list, so kept falls too
    assert kept == per_query["correct"].tolist()  # VRT keeps all of them
    assert len(result.trials) == 1000 and result.trials["kept"].sum() == sum(kept)


def test_uniform_keeps_k_u_for_every_covered_query_and_respects_the_cap() -> None:
    qs = queries() + [Query("never", "impossible", answer="0")]
    result = Uniform(k_u=6, n_max=120, batch=8).run(qs, simulated({"never": 0.0}), seed=1)
    per_query = result.queries.set_index("query_id")
    covered = per_query[per_query["covered"]]
    assert covered["kept"].tolist() == [6] * 5
    assert (per_query["trials"] <= 120).all()
    assert per_query.loc["never", "trials"] == 120 and result.uncovered == ["never"]
    # easier queries reach k_u in fewer trials
    assert per_query.loc["q0", "trials"] < per_query.loc["q4", "trials"]


def test_prop2diff_keeps_more_for_harder_queries() -> None:
    result = Prop2Diff(k_p=30, n_max=1000, batch=16, n_d=64).run(queries(), simulated(), seed=2)
    per_query = result.queries.set_index("query_id")
    kept = per_query["kept"].tolist()
    assert strictly_increasing(kept)  # grows with 1 - q
    assert per_query["target"].tolist() == kept  # every query reached its target within the cap
    assert per_query["target"].iloc[-1] == 30  # the hardest query gets k_p
    assert per_query["difficulty"].iloc[-1] == 1.0
    assert (per_query["target"] >= 1).all() and (per_query["trials"] <= 1000).all()
    phases = result.trials.groupby("query_id")["phase"].apply(lambda p: (p == "difficulty").sum())
    assert set(phases) == {64}


def test_prop2diff_caps_trials_and_reports_uncovered_queries() -> None:
    qs = queries() + [Query("never", "impossible", answer="0")]
    result = Prop2Diff(k_p=40, n_max=48, batch=8, n_d=8).run(qs, simulated({"never": 0.0}), seed=5)
    per_query = result.queries.set_index("query_id")
    assert (per_query["trials"] <= 48).all()
    assert per_query.loc["never", "trials"] == 48 and per_query.loc["never", "kept"] == 0
    assert result.uncovered == ["never"]
    # the hard query ran out of trials before reaching its target of k_p
    assert per_query.loc["q4", "kept"] < per_query.loc["q4", "target"]


def test_prop2diff_with_given_labels_uses_them_normalised_by_the_largest() -> None:
    result = Prop2Diff(k_p=10, n_max=400, batch=16, difficulty="labels").run(queries(), simulated(), seed=0)
    per_query = result.queries.set_index("query_id")
    assert per_query["difficulty"].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert per_query["target"].tolist() == [2, 4, 6, 8, 10]
    assert (result.trials["phase"] == "sample").all()  # no fail-rate sampling needed
    with pytest.raises(ValueError, match="difficulty"):
        Prop2Diff(difficulty="labels").run([Query("x", "p", answer="1")], simulated())


def test_targets_are_ceil_of_k_p_times_difficulty_and_at_least_one() -> None:
    assert prop2diff_targets([0.0, 0.05, 0.5, 1.0], 10) == [1, 1, 5, 10]
    assert prop2diff_targets([0.1], 30) == [3]  # not 4 from 3.0000000000000004
    assert normalised_difficulty([0.2, 0.4, 0.0]) == [0.5, 1.0, 0.0]
    assert normalised_difficulty([0.0, 0.0]) == [0.0, 0.0]


def test_replay_exhaustion_ends_sampling() -> None:
    frame = pd.DataFrame(
        {
            "query_id": ["a"] * 3 + ["b"] * 2,
            "response": ["x"] * 5,
            "correct": [False, False, True, False, False],
        }
    )
    qs = [Query("a", "pa", answer="1"), Query("b", "pb", answer="1")]
    result = Uniform(k_u=5, n_max=100, batch=2).run(qs, ReplayGenerator(frame), seed=0)
    per_query = result.queries.set_index("query_id")
    assert per_query["trials"].tolist() == [3, 2] and per_query["exhausted"].all()
    assert per_query.loc["a", "kept"] == 1 and result.uncovered == ["b"]


def test_every_trial_is_recorded_with_its_verdict_and_truncated_ones_count_as_wrong() -> None:
    frame = pd.DataFrame(
        {
            "query_id": ["a"] * 4,
            "response": ["\\boxed{1}", "\\boxed{2}", "\\boxed{1}", "so 1"],
            "truncated": [False, False, True, False],
        }
    )
    verifier = AnswerVerifier(mode="verify")
    result = VRT(n_per_query=4).run([Query("a", "1?", answer="1")], ReplayGenerator(frame), verifier)
    assert result.trials["verdict"].tolist() == ["pass", "fail", "truncated", "pass"]
    assert result.trials["kept"].tolist() == [True, False, False, True]
    assert result.trials["trial"].tolist() == [0, 1, 2, 3]


def test_the_math_verifier_agrees_with_the_simulated_labels() -> None:
    labelled = VRT(n_per_query=12).run(queries(3), simulated(), AnswerVerifier(mode="auto"), seed=9)
    checked = VRT(n_per_query=12).run(queries(3), simulated(), AnswerVerifier(mode="verify"), seed=9)
    assert labelled.trials["correct"].tolist() == checked.trials["correct"].tolist()
    assert set(checked.trials["message"]) != {"recorded"}


def test_recorded_mode_needs_labels() -> None:
    verdicts = AnswerVerifier(mode="recorded").verify([(Query("a", "p", answer="1"), Response("\\boxed{1}"))])
    assert verdicts[0].verdict == "error" and not verdicts[0].correct


def test_strategies_by_name_and_bad_parameters() -> None:
    assert build_strategy("uniform", k_u=3).k_u == 3
    with pytest.raises(ValueError):
        build_strategy("best-of-n")
    with pytest.raises(ValueError):
        VRT(n_per_query=0).run(queries(1), simulated())
    with pytest.raises(ValueError):
        Prop2Diff(n_d=10, n_max=5).run(queries(1), simulated())


def test_the_same_seed_gives_the_same_samples() -> None:
    a = Uniform(k_u=3, n_max=50, batch=4).run(queries(), simulated(), seed=11).trials
    b = Uniform(k_u=3, n_max=50, batch=4).run(queries(), simulated(), seed=11).trials
    c = Uniform(k_u=3, n_max=50, batch=4).run(queries(), simulated(), seed=12).trials
    pd.testing.assert_frame_equal(a, b)
    assert a["correct"].tolist() != c["correct"].tolist()


def test_unknown_verdicts_are_not_correct_and_are_counted_as_abstentions() -> None:
    """Responses the math verifier cannot judge (no final answer, a reconsideration, a hedge that
    names several values) are `unknown`: never kept, counted against the query in Prop2Diff's fail
    rate, and reported per query and in the summary."""
    frame = pd.DataFrame(
        {
            "query_id": ["a"] * 6 + ["b"] * 6,
            "response": [
                "So the answer is \\boxed{12}.",
                "Therefore, there are 12 ways.",
                "The answer is 12. Wait, I double counted, so let me recount the",  # unknown
                "We get 3 and then 4 and then 12 and then 7.",  # unknown: several values
                "\\boxed{13}",
                "I am not sure.",  # unknown
                "\\boxed{5}",
                "no conclusion here",  # unknown
                "The answer is 5.",
                "\\boxed{5}",
                "Thus x = 5.",
                "\\boxed{6}",
            ],
        }
    )
    qs = [Query("a", "How many?", answer="12"), Query("b", "Solve.", answer="5")]
    result = Prop2Diff(k_p=4, n_max=6, batch=6, n_d=6).run(qs, ReplayGenerator(frame), AnswerVerifier())
    per_query = result.queries.set_index("query_id")
    assert per_query["correct"].tolist() == [2, 4]
    assert per_query["abstained"].tolist() == [3, 1]
    assert per_query["difficulty"].tolist() == pytest.approx([1.0, (2 / 6) / (4 / 6)])
    unknown = result.trials[result.trials["verdict"] == "unknown"]
    assert len(unknown) == 4 and not unknown["correct"].any() and not unknown["kept"].any()
    summary = result.summary()
    assert summary["abstained"] == summary["verdict_unknown"] == 4
    assert summary["correct"] == 6 and summary["verdict_pass"] == 6 and summary["verdict_fail"] == 2
    assert summary["trials"] == 12 and summary["queries"] == 2 and summary["covered"] == 2


class _Confused:
    """A verifier that marks its abstentions correct: the strategy must not keep them."""

    def verify(self, items):
        return [Verdict(True, "unknown", "cannot tell") for _ in items]


def test_an_abstention_is_never_kept_even_if_a_verifier_calls_it_correct() -> None:
    frame = pd.DataFrame({"query_id": ["a"] * 3, "response": ["x"] * 3})
    result = VRT(n_per_query=3).run([Query("a", "p", answer="1")], ReplayGenerator(frame), _Confused())
    assert result.trials["kept"].sum() == 0 and result.summary()["abstained"] == 3
