"""Ingest: files of examples (JSONL, JSON, Parquet, CSV, a `datasets` save_to_disk directory)
into the lake's `examples` table, with column mapping, chat format and stable ids.

Everything is read and validated before the lake is touched: a bad file writes nothing.
Re-ingesting identical content is a no-op; changed content becomes a new dataset version.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.errors import UserError
from storage.lake import Lake
from storage.schemas import TABLES

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DIFFICULTY_WORDS = {"easy": 1.0, "medium": 3.0, "hard": 5.0}
FORMATS = ("jsonl", "json", "parquet", "csv", "hf")


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


@dataclass
class IngestResult:
    dataset: str
    version: str
    run_id: str
    rows: int
    unchanged: bool
    domains: dict[str, int]


# ------------------------------------------------------------------------------- reading
def detect_format(path: Path) -> str:
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        ):
            return "hf"
        raise UserError(f"{path}: a directory, but not a Hugging Face dataset saved with save_to_disk")
    suffix = "".join(path.suffixes[-1:]).lower()
    by_suffix = {
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "json",
        ".parquet": "parquet",
        ".pq": "parquet",
        ".csv": "csv",
    }
    if suffix not in by_suffix:
        raise UserError(f"{path}: unknown file type {suffix or '(none)'}; use --format {'|'.join(FORMATS)}")
    return by_suffix[suffix]


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: not valid UTF-8 (byte {exc.start})") from None


def read_rows(path: Path, fmt: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise UserError(f"{path}: line {number}: malformed JSON ({_json_reason(exc)})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    elif fmt == "json":
        try:
            data = json.loads(_read_text(path))
        except (json.JSONDecodeError, RecursionError) as exc:
            where = f"line {exc.lineno}: " if isinstance(exc, json.JSONDecodeError) else ""
            raise UserError(f"{path}: {where}malformed JSON ({_json_reason(exc)})") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{path}: expected a JSON array of objects")
        rows = data
    elif fmt == "csv":
        text = _read_text(path)
        try:
            csv.field_size_limit(1 << 30)
            rows = [dict(r) for r in csv.DictReader(text.splitlines())]
        except csv.Error as exc:
            raise UserError(f"{path}: malformed CSV ({exc})") from None
        for number, row in enumerate(rows, start=2):
            if None in row or any(v is None for v in row.values()):
                raise UserError(f"{path}: line {number}: wrong number of fields")
            for key, value in row.items():  # CSV has no nulls: an empty cell is a missing value
                if value == "":
                    row[key] = None
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    else:
        rows = _read_hf(path, split)
    if not rows:
        raise UserError(f"{path}: the file holds no examples")
    return rows


def _json_reason(exc: Exception) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"


def _read_hf(path: Path, split: str | None) -> list[dict[str, Any]]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable saved dataset ({str(exc).splitlines()[0]})") from None
    if isinstance(data, datasets.DatasetDict):
        if split is None:
            if len(data) != 1:
                raise UserError(f"{path}: has splits {', '.join(data)}; choose one with --split")
            split = next(iter(data))
        if split not in data:
            raise UserError(f"--split {split}: {path} has splits {', '.join(data)}")
        data = data[split]
    return data.to_list()


# ------------------------------------------------------------------------------- normalising
def _text(value: Any, where: str, column: str, required: bool) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise UserError(f"{where}: column {column!r} is empty")
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: column {column!r} must be text, got {type(value).__name__}")
    return value


def _difficulty(value: Any, where: str, column: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise UserError(f"{where}: column {column!r} must be a number or easy/medium/hard, got a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and value.strip().lower() in DIFFICULTY_WORDS:
        number = DIFFICULTY_WORDS[value.strip().lower()]
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(
                f"{where}: column {column!r} must be a number or easy/medium/hard, got {str(value)[:40]!r}"
            ) from None
    if not math.isfinite(number):
        raise UserError(f"{where}: column {column!r} must be a finite number")
    return number


def _messages(value: Any, where: str, column: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
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


def _id_column(rows: list[dict], columns: ColumnMap) -> str | None:
    if columns.id is not None:
        return columns.id
    for candidate in ("id", "example_id", "task_id"):
        if candidate in rows[0]:
            return candidate
    return None


def normalize(rows: list[dict[str, Any]], dataset: str, columns: ColumnMap, source: str) -> list[dict]:
    """Source rows to `examples` records (without version / run_id). Raises UserError naming the row."""
    first = rows[0]
    chat = columns.messages in first and (columns.prompt not in first or columns.response not in first)
    if not chat:
        for column in (columns.prompt, columns.response):
            if column not in first:
                raise UserError(
                    f"{source}: missing required column {column!r} (columns: {', '.join(map(str, first))}); "
                    "map it with --prompt-col / --response-col or give a messages column"
                )
    id_column = _id_column(rows, columns)
    if columns.id is not None and columns.id not in first:
        raise UserError(f"{source}: --id-col {columns.id!r} is not a column")
    known = {
        columns.prompt,
        columns.response,
        columns.messages,
        columns.domain,
        columns.difficulty,
        columns.answer,
        id_column,
    }
    records, seen = [], {}
    for index, row in enumerate(rows):
        where = f"{source}: row {index + 1}"
        if chat:
            messages = _messages(row.get(columns.messages), where, columns.messages)
            if messages[-1]["role"] != "assistant":
                raise UserError(f"{where}: the last message must be the assistant's response")
            response = messages[-1]["content"]
            prompt = "\n\n".join(m["content"] for m in messages[:-1] if m["role"] != "system")
        else:
            prompt = _text(row.get(columns.prompt), where, columns.prompt, required=True)
            response = _text(row.get(columns.response), where, columns.response, required=True)
            if columns.messages in row and row[columns.messages] is not None:
                messages = _messages(row[columns.messages], where, columns.messages)
            else:
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if id_column is not None:
            raw_id = row.get(id_column)
            if raw_id is None or raw_id == "" or isinstance(raw_id, dict | list | bool):
                raise UserError(f"{where}: column {id_column!r} must hold an id, got {raw_id!r}")
            example_id = str(raw_id)
        else:
            example_id = content_id(prompt, response)
        if example_id in seen:
            raise UserError(
                f"{source}: duplicate example id {example_id!r} in rows {seen[example_id] + 1} and {index + 1}"
            )
        seen[example_id] = index
        domain = columns.domain_value or _text(row.get(columns.domain), where, columns.domain, required=False)
        meta = {k: v for k, v in row.items() if k not in known}
        meta_json = json.dumps(meta, sort_keys=True, default=str, ensure_ascii=False) if meta else "{}"
        answer = row.get(columns.answer)
        records.append(
            {
                "dataset": dataset,
                "example_id": example_id,
                "row_index": index,
                "domain": domain,
                "difficulty": _difficulty(row.get(columns.difficulty), where, columns.difficulty),
                "prompt": prompt,
                "response": response,
                "messages": messages,
                "answer": None if answer is None else str(answer),
                "meta": meta_json,
            }
        )
    return records


EXAMPLE_COLUMNS = TABLES["examples"].remove(0).remove(1)  # without run_id and version


def records_table(records: list[dict]) -> pa.Table:
    columns = {f.name: pa.array([r[f.name] for r in records], type=f.type) for f in EXAMPLE_COLUMNS}
    return pa.table(columns, schema=EXAMPLE_COLUMNS)


def dataset_version(table: pa.Table) -> str:
    """A content hash of the normalised examples (Arrow IPC bytes are deterministic for equal data)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:12]


