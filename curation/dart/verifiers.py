"""Judging generated responses: recorded labels, the math answer checker, or code in the sandbox.

`mode`:
- `auto` (default): a response with recorded correctness (replay, simulated) keeps it; others are
  verified against the query's answer (math) or tests (code);
- `verify`: always verify, ignoring recorded labels;
- `recorded`: only recorded labels (a response without one is an `error`).
Responses cut off by the length limit are wrong (`truncated`) whatever the mode.

Math answers are checked by a `MathVerifier` (`build_math_verifier`):
- `rule` (default): `curation.verify.math` (final-answer extraction, exact and symbolic
  comparison); `unknown` where it cannot tell;
- `judge`: an LLM judge behind an OpenAI-compatible endpoint (`curation.dart.judge`);
- `rule+judge`: the rules first, the judge only for the responses they abstain on.
Verdicts: pass | fail | unknown (math), pass | fail | timeout | error (code), truncated, error.
Only `pass` is correct: `unknown` counts as not correct, and the strategies count it as abstained.
Code checks run `workers` sandboxes at a time; math checks run on the calling thread meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from curation.dart.types import Query, Response, Verdict
from curation.verify.sandbox import Limits

MODES = ("auto", "verify", "recorded")
MATH_VERIFIERS = ("rule", "judge", "rule+judge")


class RuleMathVerifier:
    """The rule-based math checker (`curation.verify.math.check_answer`)."""

    name = "rule"

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s

    def check_many(self, items: Sequence[tuple[Query, Response]]) -> list[Verdict]:
        from curation.verify.math import check_answer

        out = []
        for query, response in items:
            result = check_answer(response.text, query.answer, timeout_s=self.timeout_s)
            out.append(Verdict(result.correct, result.verdict, result.message))
        return out

    def describe(self) -> dict[str, Any]:
        return {"math_verifier": self.name}


class JudgeMathVerifier:
    """An LLM judge (`curation.dart.judge.LLMJudge`); with `rules_first`, only for the responses the
    rule-based checker abstains on."""

    def __init__(self, judge, rules_first: bool = False, timeout_s: float = 5.0) -> None:
        self.judge, self.rules_first = judge, rules_first
        self.rules = RuleMathVerifier(timeout_s)
        self.name = "rule+judge" if rules_first else "judge"

    def check_many(self, items: Sequence[tuple[Query, Response]]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(items)
        if self.rules_first:
            verdicts = list(self.rules.check_many(items))
        ask = [i for i, v in enumerate(verdicts) if v is None or v.verdict == "unknown"]
        judged = self.judge.judge([(items[i][0].prompt, items[i][0].answer, items[i][1].text) for i in ask])
        for i, (verdict, message) in zip(ask, judged, strict=True):
            verdicts[i] = Verdict(verdict == "pass", verdict, message)
        return verdicts

    def describe(self) -> dict[str, Any]:
        return {"math_verifier": self.name, **self.judge.describe()}


def build_math_verifier(
    kind: str = "rule",
    *,
    endpoint: str | None = None,
    model: str | None = None,
    timeout_s: float = 5.0,
    check: bool = True,
    **judge_options: Any,
) -> RuleMathVerifier | JudgeMathVerifier:
    """A math verifier by name. `judge` and `rule+judge` need `endpoint` (an OpenAI-compatible URL)
    and `model` (the served model's name); `judge_options` go to `LLMJudge` (max_tokens,
    concurrency, retries, request_timeout_s, api_key_env, max_response_chars). `timeout_s` bounds
    each rule-based comparison. With `check`, an endpoint that does not answer is a UserError here,
    before any sampling."""
    from storage import UserError

    if kind not in MATH_VERIFIERS:
        raise UserError(f"--verifier {kind!r}: use one of {', '.join(MATH_VERIFIERS)}")
    if kind == "rule":
        if endpoint or model or judge_options:
            raise UserError("--verifier rule takes no endpoint, model or judge options")
        return RuleMathVerifier(timeout_s)
    if not endpoint or not model:
        raise UserError(f"--verifier {kind} needs --endpoint URL and a model name for the judge")
    import inspect

    from curation.dart.judge import LLMJudge

    try:
        inspect.signature(LLMJudge).bind(endpoint, model, **judge_options)
    except TypeError as e:
        raise UserError(f"--verifier {kind}: bad judge options ({e})") from None
    judge = LLMJudge(endpoint, model, **judge_options)
    if check:
        judge.check()
    return JudgeMathVerifier(judge, rules_first=kind == "rule+judge", timeout_s=timeout_s)


class AnswerVerifier:
    def __init__(
        self,
        mode: str = "auto",
        workers: int = 2,
        math_timeout_s: float = 5.0,
        code_limits: Limits | None = None,
        math_verifier: RuleMathVerifier | JudgeMathVerifier | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"verify mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode, self.workers, self.math_timeout_s = mode, max(1, workers), math_timeout_s
        self.code_limits = code_limits
        self.math = math_verifier or RuleMathVerifier(math_timeout_s)

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
        if math_idx:
            for i, verdict in zip(math_idx, self.math.check_many([items[i] for i in math_idx]), strict=True):
                out[i] = verdict

    def describe(self) -> dict[str, Any]:
        """Settings that identify the verdicts (for the run's parameters)."""
        return {"verify": self.mode, **self.math.describe()}
