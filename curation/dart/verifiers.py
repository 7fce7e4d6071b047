"""Judging generated responses: recorded labels, the math answer checker, or code in the sandbox.

`mode`:
- `auto` (default): a response with recorded correctness (replay, simulated) keeps it; others are
  verified against the query's answer (math) or tests (code);
- `verify`: always verify, ignoring recorded labels;
- `recorded`: only recorded labels (a response without one is an `error`).
Responses cut off by the length limit are wrong (`truncated`) whatever the mode.
Code checks run `workers` sandboxes at a time; math checks run on the calling thread meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from curation.dart.types import Query, Response, Verdict
from curation.verify.sandbox import Limits

MODES = ("auto", "verify", "recorded")


class AnswerVerifier:
    def __init__(
        self,
        mode: str = "auto",
        workers: int = 2,
        math_timeout_s: float = 5.0,
        code_limits: Limits | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"verify mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode, self.workers, self.math_timeout_s = mode, max(1, workers), math_timeout_s
        self.code_limits = code_limits

    def _recorded(self, response: Response) -> Verdict | None:
        if self.mode == "verify" or response.correct is None:
            return None
        return Verdict(bool(response.correct), "pass" if response.correct else "fail", "recorded")

    def verify(self, items: Sequence[tuple[Query, Response]]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(items)
        math_idx, code_idx = [], []
        for i, (query, response) in enumerate(items):
            if response.truncated:
                out[i] = Verdict(False, "truncated", "cut off by the length limit")
            elif (recorded := self._recorded(response)) is not None:
                out[i] = recorded
            elif self.mode == "recorded":
                out[i] = Verdict(False, "error", "no recorded correctness (verify mode: recorded)")
            elif query.test is not None and query.entry_point is not None:
                code_idx.append(i)
            elif query.answer is not None:
                math_idx.append(i)
            else:
                out[i] = Verdict(
                    False, "error", f"query {query.query_id} has no answer or tests to check against"
                )
        if code_idx:
            from curation.verify.code import check_response

            def run_code(i: int) -> Verdict:
                query, response = items[i]
                problem = {"prompt": query.prompt, "test": query.test, "entry_point": query.entry_point}
                result = check_response(problem, response.text, self.code_limits)
                return Verdict(result.correct, result.verdict, result.message)

            with ThreadPoolExecutor(self.workers) as pool:
                futures = {i: pool.submit(run_code, i) for i in code_idx}
                self._check_math(items, math_idx, out)
                for i, future in futures.items():
                    out[i] = future.result()
        else:
            self._check_math(items, math_idx, out)
        return [v for v in out if v is not None]

    def _check_math(self, items, math_idx: list[int], out: list) -> None:
        if not math_idx:
            return
        from curation.verify.math import check_answer

        for i in math_idx:
            query, response = items[i]
            result = check_answer(response.text, query.answer, timeout_s=self.math_timeout_s)
            out[i] = Verdict(result.correct, result.verdict, result.message)