# ------------------------------------------------------------------------------- the stage
def ingest(
    lake: Lake,
    path: str | Path,
    dataset: str,
    columns: ColumnMap | None = None,
    fmt: str | None = None,
    split: str | None = None,
) -> IngestResult:
    if not DATASET_NAME.match(dataset or ""):
        raise UserError(f"--dataset {dataset!r}: use letters, digits, '_', '.', '-' (at most 128)")
    columns = columns or ColumnMap()
    path = Path(path)
    rows = read_rows(path, fmt, split)
    return ingest_records(lake, normalize(rows, dataset, columns, str(path)), dataset, columns, str(path))


def ingest_records(
    lake: Lake, records: list[dict], dataset: str, columns: ColumnMap, source: str
) -> IngestResult:
    """Write already-normalised records as a dataset version (no-op when the version exists)."""
    table = records_table(records)
    version = dataset_version(table)
    params = {"dataset": dataset, "columns": asdict(columns)}
    with lake.run("ingest", "examples", params=params, inputs={"version": version}) as run:
        if not run.complete:
            run.write(
                "examples", table.add_column(1, "version", pa.array([version] * len(table), pa.string()))
            )
        unchanged = run.complete
    domains: dict[str, int] = {}
    for record in records:
        domains[record["domain"] or "(none)"] = domains.get(record["domain"] or "(none)", 0) + 1
    return IngestResult(dataset, version, run.run_id, len(records), unchanged, domains)
