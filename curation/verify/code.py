"""Code verifier: a candidate program run against a problem's tests in the sandbox (HumanEval style).

The program is `candidate + tests + check(entry_point)`. Verdicts:
- `pass`: every test ran and held;
- `fail`: the tests ran and one failed (an assertion, or the candidate raised while being tested);
- `timeout`: the wall-clock or CPU limit was hit;
- `error`: nothing meaningful was tested: the candidate does not compile, raises while being
  defined, lacks the entry point, ran out of memory, flooded the output, or left early.
A random nonce printed by the harness after the tests separates a real pass from a candidate that
exits early with status 0 (it guards against accidents and early exits, not against code written to
read the harness and forge the line).
"""

from __future__ import annotations

import ast
import re
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from curation.verify.sandbox import Limits, SandboxResult, run_python

VERDICTS = ("pass", "fail", "timeout", "error")
DEFAULT_LIMITS = Limits(wall_s=6.0, cpu_s=3.0, memory_mb=1024, max_procs=8)

# The harness imports nothing it does not need (json, traceback pull in `re`: milliseconds per run);
# the report is a Python literal that the parent reads with ast.literal_eval.
_HARNESS = r"""
import sys as _sys

_NONCE = {nonce!r}
_ENTRY = {entry_point!r}


def _report(verdict, message=""):
    try:
        _sys.stdout.flush()
    except Exception:
        pass
    _sys.__stdout__.write("\n" + _NONCE + repr((verdict, message[:2000])) + "\n")
    _sys.__stdout__.flush()


def _describe(exc, source_name=None, source=""):
    import traceback as _traceback

    text = "".join(_traceback.format_exception_only(type(exc), exc)).strip()
    if source_name:
        lines = source.splitlines()
        frames = [f for f in _traceback.extract_tb(exc.__traceback__) if f.filename == source_name]
        if frames and 0 < (frames[-1].lineno or 0) <= len(lines):
            text += " at " + source_name + ":" + str(frames[-1].lineno) + ": " + lines[frames[-1].lineno - 1].strip()
    return text


def _main():
    with open("candidate.py") as f:
        candidate = f.read()
    with open("tests.py") as f:
        tests = f.read()
    namespace = {{"__name__": "__candidate__"}}
    try:
        code = compile(candidate, "candidate.py", "exec")
    except (SyntaxError, ValueError) as e:
        return _report("error", _describe(e))
    try:
        exec(code, namespace)
    except MemoryError:
        return _report("error", "MemoryError while defining the candidate")
    except BaseException as e:
        return _report("error", "while defining the candidate: " + _describe(e, "candidate.py", candidate))
    if _ENTRY not in namespace:
        return _report("error", "the candidate defines no " + repr(_ENTRY))
    try:
        test_code = compile(tests, "tests.py", "exec")
    except (SyntaxError, ValueError) as e:
        return _report("error", "the tests do not compile: " + _describe(e))
    try:
        exec(test_code, namespace)
        namespace["check"](namespace[_ENTRY])
    except MemoryError:
        return _report("error", "MemoryError while testing")
    except BaseException as e:
        return _report("fail", _describe(e, "tests.py", tests))
    _report("pass")


_main()
"""

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
    candidate: str, test: str, entry_point: str, limits: Limits | None = None, site_packages: bool = False
) -> CodeVerdict:
    """Run `candidate` (full source) against `test` (defining `check(candidate)`) in the sandbox.
    `site_packages=True` lets the candidate import installed packages (numpy, ...), not only the stdlib."""
    nonce = "@@assay-" + secrets.token_hex(8) + "@@"
    harness = _HARNESS.format(nonce=nonce, entry_point=entry_point)
    result = run_python(
        harness,
        limits=limits or DEFAULT_LIMITS,
        files={"candidate.py": candidate, "tests.py": test},
        site_packages=site_packages,
    )
    return _verdict(result, nonce, limits or DEFAULT_LIMITS)


def check_response(
    problem: Mapping[str, str], response: str, limits: Limits | None = None, site_packages: bool = False
) -> CodeVerdict:
    """`problem` has `prompt`, `test` and `entry_point` (HumanEval's fields)."""
    candidate = build_candidate(problem.get("prompt", ""), response, problem["entry_point"])
    return check_program(candidate, problem["test"], problem["entry_point"], limits, site_packages)


def _verdict(result: SandboxResult, nonce: str, limits: Limits) -> CodeVerdict:
    wall = result.wall_s
    if result.status == "timeout":
        hit_cpu = result.cpu_s is not None and result.cpu_s >= limits.cpu_s - 0.05
        which = f"CPU limit {limits.cpu_s:g}s" if hit_cpu else f"wall-clock limit {limits.wall_s:g}s"
        return CodeVerdict("timeout", which, wall)
    if result.status == "output_limit":
        return CodeVerdict("error", f"output limit exceeded ({limits.kill_output_bytes} bytes)", wall)
    reports = [line[len(nonce) :] for line in result.stdout.splitlines() if line.startswith(nonce)]
    if reports:
        verdict, message = ast.literal_eval(reports[-1])
        return CodeVerdict(verdict, message, wall)
    if result.oom_killed:
        return CodeVerdict("error", f"memory limit {limits.memory_mb} MB", wall)
    if result.status == "signaled":
        return CodeVerdict("error", f"killed by {result.signal}", wall)
    if result.status == "setup_error":
        return CodeVerdict("error", "sandbox setup failed: " + result.stderr.strip()[-500:], wall)
    tail = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
    return CodeVerdict("error", "the program ended before the tests finished: " + tail[0][:500], wall)


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
