"""Ingest's reference normaliser: source rows (Python dicts) to `examples` records, one row at a time.

This is the definition of what ingest stores. The columnar path (`storage.ingest_columnar`) computes
the same records for the common shapes of a file in bulk and hands anything else to this one, which
also names the first bad row (its line in a JSONL or CSV file, its row elsewhere) and the field.

A `Plan` holds what the file's first row decides and every later row must agree with: chat format or
prompt/response columns, and which column holds the ids. Ids are detected over all rows: a row that
has an id column the first row lacks (`id`, `example_id`, `task_id`, in that order of preference) is
an error, not a silent switch to content hashes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from storage.errors import UserError, shorten
from storage.schemas import MESSAGE as MESSAGE_TYPE
from storage.schemas import TABLES

DIFFICULTY_WORDS = {"easy": 1.0, "medium": 3.0, "hard": 5.0}
ID_CANDIDATES = ("id", "example_id", "task_id")
EXAMPLE_COLUMNS = TABLES["examples"].remove(0).remove(1)  # without run_id and version
__all__ = [
    "MESSAGE_TYPE",
    "ColumnMap",
    "Plan",
    "content_id",
    "normalize_block",
    "normalize_row",
    "records_table",
]


@dataclass(frozen=True)
class ColumnMap:
    """Which source columns hold what. `domain` may instead be a constant for the whole file."""

    prompt: str = "prompt"
    response: str = "response"
    messages: str = "messages"
    domain: str = "domain"
    difficulty: str = "difficulty"
    id: str | None = None  # None: use `id` / `example_id` / `task_id` if present, else a content hash
    answer: str = "answer"
    domain_value: str | None = None


@dataclass(frozen=True)
class Plan:
    """What the first row decides for the whole file."""

    dataset: str
    columns: ColumnMap
    source: str
    chat: bool
    id_column: str | None
    known: frozenset[str]

    @classmethod
    def from_first_row(cls, keys: Sequence[str], dataset: str, columns: ColumnMap, source: str) -> Plan:
        first = set(keys)
        chat = columns.messages in first and (columns.prompt not in first or columns.response not in first)
        if not chat:
            for column in (columns.prompt, columns.response):
                if column not in first:
                    shown = shorten(", ".join(map(str, keys)), 200)[1:-1]
                    raise UserError(
                        f"{source}: missing required column {column!r} (columns: {shown}); "
                        "map it with --prompt-col / --response-col or give a messages column"
                    )
        if columns.id is not None:
            if columns.id not in first:
                raise UserError(f"{source}: --id-col {columns.id!r} is not a column")
            id_column = columns.id
        else:
            id_column = next((c for c in ID_CANDIDATES if c in first), None)
        known = {
            columns.prompt,
            columns.response,
            columns.messages,
            columns.domain,
            columns.difficulty,
            columns.answer,
            id_column,
        }
        return cls(dataset, columns, source, chat, id_column, frozenset(k for k in known if k is not None))

    @property
    def rival_ids(self) -> tuple[str, ...]:
        """Id columns a row may not have: those preferred over the chosen one (all, when none is)."""
        if self.columns.id is not None:
            return ()
        if self.id_column is None:
            return ID_CANDIDATES
        return ID_CANDIDATES[: ID_CANDIDATES.index(self.id_column)]


# ------------------------------------------------------------------------------- values
def _given(value: Any) -> bool:
    """Whether a cell holds a value: None and NaN (a missing cell in CSV or a float column) do not."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _text(value: Any, where: str, column: str, required: bool) -> str | None:
    if not _given(value):
        if required:
            raise UserError(f"{where}: column {column!r} is empty")
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: column {column!r} must be text, got {type(value).__name__}")
    return value


