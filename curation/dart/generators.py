"""Response generators behind one interface: `generate(queries, n, seed) -> list[list[Response]]`.

- `transformers`: a local model directory, batched sampling (temperature, top_p, max_new_tokens);
- `vllm`: the same through vLLM, when it is installed (GPU machines);
- `openai`: any OpenAI-compatible HTTP endpoint (`vllm serve`, TGI, llama.cpp server, ...);
- `replay`: responses generated elsewhere (a JSONL / Parquet file or a frame: query_id, response,
  optional correct / truncated / trial), handed out in order, so recorded samples can be curated again;
- `simulated`: a per-query success probability, for tests and dry runs.

`n` is one count for every query or one per query. A generator may return fewer than asked
(replay runs out): the strategies treat an empty answer as "this query is exhausted".
Responses cut off by the length limit come back with `truncated=True` (they count as wrong).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curation.dart.types import Query, Response
from storage import UserError

GENERATORS = ("transformers", "vllm", "openai", "replay", "simulated")


def _counts(queries: Sequence[Query], n: int | Sequence[int]) -> list[int]:
    counts = [int(n)] * len(queries) if isinstance(n, int | np.integer) else [int(k) for k in n]
    if len(counts) != len(queries):
        raise ValueError(f"{len(counts)} counts for {len(queries)} queries")
    if any(k < 0 for k in counts):
        raise ValueError("sample counts must be non-negative")
    return counts


class Generator(ABC):
    name = "generator"

    @abstractmethod
    def generate(self, queries: Sequence[Query], n: int | Sequence[int], seed: int) -> list[list[Response]]:
        """`n` responses for each query (or `n[i]` for query i); fewer when a source runs out."""

    def describe(self) -> dict[str, Any]:
        """Settings that identify the samples (recorded in the run's parameters)."""
        return {"generator": self.name}

    def close(self) -> None:
        return None


# ---- simulated -------------------------------------------------------------------------------


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


class SimulatedGenerator(Generator):
    """Each response is correct with probability `success[query_id]` (recorded on the response).
    Correct math responses box the query's answer; wrong ones box something else."""

    name = "simulated"

    def __init__(self, success: Mapping[str, float], default: float = 0.0) -> None:
        self.success = dict(success)
        self.default = default

    def generate(self, queries, n, seed):
        out = []
        for query, k in zip(queries, _counts(queries, n), strict=True):
            p = self.success.get(query.query_id, self.default)
            rng = np.random.default_rng([seed, _stable_int(query.query_id)])
            hits = rng.random(k) < p
            answer = query.answer if query.answer is not None else "42"
            out.append(
                [
                    Response(
                        f"Simulated attempt.\nThe answer is \\boxed{{{answer if hit else _wrong(answer)}}}.",
                        correct=bool(hit),
                    )
                    for hit in hits
                ]
            )
        return out

    def describe(self):
        return {"generator": self.name}


def _wrong(answer: str) -> str:
    return f"{answer}1" if not answer.endswith("1") else f"{answer}2"


# ---- replay ----------------------------------------------------------------------------------


class ReplayGenerator(Generator):
    """Recorded responses per query, handed out in order (by `trial` when given, else file order)."""

    name = "replay"

    def __init__(self, frame: pd.DataFrame, source: str = "frame") -> None:
        missing = [c for c in ("query_id", "response") if c not in frame.columns]
        if missing:
            raise UserError(
                f"replay {source}: missing column(s) {', '.join(missing)} "
                f"(columns: {', '.join(map(str, frame.columns))})"
            )
        frame = frame.reset_index(drop=True)
        if frame["response"].isna().any():
            row = int(frame.index[frame["response"].isna()][0]) + 1
            raise UserError(f"replay {source}: row {row}: empty response")
        if "trial" in frame.columns:
            frame = frame.sort_values(["query_id", "trial"], kind="stable")
        self.source = source
        self._queues: dict[str, list[Response]] = {}
        has_correct, has_trunc = "correct" in frame.columns, "truncated" in frame.columns
        for row in frame.itertuples(index=False):
            correct = row.correct if has_correct else None
            correct = None if correct is None or pd.isna(correct) else bool(correct)
            truncated = bool(row.truncated) if has_trunc and not pd.isna(row.truncated) else False
            self._queues.setdefault(str(row.query_id), []).append(
                Response(str(row.response), truncated=truncated, correct=correct)
            )
        self._cursor: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path) -> ReplayGenerator:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--replay {path}: no such file")
        suffix = path.suffix.lower()
        try:
            if suffix in (".jsonl", ".ndjson"):
                frame = pd.read_json(path, lines=True, dtype={"query_id": str})
            elif suffix in (".parquet", ".pq"):
                frame = pd.read_parquet(path)
            else:
                raise UserError(f"--replay {path}: expected a .jsonl or .parquet file")
        except ValueError as e:
            raise UserError(f"--replay {path}: unreadable ({str(e).splitlines()[0]})") from None
        if frame.empty:
            raise UserError(f"--replay {path}: the file holds no responses")
        if "query_id" in frame.columns:
            frame["query_id"] = frame["query_id"].astype(str)
        return cls(frame, source=str(path))

    def available(self, query_id: str) -> int:
        return len(self._queues.get(query_id, [])) - self._cursor.get(query_id, 0)

    def query_ids(self) -> set[str]:
        return set(self._queues)

    def generate(self, queries, n, seed):
        out = []
        with self._lock:
            for query, k in zip(queries, _counts(queries, n), strict=True):
                start = self._cursor.get(query.query_id, 0)
                taken = self._queues.get(query.query_id, [])[start : start + k]
                self._cursor[query.query_id] = start + len(taken)
                out.append(taken)
        return out

    def describe(self):
        return {"generator": self.name, "source": self.source}


