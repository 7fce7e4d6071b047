"""Ingest's columnar normaliser: a block of source rows to `examples` records in bulk (pyarrow compute
and DuckDB), giving exactly what the reference normaliser (`storage.ingest_rows`) gives.

It handles the common shapes: prompt / response text columns without nulls; ids from an integer or
text column, or content hashes; domain text; difficulty as numbers or easy/medium/hard; answer text
or integers; other columns of text, integers or booleans (stored as the same JSON text
`json.dumps(..., sort_keys=True, ensure_ascii=False)` writes). For anything else (chat messages,
nested or floating-point extra columns, a value the reference would refuse, a null that may be a
missing key) it declines (returns None) and the block goes through the reference normaliser, which
stores it or names the bad row. Declining is never wrong, only slower.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.catalog import scratch_cursor
from storage.ingest_rows import DIFFICULTY_WORDS, EXAMPLE_COLUMNS, MESSAGE_TYPE, Plan

_NUMBER = r"^-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_WORD = "^(" + "|".join(DIFFICULTY_WORDS) + ")$"
# json.dumps escapes these with a backslash and letter; other control characters as \u00XX (rare:
# the block declines instead).
_JSON_ESCAPES = [
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\b", "\\b"),
    ("\f", "\\f"),
]
_OTHER_CONTROL = "[\\x00-\\x07\\x0b\\x0e-\\x1f]"


class _Decline(Exception):
    """This block is not for the columnar path."""


def contiguous(column: pa.ChunkedArray) -> pa.Array:
    """`column` as one array: its only chunk as it is (ChunkedArray.combine_chunks copies even one
    chunk, and every text column of a block would be copied once more for nothing)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _column(table: pa.Table, name: str) -> pa.Array | None:
    if name not in table.column_names:
        return None
    column = contiguous(table[name])
    if pa.types.is_dictionary(column.type):  # e.g. a pandas categorical written to Parquet
        column = column.dictionary_decode()
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        column = column.cast(pa.string())
    return column


def _text(table: pa.Table, name: str, required: bool) -> pa.Array | None:
    column = _column(table, name)
    if column is None or pa.types.is_null(column.type):
        if required:
            raise _Decline
        return None
    if not pa.types.is_string(column.type) or (required and column.null_count):
        raise _Decline
    return column


def _ids(table: pa.Table, plan: Plan, prompt: pa.Array, response: pa.Array) -> pa.Array:
    if plan.id_column is None:
        con = scratch_cursor()
        try:
            pairs = pa.table({"p": prompt, "r": response})  # noqa: F841 - read by DuckDB below
            hashed = con.sql("SELECT left(sha256(p || chr(0) || r), 16) AS h FROM pairs").to_arrow_table()
        finally:
            con.close()
        return contiguous(hashed["h"]).cast(pa.string())
    column = _column(table, plan.id_column)
    if column is None or column.null_count:
        raise _Decline
    if pa.types.is_integer(column.type):
        return column.cast(pa.string())
    if pa.types.is_string(column.type) and not pc.any(pc.equal(column, "")).as_py():
        return column
    raise _Decline


def _difficulty(table: pa.Table, name: str) -> pa.Array:
    column = _column(table, name)
    n = table.num_rows
    if column is None or pa.types.is_null(column.type):
        return pa.nulls(n, pa.float64())
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.cast(pa.float64(), safe=False)
    elif pa.types.is_string(column.type):
        words = pc.match_substring_regex(column, _WORD)
        numbers = pc.match_substring_regex(column, _NUMBER)
        empty = pc.equal(column, "")
        ok = pc.fill_null(pc.or_(pc.or_(words, numbers), empty), True)
        if not pc.all(ok).as_py():
            raise _Decline
        mapped = pa.array([DIFFICULTY_WORDS[w] for w in DIFFICULTY_WORDS], pa.float64())
        word_index = pc.index_in(column, value_set=pa.array(list(DIFFICULTY_WORDS)))
        as_word = pc.take(mapped, word_index)
        as_number = pc.cast(pc.if_else(numbers, column, pa.scalar(None, pa.string())), pa.float64())
        values = pc.if_else(pc.fill_null(words, False), as_word, as_number)
    else:
        raise _Decline
    finite = pc.is_finite(values)
    if not pc.all(pc.fill_null(finite, True)).as_py():
        raise _Decline
    return values


def _answer(table: pa.Table, name: str) -> pa.Array:
    column = _column(table, name)
    if column is None or pa.types.is_null(column.type):
        return pa.nulls(table.num_rows, pa.string())
    if pa.types.is_string(column.type):
        return column
    if pa.types.is_integer(column.type):
        return column.cast(pa.string())
    raise _Decline


