"""Math verifier: extract a response's final answer and compare it with the gold answer.

Extraction, in order (DART-Math's checker): the last `\\boxed{...}` (or `\\fbox{...}`), the text after
the last "the answer is", the text after `####` (GSM8K), the last number. Comparison: equal after
light normalisation; for two plain numbers (integers, decimals, a/b) exactly, numerically close
(relative 1e-9), or, when one is a written decimal, equal after rounding both to `float_rounding`
decimals (as math-verify does), decided without sympy; else equal by `math-verify` (symbolic,
LaTeX, sets, intervals, percentages, units stripped rather than converted; floats rounded to
`float_rounding` decimals, its default 6).

math-verify bounds its time with `signal.alarm`, which only works on the main thread, so its own
timeouts are always off and we bound time ourselves: on the main thread with an interval timer, on
any other thread (or with `in_process=False`) in a helper process (one per thread, started on first
use) that is killed when it overruns `timeout_s`, so a pathological expression (`10^{10^{10}}`)
cannot hang a verification pool.
"""

from __future__ import annotations

import json
import math as _math
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

MAX_ANSWER_CHARS = 1000  # longer "answers" are compared as strings only
STARTUP_TIMEOUT_S = 120.0  # the helper process imports sympy once; slow on a loaded machine
_ANSWER_IS = re.compile(r"(?:final\s+)?answer\s+is\s*[:：]?\s*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_PLAIN_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PLAIN_FRACTION = re.compile(r"[-+]?\d+/\d+")


@dataclass(frozen=True)
class MathVerdict:
    verdict: str  # pass | fail | no_answer | timeout
    extracted: str | None = None
    message: str = ""

    @property
    def correct(self) -> bool:
        return self.verdict == "pass"


# ---- extraction ------------------------------------------------------------------------------


def _braced(text: str, start: int) -> str | None:
    """The content of the balanced {...} group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def _last_boxed(text: str) -> str | None:
    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*", text))):
        end = match.end()
        if end < len(text) and text[end] == "{":
            content = _braced(text, end)
            if content is not None:
                return content
        else:  # "\boxed 5"
            bare = re.match(r"[^\s$]+", text[end:])
            if bare:
                return bare.group(0)
    return None


def _clean(answer: str) -> str:
    answer = answer.strip()
    answer = re.sub(r"^\$+|\$+$", "", answer).strip()
    answer = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", answer).strip()
    return answer.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer of a response, or None when it states none."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed)
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        rest = text[matches[-1].end() :]
        line = rest.split("\n", 1)[0]
        # stop at a sentence end ('. ' or '.' at the end), not at a decimal point
        line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]
        inner = _last_boxed(line)
        cleaned = _clean(inner if inner is not None else line)
        if cleaned:
            return cleaned
    if "####" in text:
        cleaned = _clean(text.rsplit("####", 1)[1].split("\n", 1)[0])
        if cleaned:
            return cleaned
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


# ---- comparison ------------------------------------------------------------------------------


def _normalise(s: str) -> str:
    s = _clean(s)
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ ", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+", "", s)


def _as_number(s: str) -> Fraction | None:
    """Plain numbers (integers, decimals, 1e-3, a/b) exactly, else None (left to math-verify)."""
    s = _normalise(s).replace(",", "")
    if _PLAIN_FLOAT.fullmatch(s) or _PLAIN_FRACTION.fullmatch(s):
        try:
            return Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def _math_verify_equal(pred: str, gold: str, float_rounding: int) -> bool:
    """math-verify with its own (signal) timeouts off: the caller bounds the time."""
    from math_verify import grader, parse, parser, verify

    # its "you must bound the time yourself" warning: we do, see answers_match
    grader.TIMEOUT_WARNING_SHOWN = parser.TIMEOUT_WARNING_SHOWN = True

    def wrap(s: str) -> str:
        delimited = re.search(r"(?<!\\)\$", s) or "\\(" in s or "\\[" in s
        return s if delimited else f"${s}$"

    gold_parsed = parse(wrap(gold), parsing_timeout=None)
    pred_parsed = parse(wrap(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, float_rounding=float_rounding, timeout_seconds=None))


class _Overrun(BaseException):
    """Raised by our alarm; a BaseException so math-verify's `except Exception` cannot swallow it."""


def answers_match(
    pred: str, gold: str, *, timeout_s: float = 5.0, float_rounding: int = 6, in_process: bool | None = None
) -> bool:
    """True when `pred` equals `gold`. Raises TimeoutError when the symbolic check overruns.

    `in_process=None` bounds time with an interval timer on the main thread and with the helper
    process elsewhere; `False` always uses the helper (also bounds C-level hangs signals cannot stop).
    """
    if _normalise(pred) == _normalise(gold):
        return True
    a, b = _as_number(pred), _as_number(gold)
    if a is not None and b is not None:
        if a == b or _math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0):
            return True
        # as math-verify treats a written decimal: equal when both round alike (0.333333 ~ 1/3)
        decimal = any(c in x for x in (pred, gold) for c in ".eE")
        return decimal and round(float(a), float_rounding) == round(float(b), float_rounding)
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    on_main = threading.current_thread() is threading.main_thread()
    if in_process is False or (in_process is None and not on_main):
        return _thread_helper().call(pred, gold, float_rounding, timeout_s)
    if not on_main:
        raise RuntimeError("in_process=True needs the main thread (signal-based time bound)")

    def overrun(signum, frame):
        raise _Overrun

    previous = signal.signal(signal.SIGALRM, overrun)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return _math_verify_equal(pred, gold, float_rounding)
    except _Overrun as e:
        raise TimeoutError(f"math-verify took over {timeout_s:g}s") from e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_answer(
    response: str,
    gold: str,
    *,
    timeout_s: float = 5.0,
    float_rounding: int = 6,
    in_process: bool | None = None,
) -> MathVerdict:
    """Extract the final answer of `response` and compare it with `gold`."""
    extracted = extract_answer(response)
    if extracted is None or not extracted.strip():
        return MathVerdict("no_answer", None, "no final answer found")
    try:
        ok = answers_match(
            extracted, gold, timeout_s=timeout_s, float_rounding=float_rounding, in_process=in_process
        )
    except TimeoutError as e:
        return MathVerdict("timeout", extracted, str(e))
    return MathVerdict("pass" if ok else "fail", extracted, "" if ok else f"{extracted!r} != {gold!r}")