# ---- transformers ----------------------------------------------------------------------------


def check_model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"--model {model_dir}: no such directory")
    if not (path / "config.json").exists():
        raise UserError(f"--model {model_dir}: not a model directory (no config.json)")
    return path


class TransformersGenerator(Generator):
    """Sampling from a local Hugging Face causal LM. Prompts go through the tokenizer's chat template
    when it has one (`chat=True`, the default), as a user message; else they are used as they are."""

    name = "transformers"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        temperature: float = 1.0,
        top_p: float = 0.95,
        max_new_tokens: int = 512,
        batch_size: int = 8,
        device: str = "cpu",
        chat: bool = True,
        generate_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from attribution.lm_data import load_tokenizer

        self.path = check_model_dir(model_dir)
        try:
            self.tokenizer = load_tokenizer(self.path)
            self.model = AutoModelForCausalLM.from_pretrained(self.path, attn_implementation="eager")
        except (OSError, ValueError) as e:
            raise UserError(f"--model {model_dir}: cannot load ({str(e).splitlines()[0]})") from None
        self.model.to(device).eval()
        self.tokenizer.padding_side = "left"  # generation continues from the right end
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.batch_size, self.device, self.chat = batch_size, device, chat
        self.generate_kwargs = dict(generate_kwargs or {})
        self._torch = torch

    def _prompt(self, query: Query) -> str:
        if self.chat and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": query.prompt}], tokenize=False, add_generation_prompt=True
            )
        return query.prompt

    def generate(self, queries, n, seed):
        torch = self._torch
        counts = _counts(queries, n)
        rows = [i for i, k in enumerate(counts) for _ in range(k)]  # one row per sample
        texts = [self._prompt(q) for q in queries]
        out: list[list[Response]] = [[] for _ in queries]
        eos = self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        torch.manual_seed(seed)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with torch.no_grad():
                seqs = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **self.generate_kwargs,
                )
            new = seqs[:, enc["input_ids"].shape[1] :].tolist()
            for i, tokens in zip(chunk, new, strict=True):
                end = next((j for j, t in enumerate(tokens) if t in eos_ids), None)
                kept = tokens if end is None else tokens[:end]
                out[i].append(
                    Response(
                        self.tokenizer.decode(kept, skip_special_tokens=True),
                        truncated=end is None,
                        num_tokens=len(kept),
                    )
                )
        return out

    def describe(self):
        return {
            "generator": self.name,
            "model": str(self.path.resolve()),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "chat": self.chat,
        }


# ---- vllm ------------------------------------------------------------------------------------


class VLLMGenerator(Generator):
    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        temperature: float = 1.0,
        top_p: float = 0.95,
        max_new_tokens: int = 512,
        chat: bool = True,
        **llm_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError:
            raise UserError(
                "--generator vllm: vLLM is not installed here (pip install vllm on a GPU "
                "machine), or use --generator transformers / openai"
            ) from None
        self.path = Path(model_dir).expanduser()
        if not self.path.exists():  # a hub name is allowed here: vLLM resolves it itself
            self.path = Path(str(model_dir))
        self._vllm = vllm
        self.llm = vllm.LLM(model=str(model_dir), **llm_kwargs)
        self.temperature, self.top_p, self.max_new_tokens, self.chat = (
            temperature,
            top_p,
            max_new_tokens,
            chat,
        )

    def _prompt(self, query: Query) -> str:
        tokenizer = self.llm.get_tokenizer()
        if self.chat and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": query.prompt}], tokenize=False, add_generation_prompt=True
            )
        return query.prompt

    def generate(self, queries, n, seed):
        counts = _counts(queries, n)
        out: list[list[Response]] = [[] for _ in queries]
        for k in sorted(set(counts) - {0}):  # one call per distinct count: SamplingParams.n is per call
            idx = [i for i, c in enumerate(counts) if c == k]
            params = self._vllm.SamplingParams(
                n=k, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_new_tokens, seed=seed
            )
            results = self.llm.generate([self._prompt(queries[i]) for i in idx], params, use_tqdm=False)
            for i, result in zip(idx, results, strict=True):
                out[i] = [
                    Response(c.text, truncated=c.finish_reason == "length", num_tokens=len(c.token_ids))
                    for c in result.outputs
                ]
        return out

    def describe(self):
        return {
            "generator": self.name,
            "model": str(self.path),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "chat": self.chat,
        }


