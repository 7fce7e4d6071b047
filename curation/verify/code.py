"""Code verifier: a candidate program run against a problem's tests (HumanEval style), with the
verdict decided outside the candidate's process.

`run_pair` starts two sandboxed processes: the checker (trusted: `_checker.py`, the problem's prompt
and tests) and the candidate (`_candidate.py` running the candidate's code). The tests call a proxy
for the entry point; each call's arguments and the candidate's return value cross between the two
as plain data in a strict, type-checked encoding (`wire.py`: builtin types only), so an object
whose `__eq__` is always True, an int subclass, patched builtins, a swapped report function or a
forged output line cannot reach the checker: a value of a user class is a `fail`, and the checker
alone writes the report, on a pipe the candidate does not hold. The candidate cannot read the
checker's files (the tests), signal it or open its /proc entries (its own Landlock domain, and uid
where root can give one; the checker is not dumpable). See SECURITY.md for what each host enforces.

Verdicts:
- `pass`: the tests ran, called the candidate and held;
- `fail`: the tests ran and one failed (an assertion, or the candidate raised while being tested,
  or returned something that is not plain data);
- `timeout`: the candidate used up its CPU limit (decided from the limit and its CPU accounting,
  not from the machine's load), or the wall-clock safety net ran out;
- `error`: nothing meaningful was tested: the candidate does not compile, raises while being
  defined, lacks the entry point, ran out of memory, flooded the output, broke the protocol, or
  ended before answering; or the tests themselves could not run. A malformed report is an `error`
  with a message, never an exception.
The candidate's arguments are copies: a test that relies on the candidate mutating an argument in
place does not see the change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from curation.verify.sandbox import Limits, SandboxResult, run_pair

VERDICTS = ("pass", "fail", "timeout", "error")
# CPU per process (whole seconds); the wall clock is only a safety net for candidates that sleep or block
DEFAULT_LIMITS = Limits(wall_s=30.0, cpu_s=3.0, memory_mb=1024, max_procs=8)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # one call's return value, encoded
_REPORT_VERDICTS = ("pass", "fail", "error", "candidate_gone")
_HERE = Path(__file__).resolve().parent


@cache
def _harness_sources() -> tuple[str, str, str]:
    return tuple((_HERE / name).read_text() for name in ("_checker.py", "_candidate.py", "wire.py"))


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class CodeVerdict:
    verdict: str  # pass | fail | timeout | error
    message: str = ""
    wall_s: float = 0.0

    @property
    def correct(self) -> bool:
        return self.verdict == "pass"


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The code in a model response: the fenced block that defines `entry_point`, else the first
    fenced block, else the whole text (a bare completion)."""
    blocks = _FENCE.findall(response)
    if not blocks:
        return response
    if entry_point:
        defining = [b for b in blocks if _defines(b, entry_point)]
        if defining:
            return defining[-1]
    return blocks[0]


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def build_candidate(prompt: str, response: str, entry_point: str) -> str:
    """HumanEval convention: a response that defines the entry point is a whole solution (appended
    after the prompt, so the prompt's imports and helpers stay available and the new definition
    wins); otherwise it is the function body that continues the prompt."""
    code = extract_code(response, entry_point)
    if _defines(code, entry_point):
        return prompt + "\n\n" + code + "\n"
    return prompt + code + "\n"


def check_program(
    candidate: str,
    test: str,
    entry_point: str,
    limits: Limits | None = None,
    site_packages: bool = False,
    prompt: str = "",
) -> CodeVerdict:
    """Run `candidate` (full source) against `test` (defining `check(candidate)`, or calling the entry
    point by name) in the sandbox. `prompt` is run on the checker's side first, for helpers the tests
    use (HumanEval's `poly`, `encode_cyclic`). `site_packages=True` lets the candidate import
    installed packages (numpy, ...), not only the stdlib."""
    limits = limits or DEFAULT_LIMITS
    checker, runner, wire_source = _harness_sources()
    config = {"entry_point": entry_point, "max_message": MAX_MESSAGE_BYTES}
    result = run_pair(
        checker,
        runner,
        checker_files={
            "wire.py": wire_source,
            "tests.py": test,
            "prompt.py": prompt,
            "check.json": json.dumps(config),
        },
        candidate_files={
            "wire.py": wire_source,
            "candidate.py": candidate,
            "run.json": json.dumps({"entry_point": entry_point}),
        },
        limits=limits,
        site_packages=site_packages,
        preload=("json", "traceback"),
    )
    return verdict_of(result, limits)