def check_many(
    pairs: Sequence[tuple[str, str]], *, workers: int = 1, timeout_s: float = 5.0, float_rounding: int = 6
) -> list[MathVerdict]:
    """(response, gold) pairs. `workers > 1` checks them from that many threads, each comparing in
    its own helper process, so they run in parallel and every comparison is time-bounded."""

    def one(pair: tuple[str, str]) -> MathVerdict:
        return check_answer(pair[0], pair[1], timeout_s=timeout_s, float_rounding=float_rounding)

    if workers <= 1 or len(pairs) < 2:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, pairs))


# ---- bounded comparison off the main thread ---------------------------------------------------


class _Helper:
    """A helper process (`python -c ...`, no multiprocessing: nothing re-imports the caller's main
    module) that compares answers on its own main thread; killed when it overruns."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from curation.verify.math import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.ready = False

    def _read(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return self.proc.stdout.readline().decode() if ready else None

    def call(self, pred: str, gold: str, float_rounding: int, timeout_s: float) -> bool:
        if not self.ready:  # the helper says "ready" once sympy and math-verify are imported
            if self._read(STARTUP_TIMEOUT_S) != "ready\n":
                self.close()
                raise RuntimeError("the math-verify helper process did not start")
            self.ready = True
        request = {"pred": pred, "gold": gold, "float_rounding": float_rounding, "timeout_s": timeout_s}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        # the helper bounds itself with a timer; the kill covers hangs inside C code
        line = self._read(timeout_s + 1.0)
        if not line:
            self.close()
            raise TimeoutError(f"math-verify took over {timeout_s:g}s")
        reply = json.loads(line)
        if reply.get("timeout"):
            raise TimeoutError(f"math-verify took over {timeout_s:g}s")
        return bool(reply["equal"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()

    def __del__(self) -> None:  # the owning thread is gone
        try:
            self.close()
        except (OSError, ValueError, AttributeError):
            pass


_local = threading.local()


def _thread_helper() -> _Helper:
    helper = getattr(_local, "helper", None)
    if helper is None or helper.proc.poll() is not None:
        helper = _local.helper = _Helper()
    return helper


def _serve() -> None:
    """The helper's loop: one JSON request per line on stdin, one reply per line on stdout."""
    import math_verify  # noqa: F401  (warm the imports before saying ready)

    out = sys.stdout
    sys.stdout = sys.stderr  # keep library prints off the reply channel
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            equal = answers_match(
                req["pred"],
                req["gold"],
                timeout_s=req["timeout_s"],
                float_rounding=req["float_rounding"],
                in_process=True,
            )
            reply = {"equal": equal}
        except TimeoutError:
            reply = {"timeout": True}
        except Exception:  # noqa: BLE001 - a parse / sympy failure means "not shown equal"
            reply = {"equal": False}
        out.write(json.dumps(reply) + "\n")
        out.flush()