# ---- OpenAI-compatible HTTP --------------------------------------------------------------------


class OpenAIGenerator(Generator):
    """`/v1/chat/completions` (api="chat") or `/v1/completions` (api="completions") of any
    OpenAI-compatible server. The key, if the server wants one, is read from the environment
    variable named by `api_key_env`. Requests run `concurrency` at a time; 5xx and connection
    errors are retried `retries` times with backoff, 4xx are the user's error."""

    name = "openai"

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api: str = "chat",
        temperature: float = 1.0,
        top_p: float = 0.95,
        max_new_tokens: int = 512,
        concurrency: int = 4,
        n_per_request: int | None = None,
        retries: int = 3,
        timeout_s: float = 300.0,
        api_key_env: str | None = "OPENAI_API_KEY",
    ) -> None:
        import httpx

        if api not in ("chat", "completions"):
            raise UserError(f"openai api {api!r}: use chat or completions")
        if not endpoint.startswith(("http://", "https://")):
            raise UserError(
                f"--endpoint {endpoint!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1"
            )
        base = endpoint.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.model, self.api = model, api
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.concurrency, self.n_per_request, self.retries = max(1, concurrency), n_per_request, retries
        key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self.client = httpx.Client(base_url=self.base, headers=headers, timeout=timeout_s)

    def check(self) -> None:
        """Fail early (UserError) when nothing answers at the endpoint."""
        try:
            self.client.get("/models", timeout=10.0)
        except self._httpx.HTTPError as e:
            raise UserError(f"--endpoint {self.base}: no answer ({type(e).__name__}: {e})") from None

    def _post(self, payload: dict) -> dict:
        path = "/chat/completions" if self.api == "chat" else "/completions"
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                reply = self.client.post(path, json=payload)
            except self._httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if reply.status_code < 400:
                    return reply.json()
                problem = f"HTTP {reply.status_code}: {reply.text[:300]}"
                if reply.status_code < 500 and reply.status_code != 429:
                    raise UserError(f"--endpoint {self.base}{path}: {problem}")
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise UserError(f"--endpoint {self.base}{path}: failed after {self.retries + 1} attempts ({problem})")

    def _one(self, query: Query, k: int, seed: int) -> list[Response]:
        responses: list[Response] = []
        request = 0
        while len(responses) < k:
            n = min(k - len(responses), self.n_per_request or k)
            payload: dict[str, Any] = {
                "model": self.model,
                "n": n,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "max_tokens": self.max_new_tokens,
                "seed": seed + request,
            }
            if self.api == "chat":
                payload["messages"] = [{"role": "user", "content": query.prompt}]
            else:
                payload["prompt"] = query.prompt
            choices = self._post(payload).get("choices") or []
            if not choices:
                raise UserError(f"--endpoint {self.base}: a reply with no choices for query {query.query_id}")
            for choice in choices:
                text = (
                    (choice.get("message") or {}).get("content") if self.api == "chat" else choice.get("text")
                )
                responses.append(Response(text or "", truncated=choice.get("finish_reason") == "length"))
            request += 1
        return responses[:k]

    def generate(self, queries, n, seed):
        counts = _counts(queries, n)
        jobs = [(q, k, seed * 1_000_003 + i) for i, (q, k) in enumerate(zip(queries, counts, strict=True))]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda job: self._one(*job) if job[1] else [], jobs))

    def describe(self):
        return {
            "generator": self.name,
            "endpoint": self.base,
            "model": self.model,
            "api": self.api,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
        }

    def close(self) -> None:
        self.client.close()


def build_generator(kind: str, **options: Any) -> Generator:
    """A generator by name; options are its constructor's keywords (UserError for unknown ones)."""
    if kind == "replay":
        source = options.pop("replay", None)
        if isinstance(source, pd.DataFrame):
            return ReplayGenerator(source, **options)
        if source is None:
            raise UserError("--generator replay needs --replay FILE (JSONL or Parquet: query_id, response)")
        return ReplayGenerator.from_file(source)
    classes: dict[str, type[Generator]] = {
        "transformers": TransformersGenerator,
        "vllm": VLLMGenerator,
        "openai": OpenAIGenerator,
        "simulated": SimulatedGenerator,
    }
    if kind not in classes:
        raise UserError(f"--generator {kind!r}: use one of {', '.join(GENERATORS)}")
    try:
        inspect.signature(classes[kind]).bind(**options)
    except TypeError as e:
        raise UserError(f"--generator {kind}: bad options ({e})") from None
    return classes[kind](**options)


def dump_responses(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write replay records (query_id, response, correct, ...) as JSONL, atomically."""
    from storage.outputs import write_file_atomically

    path = Path(path)
    write_file_atomically(path, "".join(json.dumps(dict(row)) + "\n" for row in rows).encode("utf-8"))
    return path