def check_response(
    problem: Mapping[str, str], response: str, limits: Limits | None = None, site_packages: bool = False
) -> CodeVerdict:
    """`problem` has `prompt`, `test` and `entry_point` (HumanEval's fields)."""
    prompt = problem.get("prompt", "") or ""
    candidate = build_candidate(prompt, response, problem["entry_point"])
    return check_program(candidate, problem["test"], problem["entry_point"], limits, site_packages, prompt)


def parse_report(stdout: str) -> tuple[tuple[str, str] | None, str]:
    """The checker's report: exactly one line of JSON {"verdict": ..., "message": ...}. Returns
    ((verdict, message), "") or (None, what is wrong with it); never raises."""
    if not stdout.endswith("\n") or stdout.count("\n") != 1:
        return None, f"expected one report line, got {stdout.count(chr(10))} lines"
    try:
        report = json.loads(stdout)
    except (ValueError, RecursionError) as e:
        return None, f"the report is not JSON ({str(e)[:200]})"
    if type(report) is not dict or set(report) != {"verdict", "message"}:
        return None, "the report has other fields than verdict and message"
    verdict, message = report["verdict"], report["message"]
    if type(verdict) is not str or verdict not in _REPORT_VERDICTS or type(message) is not str:
        return None, f"the report's verdict is not one of {', '.join(_REPORT_VERDICTS)}"
    return (verdict, message), ""


def verdict_of(result: SandboxResult, limits: Limits) -> CodeVerdict:
    """The verdict of a checked run, from the checker's report and how each process ended."""
    wall = result.wall_s
    if result.status == "timeout":
        if result.timeout_reason == "cpu":
            return CodeVerdict(
                "timeout", f"the tests used up the checker's CPU limit ({limits.cpu_s:g}s)", wall
            )
        return CodeVerdict("timeout", f"wall-clock safety net ({limits.wall_s:g}s)", wall)
    if result.status == "output_limit":
        return CodeVerdict("error", f"output limit exceeded ({limits.kill_output_bytes} bytes)", wall)
    report, problem = parse_report(result.stdout)
    if report is not None and result.ok:
        verdict, message = report
        if verdict == "candidate_gone":
            return _candidate_ended(result, message, limits)
        return CodeVerdict(verdict, message, wall)
    if result.oom_killed:
        return CodeVerdict("error", f"memory limit {limits.memory_mb} MB", wall)
    if result.status == "setup_error":
        return CodeVerdict("error", "sandbox setup failed: " + result.stderr.strip()[-500:], wall)
    if result.status == "signaled":
        return CodeVerdict("error", f"the checker was killed by {result.signal}", wall)
    return CodeVerdict("error", f"no valid report from the checker: {problem}", wall)


def _candidate_ended(result: SandboxResult, message: str, limits: Limits) -> CodeVerdict:
    end, wall = result.companion, result.wall_s
    if end is not None and end.hit_cpu_limit:
        return CodeVerdict("timeout", f"the candidate used up its CPU limit ({end.cpu_limit_s}s)", wall)
    if result.oom_killed:
        return CodeVerdict("error", f"memory limit {limits.memory_mb} MB: {message}", wall)
    if end is None:
        return CodeVerdict("error", message, wall)
    how = f"killed by {end.signal}" if end.signal else f"exited with status {end.exit}"
    tail = result.stderr.strip().splitlines()[-1:]
    detail = f" ({tail[0][:300]})" if tail else ""
    return CodeVerdict("error", f"{message}: the candidate {how}{detail}", wall)


class CodeVerifier:
    """Checks many (problem, response) pairs with a small thread pool; each check is its own sandbox."""

    def __init__(self, limits: Limits | None = None, workers: int = 2, site_packages: bool = False) -> None:
        self.limits = limits or DEFAULT_LIMITS
        self.workers = workers
        self.site_packages = site_packages

    def check(self, problem: Mapping[str, str], response: str) -> CodeVerdict:
        return check_response(problem, response, self.limits, self.site_packages)

    def check_many(self, pairs: Sequence[tuple[Mapping[str, str], str]]) -> list[CodeVerdict]:
        if self.workers <= 1 or len(pairs) <= 1:
            return [self.check(p, r) for p, r in pairs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda pr: self.check(*pr), pairs))