def _json_string(column: pa.Array) -> pa.Array:
    if pc.any(pc.match_substring_regex(column, _OTHER_CONTROL)).as_py():
        raise _Decline
    for char, escaped in _JSON_ESCAPES:
        if pc.any(pc.match_substring(column, char)).as_py():
            column = pc.replace_substring(column, char, escaped)
    return pc.binary_join_element_wise('"', column, '"', "")


def _json_value(column: pa.Array) -> pa.Array:
    if pa.types.is_string(column.type):
        text = _json_string(column)
    elif pa.types.is_integer(column.type):
        text = column.cast(pa.string())
    elif pa.types.is_boolean(column.type):
        text = pc.if_else(column, "true", "false")
    else:
        raise _Decline
    return pc.fill_null(text, "null")


def _meta(table: pa.Table, plan: Plan, null_may_be_absent: bool) -> pa.Array:
    extras = sorted(c for c in table.column_names if c not in plan.known)
    n = table.num_rows
    if not extras:
        return pa.repeat(pa.scalar("{}"), n)
    if len(set(extras)) != len(extras):
        raise _Decline
    parts: list = []
    for i, name in enumerate(extras):
        column = _column(table, name)
        if pa.types.is_null(column.type) or (null_may_be_absent and column.null_count):
            raise _Decline  # a JSON null and a missing key look alike here
        key = json.dumps(name, ensure_ascii=False)
        parts += [("{" if i == 0 else ", ") + key + ": ", _json_value(column)]
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


# What the columnar path gives: records without `messages`, which are always the (user: prompt,
# assistant: response) pair there. `with_messages` adds them when they are needed (hashing a version,
# writing the lake), so ingest does not hold a second copy of every text.
PAIRED_COLUMNS = EXAMPLE_COLUMNS.remove(EXAMPLE_COLUMNS.get_field_index("messages"))


def with_messages(table: pa.Table) -> pa.Table:
    """`table` with every EXAMPLE_COLUMNS column: the pair of prompt and response added as `messages`
    when it has none (a table of PAIRED_COLUMNS), else as it is."""
    if "messages" in table.column_names:
        return table
    messages = pair_messages(contiguous(table["prompt"]), contiguous(table["response"]))
    return table.add_column(
        EXAMPLE_COLUMNS.get_field_index("messages"), EXAMPLE_COLUMNS.field("messages"), messages
    )


def pair_messages(prompt: pa.Array, response: pa.Array) -> pa.Array:
    """[{user, prompt}, {assistant, response}] for every row. The contents are one copy of each row's
    prompt and response back to back (a sequential join, not a gather), cut by interleaved offsets."""
    n = len(prompt)
    joined = pc.binary_join_element_wise(prompt, response, "")
    prompt_offsets = np.frombuffer(prompt.buffers()[1], np.int32, n + 1, prompt.offset * 4)
    joined_offsets = np.frombuffer(joined.buffers()[1], np.int32, n + 1, joined.offset * 4)
    offsets = np.empty(2 * n + 1, np.int32)
    offsets[0::2] = joined_offsets
    offsets[1:-1:2] = joined_offsets[:-1] + np.diff(prompt_offsets)
    content = pa.StringArray.from_buffers(2 * n, pa.py_buffer(offsets), joined.buffers()[2])
    role = pa.array(["user", "assistant"]).take(pa.array(np.tile(np.array([0, 1], dtype=np.int8), n)))
    values = pa.StructArray.from_arrays([role, content], fields=list(MESSAGE_TYPE))
    pairs = pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
    return pa.ListArray.from_arrays(pairs, values, type=EXAMPLE_COLUMNS.field("messages").type)


def normalize_table(table: pa.Table, first_row: int, plan: Plan, null_may_be_absent: bool) -> pa.Table | None:
    """The `examples` records of a block as PAIRED_COLUMNS (`with_messages` completes them), or None
    when the reference normaliser must decide."""
    columns = plan.columns
    names = set(table.column_names)
    if plan.chat or any(rival in names for rival in plan.rival_ids) or len(names) != table.num_columns:
        return None
    messages = _column(table, columns.messages)
    if messages is not None and messages.null_count != len(messages):
        return None
    try:
        prompt = _text(table, columns.prompt, required=True)
        response = _text(table, columns.response, required=True)
        n = table.num_rows
        if columns.domain_value is not None:
            domain = pa.repeat(pa.scalar(columns.domain_value), n)
        else:
            domain = _text(table, columns.domain, required=False)
            domain = pa.nulls(n, pa.string()) if domain is None else domain
        out = {
            "dataset": pa.repeat(pa.scalar(plan.dataset), n),
            "example_id": _ids(table, plan, prompt, response),
            "row_index": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
            "domain": domain,
            "difficulty": _difficulty(table, columns.difficulty),
            "prompt": prompt,
            "response": response,
            "answer": _answer(table, columns.answer),
            "meta": _meta(table, plan, null_may_be_absent),
        }
    except _Decline:
        return None
    return pa.table(out, schema=PAIRED_COLUMNS)
