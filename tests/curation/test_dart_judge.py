"""The LLM-judge math verifier against a stub OpenAI-compatible server on 127.0.0.1: the prompt it
sends, strict parsing of the judge's reply, rule+judge asking only where the rules abstain, and
endpoint problems as user errors."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from curation.dart.generators import ReplayGenerator
from curation.dart.judge import judge_prompt, parse_judge_reply
from curation.dart.strategies import VRT
from curation.dart.types import Query, Response
from curation.dart.verifiers import AnswerVerifier, build_math_verifier
from storage import UserError


class JudgeStub:
    """Answers /v1/chat/completions with `reply(prompt) -> (text, finish_reason)`; /v1/models."""

    def __init__(self, reply: Callable[[str], tuple[str, str]]) -> None:
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send({"data": [{"id": "judge-model"}]})

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(payload)
                text, reason = reply(payload["messages"][-1]["content"])
                message = {"role": "assistant", "content": text}
                self._send({"choices": [{"index": 0, "finish_reason": reason, "message": message}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fenced_response(prompt: str) -> str:
    tag = re.search(r"^(=== RESPONSE [0-9a-f]{16} ===)$", prompt, re.MULTILINE).group(1)
    return prompt.split(tag)[2].strip() if prompt.count(tag) == 3 else prompt.split(tag)[1].strip()


def reference(prompt: str) -> str:
    return prompt.split("Reference answer:\n", 1)[1].split("\n", 1)[0]


def keyword_judge(prompt: str) -> tuple[str, str]:
    """A stand-in judge: reads the fenced response's last line and compares words with the reference."""
    response, gold = fenced_response(prompt), reference(prompt)
    last = response.strip().splitlines()[-1].lower()
    if "garble" in last:
        return "I think these are probably equivalent, yes.", "stop"
    if "long-winded" in last:
        return "EQUIVAL", "length"
    if "no idea" in last:
        return "NO_ANSWER", "stop"
    return ("**EQUIVALENT**" if gold.lower() in last else "DIFFERENT."), "stop"


@pytest.fixture
def stub() -> Iterator[JudgeStub]:
    server = JudgeStub(keyword_judge)
    yield server
    server.close()


def test_the_prompt_asks_about_final_answers_and_fences_the_response() -> None:
    response = "Some reasoning.\n" * 1000 + "So the answer is a cyclic group of order 4."
    prompt = judge_prompt("Which group is it?", "Z/4Z", response, max_response_chars=200)
    assert "Which group is it?" in prompt and "Reference answer:\nZ/4Z" in prompt
    assert "final answer" in prompt and "EQUIVALENT" in prompt and "NO_ANSWER" in prompt
    assert "a cyclic group of order 4." in prompt and prompt.count("Some reasoning.") < 20  # the end is kept
    tags = set(re.findall(r"^=== RESPONSE [0-9a-f]{16} ===$", prompt, re.MULTILINE))
    assert len(tags) == 1
    assert judge_prompt("p", "g", "r") != judge_prompt("p", "g", "r")  # a fresh tag every time


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("EQUIVALENT", "pass"),
        ("  **EQUIVALENT**\n", "pass"),
        ("`DIFFERENT`.", "fail"),
        ("<think>The reference is 1/2 and the response says 0.5.</think>\nEQUIVALENT", "pass"),
        ("NO_ANSWER", "unknown"),
        ("equivalent", "unknown"),  # the words are exact
        ("NOT EQUIVALENT", "unknown"),
        ("EQUIVALENT\nBoth answers are 12.", "unknown"),
        ("The final answers are EQUIVALENT", "unknown"),
        ("EQUIVALENT DIFFERENT", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
        ("<think>unfinished reasoning EQUIVALENT", "unknown"),
    ],
)
def test_the_judges_reply_is_parsed_strictly(reply: str | None, verdict: str) -> None:
    assert parse_judge_reply(reply)[0] == verdict
    assert parse_judge_reply("EQUIVALENT", truncated=True)[0] == "unknown"


QUERIES = [
    Query("g", "Which group of order 4 is generated by i under multiplication?", answer="cyclic"),
    Query("t", "Name the theorem about right triangles.", answer="Pythagorean"),
]