def difficulty_value(value: Any, where: str, column: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise UserError(f"{where}: column {column!r} must be a number or easy/medium/hard, got a boolean")
    if isinstance(value, str) and value.strip().lower() in DIFFICULTY_WORDS:
        return DIFFICULTY_WORDS[value.strip().lower()]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(
            f"{where}: column {column!r} must be a number or easy/medium/hard, got {shorten(value, 40)}"
        ) from None
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise UserError(f"{where}: column {column!r} must be a finite number, got {shorten(value, 40)}")
    return number


def _messages(value: Any, where: str, column: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise UserError(f"{where}: column {column!r} must be a list of {{role, content}}") from None
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: column {column!r} must be a non-empty list of {{role, content}}")
    out = []
    for message in value:
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise UserError(f"{where}: column {column!r}: each message needs text 'role' and 'content'")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def content_id(prompt: str, response: str) -> str:
    return hashlib.sha256(f"{prompt}\x00{response}".encode()).hexdigest()[:16]


def meta_json(meta: Mapping[str, Any]) -> str:
    """Every other source column as one JSON object (keys sorted, non-ASCII kept)."""
    return json.dumps(meta, sort_keys=True, default=str, ensure_ascii=False) if meta else "{}"


# ------------------------------------------------------------------------------- rows
def _check_form(row: Mapping[str, Any], where: str, plan: Plan) -> None:
    """Refuse a row of the other form than the file's, which would otherwise read as an empty column. A
    file is read as pairs when it has prompt and response columns (in JSONL: keys of its first row), else
    as chat `messages`."""
    columns = plan.columns
    prompt, response, messages = (
        shorten(c, 40) for c in (columns.prompt, columns.response, columns.messages)
    )
    pair = f"{prompt} and {response}"
    has_prompt, has_response = _given(row.get(columns.prompt)), _given(row.get(columns.response))
    has_messages = _given(row.get(columns.messages))
    if plan.chat and has_prompt and has_response and not has_messages:
        raise UserError(
            f"{where}: has {pair} but no {messages}, which this file is read as (its first row has "
            f"{messages} and not {pair}): give every row the same form"
        )
    if not plan.chat and has_messages and not has_prompt and not has_response:
        raise UserError(
            f"{where}: has {messages} but no {pair}, which this file is read as (it has those columns): "
            "give every row the same form, or drop those columns to read it as chat"
        )


def _prompt_response(row: Mapping[str, Any], where: str, plan: Plan) -> tuple[str, str, list[dict]]:
    columns = plan.columns
    _check_form(row, where, plan)
    if plan.chat:
        messages = _messages(row.get(columns.messages), where, columns.messages)
        if messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last message must be the assistant's response")
        prompt = "\n\n".join(m["content"] for m in messages[:-1] if m["role"] != "system")
        return prompt, messages[-1]["content"], messages
    prompt = _text(row.get(columns.prompt), where, columns.prompt, required=True)
    response = _text(row.get(columns.response), where, columns.response, required=True)
    if row.get(columns.messages) is not None:
        messages = _messages(row[columns.messages], where, columns.messages)
    else:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return prompt, response, messages


def _example_id(row: Mapping[str, Any], where: str, plan: Plan, prompt: str, response: str) -> str:
    for rival in plan.rival_ids:
        if rival in row:
            first = f"the first row has {plan.id_column!r}" if plan.id_column else "the first row has none"
            raise UserError(
                f"{where}: has an id column {rival!r} but {first}: give every row the same id column "
                "(or choose one with --id-col)"
            )
    if plan.id_column is None:
        return content_id(prompt, response)
    raw_id = row.get(plan.id_column)
    if raw_id is None or raw_id == "" or isinstance(raw_id, dict | list | bool):
        raise UserError(f"{where}: column {plan.id_column!r} must hold an id, got {shorten(raw_id)}")
    if isinstance(raw_id, float) and not math.isfinite(raw_id):
        raise UserError(f"{where}: column {plan.id_column!r} must hold an id, got {raw_id}")
    return str(raw_id)


def normalize_row(row: Mapping[str, Any], index: int, where: str, plan: Plan) -> dict[str, Any]:
    """One source row as an `examples` record (without version / run_id); UserError names `where`."""
    if not isinstance(row, Mapping):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    columns = plan.columns
    prompt, response, messages = _prompt_response(row, where, plan)
    domain = columns.domain_value or _text(row.get(columns.domain), where, columns.domain, required=False)
    meta = {k: v for k, v in row.items() if k not in plan.known}
    try:
        meta_text = meta_json(meta)
    except (ValueError, RecursionError, TypeError) as exc:
        raise UserError(
            f"{where}: a value of another column cannot be stored ({shorten(str(exc), 60)})"
        ) from None
    answer = row.get(columns.answer)
    return {
        "dataset": plan.dataset,
        "example_id": _example_id(row, where, plan, prompt, response),
        "row_index": index,
        "domain": domain,
        "difficulty": difficulty_value(row.get(columns.difficulty), where, columns.difficulty),
        "prompt": prompt,
        "response": response,
        "messages": messages,
        "answer": None if answer is None else str(answer),
        "meta": meta_text,
    }


def records_table(records: list[dict]) -> pa.Table:
    columns = {f.name: pa.array([r[f.name] for r in records], type=f.type) for f in EXAMPLE_COLUMNS}
    return pa.table(columns, schema=EXAMPLE_COLUMNS)


def _bad_text(value: Any) -> bool:
    """Whether a str (anywhere inside value) cannot be UTF-8: a lone surrogate such as "\\ud800"."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_bad_text(k) or _bad_text(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_bad_text(v) for v in value)
    return False


def normalize_block(
    rows: Sequence[Mapping[str, Any]], first_index: int, where: Callable[[int], str], plan: Plan
) -> tuple[pa.Table, list[dict]]:
    """Rows `first_index`, `first_index + 1`, ... as an `examples` table (and the records)."""
    records = []
    for i, row in enumerate(rows):
        try:
            records.append(normalize_row(row, first_index + i, where(i), plan))
        except UnicodeEncodeError:  # hashing a text with a lone surrogate
            _refuse_bad_text([row], lambda _, i=i: where(i))
            raise
    try:
        return records_table(records), records
    except UnicodeEncodeError:
        _refuse_bad_text(rows, where)
        raise


def _refuse_bad_text(rows: Sequence[Mapping[str, Any]], where: Callable[[int], str]) -> None:
    """UserError naming the first row and column holding text that is not valid Unicode."""
    for i, row in enumerate(rows):
        for key, value in row.items():
            if _bad_text(key) or _bad_text(value):
                raise UserError(
                    f"{where(i)}: column {shorten(key)}: text that is not valid Unicode (a lone "
                    "surrogate such as \\ud800)"
                ) from None
