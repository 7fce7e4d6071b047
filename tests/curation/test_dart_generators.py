"""Generators: replay files, an OpenAI-compatible stub server on 127.0.0.1, a tiny local transformers
model, the simulated generator, and vLLM's absence."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from curation.dart.generators import (
    OpenAIGenerator,
    ReplayGenerator,
    SimulatedGenerator,
    TransformersGenerator,
    build_generator,
    dump_responses,
)
from curation.dart.types import Query
from storage import UserError

QUERIES = [Query("a", "What is 1 + 2?", answer="3"), Query("b", "What is 3 + 4?", answer="7")]


# ---- replay ----------------------------------------------------------------------------------


def test_replay_hands_out_recorded_responses_in_trial_order(tmp_path: Path) -> None:
    rows = [
        {"query_id": "a", "trial": 2, "response": "a2", "correct": True},
        {"query_id": "a", "trial": 0, "response": "a0", "correct": False},
        {"query_id": "b", "trial": 0, "response": "b0"},
        {"query_id": "a", "trial": 1, "response": "a1", "correct": None},
    ]
    path = dump_responses(rows, tmp_path / "replay.jsonl")
    gen = ReplayGenerator.from_file(path)
    first = gen.generate(QUERIES, [2, 5], seed=0)
    assert [r.text for r in first[0]] == ["a0", "a1"] and [r.text for r in first[1]] == ["b0"]
    assert [r.correct for r in first[0]] == [False, None]
    second = gen.generate(QUERIES, 2, seed=1)
    assert [r.text for r in second[0]] == ["a2"] and second[0][0].correct is True
    assert second[1] == []  # exhausted


def test_replay_reads_parquet_and_rejects_bad_files(tmp_path: Path) -> None:
    pd.DataFrame({"query_id": ["a", "a"], "response": ["x", "y"]}).to_parquet(tmp_path / "r.parquet")
    gen = build_generator("replay", replay=str(tmp_path / "r.parquet"))
    assert [r.text for r in gen.generate(QUERIES[:1], 3, seed=0)[0]] == ["x", "y"]
    (tmp_path / "bad.jsonl").write_text('{"query": "a", "response": "x"}\n')
    with pytest.raises(UserError, match="query_id"):
        ReplayGenerator.from_file(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="no such file"):
        ReplayGenerator.from_file(tmp_path / "missing.jsonl")
    (tmp_path / "r.csv").write_text("query_id,response\na,x\n")
    with pytest.raises(UserError, match="jsonl or .parquet"):
        ReplayGenerator.from_file(tmp_path / "r.csv")


# ---- simulated -------------------------------------------------------------------------------


def test_simulated_success_rate_and_determinism() -> None:
    gen = SimulatedGenerator({"a": 0.8, "b": 0.1})
    out = gen.generate(QUERIES, 400, seed=4)
    rate_a = sum(r.correct for r in out[0]) / 400
    rate_b = sum(r.correct for r in out[1]) / 400
    assert 0.7 < rate_a < 0.9 and 0.03 < rate_b < 0.2
    assert all("\\boxed{3}" in r.text for r in out[0] if r.correct)
    assert gen.generate(QUERIES, 5, seed=4)[0] == out[0][:5]


# ---- OpenAI-compatible endpoint ----------------------------------------------------------------


class StubServer:
    """Answers /v1/chat/completions and /v1/completions like an OpenAI-compatible server."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail_next: list[int] = []  # status codes to return before answering normally
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(200, {"data": [{"id": "stub-model"}]})

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, **payload})
                if stub.fail_next:
                    return self._reply(stub.fail_next.pop(0), {"error": {"message": "try again"}})
                prompt = payload["messages"][-1]["content"] if "messages" in payload else payload["prompt"]
                choices = []
                for i in range(payload["n"]):
                    text = f"reply {i} to {prompt}"
                    # every third choice pretends to hit max_tokens
                    reason = "length" if i % 3 == 2 else "stop"
                    choice = {"index": i, "finish_reason": reason}
                    choice.update(
                        {"message": {"role": "assistant", "content": text}}
                        if "messages" in payload
                        else {"text": text}
                    )
                    choices.append(choice)
                self._reply(200, {"choices": choices})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