def test_judge_verdicts_through_a_stub_server(stub: JudgeStub) -> None:
    verifier = AnswerVerifier(
        mode="verify", math_verifier=build_math_verifier("judge", endpoint=stub.url, model="judge-model")
    )
    items = [
        (QUERIES[0], Response("The powers of i are i, -1, -i, 1.\nIt is the cyclic group of order 4.")),
        (QUERIES[0], Response("It is the Klein four-group.")),
        (QUERIES[1], Response("This is the Pythagorean theorem.")),
        (QUERIES[1], Response("I have no idea.")),
        (QUERIES[1], Response("A garble of words.")),
        (QUERIES[1], Response("A long-winded answer.")),
        (QUERIES[1], Response("Pythagorean, but cut", truncated=True)),  # never sent
    ]
    verdicts = verifier.verify(items)
    assert [v.verdict for v in verdicts] == [
        "pass",
        "fail",
        "pass",
        "unknown",
        "unknown",
        "unknown",
        "truncated",
    ]
    assert [v.correct for v in verdicts] == [True, False, True, False, False, False, False]
    assert "unreadable reply" in verdicts[4].message and "cut off" in verdicts[5].message
    assert len(stub.requests) == 6
    # requests run concurrently: find the first response's by its content
    sent = next(r for r in stub.requests if "order 4." in fenced_response(r["messages"][-1]["content"]))
    assert sent["model"] == "judge-model" and sent["temperature"] == 0.0 and sent["n"] == 1
    assert all(r["temperature"] == 0.0 and r["model"] == "judge-model" for r in stub.requests)
    content = sent["messages"][-1]["content"]
    assert "Reference answer:\ncyclic" in content and "powers of i" in fenced_response(content)
    assert verifier.describe()["math_verifier"] == "judge"


def test_rule_plus_judge_asks_the_judge_only_where_the_rules_abstain(stub: JudgeStub) -> None:
    math_verifier = build_math_verifier("rule+judge", endpoint=stub.url, model="judge-model")
    query = Query("n", "How many?", answer="12")
    items = [
        (query, Response("So the answer is \\boxed{12}.")),  # rules: pass
        (query, Response("Therefore, there are 13 ways.")),  # rules: fail
        (query, Response("We tried 3, 4 and 5 and found 12 works")),  # rules: several values
        (query, Response("no idea")),
    ]
    verdicts = AnswerVerifier(mode="verify", math_verifier=math_verifier).verify(items)
    assert [v.verdict for v in verdicts] == ["pass", "fail", "pass", "unknown"]
    assert [v.message.startswith("judge") for v in verdicts] == [False, False, True, True]
    assert len(stub.requests) == 2  # only the two the rules could not decide


def test_a_dart_run_with_the_judge_keeps_only_what_it_accepts(stub: JudgeStub) -> None:
    frame = pd.DataFrame(
        {"query_id": ["g", "g", "g"], "response": ["the cyclic group", "Klein four-group", "no idea"]}
    )
    verifier = AnswerVerifier(
        mode="verify", math_verifier=build_math_verifier("judge", endpoint=stub.url, model="m")
    )
    result = VRT(n_per_query=3).run(QUERIES[:1], ReplayGenerator(frame), verifier)
    assert result.trials["kept"].tolist() == [True, False, False]
    assert result.summary()["abstained"] == 1


def test_verifier_choices_and_endpoint_problems_are_user_errors() -> None:
    assert build_math_verifier().describe() == {"math_verifier": "rule"}
    with pytest.raises(UserError, match="use one of"):
        build_math_verifier("oracle")
    with pytest.raises(UserError, match="needs --endpoint"):
        build_math_verifier("judge", model="m")
    with pytest.raises(UserError, match="takes no endpoint"):
        build_math_verifier("rule", endpoint="http://127.0.0.1:9")
    with pytest.raises(UserError, match="no answer"):
        build_math_verifier("judge", endpoint="http://127.0.0.1:9", model="m", timeout_s=2.0)
    with pytest.raises(UserError, match="bad judge options"):
        build_math_verifier("judge", endpoint="http://127.0.0.1:9", model="m", colour="blue")


def test_judge_options_reach_the_client(stub: JudgeStub) -> None:
    verifier = build_math_verifier(
        "judge", endpoint=stub.url, model="m", max_tokens=512, request_timeout_s=7.0, concurrency=1
    )
    assert verifier.judge.client.max_new_tokens == 512 and verifier.judge.client.concurrency == 1
    assert verifier.judge.client.client.timeout.read == 7.0
