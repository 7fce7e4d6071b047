"""The math verifier: final-answer extraction, and a table of equivalent and non-equivalent answers
(fractions, LaTeX, units, percentages, sets, intervals), from the main thread, threads and processes."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from curation.verify.math import answers_match, check_answer, check_many, extract_answer

# (gold, prediction)
EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("1/2", "\\frac12"),
    ("\\dfrac{3}{4}", "0.75"),
    ("-\\frac12", "-0.5"),
    ("\\frac{6}{8}", "3/4"),
    ("\\frac{7}{2}", "3.5"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("3^{1/2}", "\\sqrt{3}"),
    ("x^2-1", "(x-1)(x+1)"),
    ("2x+1", "1+2x"),
    ("5", "5\\text{ cm}"),
    ("10", "10^\\circ"),
    ("1234.5", "\\$1,234.50"),
    ("0.5", "50\\%"),
    ("12\\%", "0.12"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\{-1, 1\\}", "\\pm 1"),
    ("(0,1]", "(0, 1]"),
    ("[2,\\infty)", "[2, \\infty)"),
    ("[1,3]", "x \\in [1, 3]"),
    ("1000", "1,000"),
    ("3", "3.0"),
    ("0.001", "1e-3"),
    ("7/2", "3.5"),
    ("1/3", "0.333333"),
    ("2/4", "1/2"),
]
NOT_EQUIVALENT = [
    ("\\frac{2}{3}", "\\frac{3}{2}"),
    ("2", "-2"),
    ("3", "3.01"),
    ("\\frac{1}{3}", "0.333"),
    ("\\sqrt{2}", "2"),
    ("x+1", "x-1"),
    ("1/3", "0.333"),
    ("1", "1.001"),
    ("5\\text{ cm}", "6\\text{ cm}"),
    ("50\\%", "0.05"),
    ("50\\%", "5\\%"),
    ("\\{1,2,3\\}", "\\{1,2\\}"),
    ("\\{1,2\\}", "\\{1,3\\}"),
    ("[0,1]", "[0,1)"),
    ("(-\\infty, 2)", "(-\\infty,2]"),
    ("(0,1)", "[0,1]"),
]


@pytest.mark.parametrize(("gold", "pred"), EQUIVALENT)
def test_equivalent_answers_match(gold: str, pred: str) -> None:
    assert answers_match(pred, gold)


@pytest.mark.parametrize(("gold", "pred"), NOT_EQUIVALENT)
def test_different_answers_do_not_match(gold: str, pred: str) -> None:
    assert not answers_match(pred, gold)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("First 3 then 4.\nThe answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("We get \\boxed{1} first, but finally \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("So the answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("The final answer is: 12.5. Done", "12.5"),
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("we get 3.5 and then 1,024 apples", "1024"),
        ("\\boxed 7", "7"),
        ("no numbers here", None),
    ],
)
def test_final_answer_extraction(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_check_answer_verdicts() -> None:
    assert check_answer("Thus the answer is \\boxed{0.5}.", "\\frac{1}{2}").verdict == "pass"
    wrong = check_answer("The answer is 3.", "4")
    assert wrong.verdict == "fail" and wrong.extracted == "3" and not wrong.correct
    assert check_answer("I cannot tell.", "4").verdict == "no_answer"


def test_a_pathological_expression_times_out_on_the_main_thread() -> None:
    verdict = check_answer("\\boxed{10^{10^{10}}}", "1", timeout_s=1.0)
    assert verdict.verdict == "timeout" and not verdict.correct
    assert check_answer("\\boxed{2}", "2.0").verdict == "pass"  # the alarm is gone afterwards


def test_threads_use_a_time_bounded_helper_process() -> None:
    results: dict[str, object] = {}

    def work() -> None:
        results["slow"] = check_answer("\\boxed{10^{10^{10}}}", "1", timeout_s=1.0)
        results["fast"] = check_answer("\\boxed{\\{2,1\\}}", "\\{1,2\\}")
        results["wrong"] = check_answer("\\boxed{\\frac{3}{2}}", "\\frac{2}{3}")

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=180)
    assert results["slow"].verdict == "timeout"
    assert results["fast"].verdict == "pass" and results["wrong"].verdict == "fail"


def test_check_many_in_a_thread_pool_agrees_with_the_serial_check() -> None:
    pairs = [(f"The answer is \\boxed{{{g}}}", p) for g, p in EQUIVALENT[:8] + NOT_EQUIVALENT[:6]]
    serial = [v.verdict for v in check_many(pairs)]
    parallel = [v.verdict for v in check_many(pairs, workers=2)]
    assert serial == parallel == ["pass"] * 8 + ["fail"] * 6
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda pr: check_answer(*pr).verdict, pairs[:3])) == ["pass"] * 3


def test_the_verifier_runs_in_worker_processes() -> None:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        verdict = pool.submit(check_answer, "so \\boxed{50\\%}", "0.5").result(timeout=180)
    assert verdict.verdict == "pass"