def test_openai_chat_generation_through_a_stub_server(stub: StubServer) -> None:
    gen = OpenAIGenerator(
        stub.url, "stub-model", temperature=1.6, top_p=0.95, max_new_tokens=64, concurrency=2
    )
    gen.check()
    out = gen.generate(QUERIES, [3, 1], seed=7)
    assert [r.text for r in out[0]] == [f"reply {i} to What is 1 + 2?" for i in range(3)]
    assert [r.truncated for r in out[0]] == [False, False, True]
    assert len(out[1]) == 1
    first = next(r for r in stub.requests if r["n"] == 3)
    assert first["path"] == "/v1/chat/completions" and first["model"] == "stub-model"
    assert first["temperature"] == 1.6 and first["top_p"] == 0.95 and first["max_tokens"] == 64
    gen.close()


def test_openai_completions_api_splits_requests_and_retries_server_errors(stub: StubServer) -> None:
    gen = OpenAIGenerator(stub.url + "/v1", "m", api="completions", n_per_request=2, retries=2)
    stub.fail_next = [503]
    out = gen.generate(QUERIES[:1], 5, seed=0)
    assert len(out[0]) == 5 and out[0][0].text == "reply 0 to What is 1 + 2?"
    posted = [r for r in stub.requests if r["path"] == "/v1/completions"]
    assert [r["n"] for r in posted] == [2, 2, 2, 1]  # the first attempt got the 503 and was retried
    stub.fail_next = [400]
    with pytest.raises(UserError, match="HTTP 400"):
        gen.generate(QUERIES[:1], 1, seed=0)


def test_openai_endpoint_problems_are_user_errors() -> None:
    with pytest.raises(UserError, match="http"):
        OpenAIGenerator("localhost:8000", "m")
    with pytest.raises(UserError, match="no answer"):
        OpenAIGenerator("http://127.0.0.1:9", "m", timeout_s=2).check()


# ---- transformers ----------------------------------------------------------------------------


def test_transformers_generation_counts_seeds_and_truncation(dart_tiny_model_dir: Path) -> None:
    gen = TransformersGenerator(dart_tiny_model_dir, max_new_tokens=6, batch_size=3)
    out = gen.generate(QUERIES, [3, 1], seed=0)
    assert [len(r) for r in out] == [3, 1]
    assert out == gen.generate(QUERIES, [3, 1], seed=0)  # same seed, same samples
    for response in out[0] + out[1]:
        assert response.truncated == (response.num_tokens == 6)
    eos = gen.tokenizer.eos_token_id
    never_stops = TransformersGenerator(
        dart_tiny_model_dir, max_new_tokens=5, generate_kwargs={"suppress_tokens": [eos]}
    )
    assert all(
        r.truncated and r.num_tokens == 5 for rs in never_stops.generate(QUERIES, 2, seed=1) for r in rs
    )
    stops_at_once = TransformersGenerator(
        dart_tiny_model_dir, max_new_tokens=5, generate_kwargs={"sequence_bias": {(eos,): 100.0}}
    )
    assert all(
        not r.truncated and r.text == "" for rs in stops_at_once.generate(QUERIES, 2, seed=1) for r in rs
    )


def test_transformers_model_directory_problems_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        TransformersGenerator(tmp_path / "missing")
    with pytest.raises(UserError, match="config.json"):
        TransformersGenerator(tmp_path)


# ---- vllm / names ----------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_is_a_clear_user_error() -> None:
    with pytest.raises(UserError, match="vLLM is not installed"):
        build_generator("vllm", model_dir="/models/x")


def test_unknown_generators_and_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="use one of"):
        build_generator("magic")
    with pytest.raises(UserError, match="bad options"):
        build_generator("simulated", success={}, colour="blue")
    with pytest.raises(UserError, match="--replay"):
        build_generator("replay")
