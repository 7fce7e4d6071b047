"""Ingest: every format, column mapping, chat format, stable ids, versions, restores, and every bad input
(refused with the line and column, the lake byte-for-byte unchanged)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from assay_testing import run_cli, run_python, tree_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Lake, UserError, ingest_columnar
from storage.ingest import VERSION_CHUNK_ROWS, ColumnMap, dataset_version, ingest, normalize, records_table
from storage.ingest_sources import BLOCK_ROWS, blocks

ROWS = [
    {
        "prompt": "What is 2 + 2?",
        "response": "4",
        "domain": "math",
        "difficulty": 1,
        "answer": "4",
        "src": "a",
    },
    {"prompt": "Write f.", "response": "def f(): pass", "domain": "code", "difficulty": "hard", "src": "b"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def examples(lake: Lake, dataset: str) -> pd.DataFrame:
    return lake.examples(dataset).drop(columns=["run_id"])


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "hf"])
def test_every_format_gives_the_same_examples(tmp_path: Path, fmt: str) -> None:
    frame = pd.DataFrame(ROWS).astype({"difficulty": str})
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, frame.to_dict("records"))
    elif fmt == "json":
        path.write_text(json.dumps(frame.to_dict("records")))
    elif fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        import datasets

        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    lake = Lake(tmp_path / "lake")
    result = ingest(lake, path, "d")
    got = lake.examples("d")
    assert result.rows == 2 and got["domain"].tolist() == ["math", "code"]
    assert got["difficulty"].tolist() == [1.0, 5.0]  # 'hard' maps to 5
    assert json.loads(got["meta"][0]) == {"src": "a"}
    assert got["messages"][0][1]["content"] == "4"


def test_chat_format_and_id_column(tmp_path: Path) -> None:
    rows = [
        {
            "uid": 7,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ],
        }
    ]
    lake = Lake(tmp_path / "lake")
    ingest(lake, write_jsonl(tmp_path / "c.jsonl", rows), "chat", ColumnMap(id="uid", domain_value="chat"))
    row = lake.examples("chat").iloc[0]
    assert (row["example_id"], row["prompt"], row["response"], row["domain"]) == ("7", "hi", "hello", "chat")
    assert len(row["messages"]) == 3


@pytest.mark.parametrize("columnar", [True, False])
def test_rows_may_carry_the_other_forms_columns_beside_their_own(tmp_path: Path, columnar: bool) -> None:
    def chat(user: str, assistant: str) -> list[dict]:
        return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]

    lake = Lake(tmp_path / "lake")
    # a chat file (its first row has no response): the messages decide, whatever else a row carries
    rows = [
        {"messages": chat("c", "d"), "prompt": "x"},
        {"messages": chat("g", "h"), "prompt": "z", "response": "y"},
    ]
    ingest(lake, write_jsonl(tmp_path / "chat.jsonl", rows), "chat", columnar=columnar)
    got = lake.examples("chat")
    assert list(got["prompt"]) == ["c", "g"] and list(got["response"]) == ["d", "h"]
    # a pair file: prompt and response decide, and a row's own messages are kept
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "e", "response": "f", "messages": chat("c", "d")}]
    ingest(lake, write_jsonl(tmp_path / "pair.jsonl", rows), "pair", columnar=columnar)
    got = lake.examples("pair")
    assert list(got["prompt"]) == ["a", "e"] and [len(m) for m in got["messages"]] == [2, 2]
    assert got["messages"].iloc[1][0]["content"] == "c"


def test_a_row_of_the_other_form_is_named_with_the_files_own_column_names(tmp_path: Path) -> None:
    rows = [{"q": "a", "ans": "b"}, {"conv": [{"role": "user", "content": "c"}]}]
    with pytest.raises(UserError, match=r"line 2: has 'conv' but no 'q' and 'ans'"):
        ingest(
            Lake(tmp_path / "lake"),
            write_jsonl(tmp_path / "m.jsonl", rows),
            "m",
            ColumnMap("q", "ans", "conv"),
        )
    # A Parquet of chat rows with empty pair columns (floats holding NaN, which is no value): read as
    # pairs, its first row is refused as chat, and the message says how to read the file as chat.
    chat = json.dumps([{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}])
    nan = pa.array([np.nan, np.nan])
    pq.write_table(
        pa.table({"prompt": nan, "response": nan, "messages": [chat, chat]}), tmp_path / "m.parquet"
    )
    with pytest.raises(
        UserError, match=r"row 1: has 'messages' but no 'prompt' and 'response'.* drop those columns"
    ):
        ingest(Lake(tmp_path / "lake"), tmp_path / "m.parquet", "m")


def test_content_ids_are_stable_and_reingest_is_a_no_op(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    first = ingest(lake, path, "d")
    ids = lake.examples("d")["example_id"].tolist()
    before = tree_digest(lake.root / "examples")
    again = ingest(lake, path, "d")
    assert (
        again.unchanged and again.version == first.version and tree_digest(lake.root / "examples") == before
    )
    write_jsonl(path, ROWS + [{"prompt": "3 * 3?", "response": "9", "domain": "math"}])
    changed = ingest(lake, path, "d")
    assert not changed.unchanged and changed.version != first.version
    got = lake.examples("d")
    assert len(got) == 3 and got["example_id"].tolist()[:2] == ids  # same content, same ids
    assert len(lake.query("SELECT * FROM dataset_versions WHERE dataset = 'd'")) == 2


def test_reingesting_an_earlier_version_makes_it_current_again(tmp_path: Path) -> None:
    """A, B, A: `examples` shows A again (a restore row in the registry, no data copied); A, B, A, B, A
    keeps following the latest ingest."""
    lake = Lake(tmp_path / "lake")
    a = write_jsonl(tmp_path / "a.jsonl", ROWS)
    b = write_jsonl(tmp_path / "b.jsonl", ROWS + [{"prompt": "1 + 1?", "response": "2"}])
    first = ingest(lake, a, "d")
    second = ingest(lake, b, "d")
    files = sorted(p.name for p in (lake.root / "examples").rglob("*.parquet"))
    third = ingest(lake, a, "d")
    assert third.restored and not third.unchanged and third.version == first.version
    assert lake.dataset_version("d") == first.version and len(lake.examples("d")) == 2
    assert sorted(p.name for p in (lake.root / "examples").rglob("*.parquet")) == files  # nothing copied
    again = ingest(lake, a, "d")
    assert again.unchanged and not again.restored  # A is current: a no-op
    for path, version, rows in [(b, second.version, 3), (a, first.version, 2), (b, second.version, 3)]:
        result = ingest(lake, path, "d")
        assert result.restored and lake.dataset_version("d") == version and len(lake.examples("d")) == rows
    restores = lake.query("SELECT count(*) AS n FROM runs WHERE method = 'restore'")["n"][0]
    assert restores == 4


def test_csv_keeps_newlines_inside_quoted_fields(tmp_path: Path) -> None:
    code = 'def f(x):\n    return "a,b"\n\n# done\r\nprint(f(1))'
    path = tmp_path / "code.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "response", "notes"])
        writer.writerow(["t1", "Write f.\nTwo lines.", code, "line1\nline2"])
        writer.writerow(["t2", "plain", "x", ""])
    lake = Lake(tmp_path / "lake")
    ingest(lake, path, "code")
    got = lake.examples("code")
    assert got["prompt"].tolist() == ["Write f.\nTwo lines.", "plain"]
    assert got["response"][0] == code
    assert json.loads(got["meta"][0]) == {"notes": "line1\nline2"} and json.loads(got["meta"][1]) == {
        "notes": None
    }


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('prompt,response\n"multi\nline",ok\na,b,c\n')
    with pytest.raises(UserError, match=r"line 4: wrong number of fields \(3, the header has 2\)"):
        ingest(Lake(tmp_path / "lake"), path, "d")
    path.write_text("prompt,prompt\na,b\n")
    with pytest.raises(UserError, match="line 1: the header names column 'prompt' twice"):
        ingest(Lake(tmp_path / "lake"), path, "d")
    assert not (tmp_path / "lake").exists()


def test_json_line_separators_inside_strings_are_text(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 are valid inside JSON strings; only "\\n" ends a JSONL line."""
    rows = [{"prompt": "a\u2028b\u0085c", "response": "d\u2029e"}, {"prompt": "x", "response": "y"}]
    path = tmp_path / "sep.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    lake = Lake(tmp_path / "lake")
    ingest(lake, path, "sep")
    assert lake.examples("sep")["prompt"].tolist() == ["a\u2028b\u0085c", "x"]


def test_ids_are_detected_over_all_rows(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    late = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d", "id": 5}]
    with pytest.raises(UserError, match="line 2: has an id column 'id' but the first row has none"):
        ingest(lake, write_jsonl(tmp_path / "late.jsonl", late), "d")
    missing = [{"id": 1, "prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    with pytest.raises(UserError, match="line 2: column 'id' must hold an id, got None"):
        ingest(lake, write_jsonl(tmp_path / "missing.jsonl", missing), "d")
    rival = [
        {"task_id": "t1", "prompt": "a", "response": "b"},
        {"task_id": "t2", "id": 9, "prompt": "c", "response": "d"},
    ]
    with pytest.raises(UserError, match="line 2: has an id column 'id' but the first row has 'task_id'"):
        ingest(lake, write_jsonl(tmp_path / "rival.jsonl", rival), "d")
    assert not lake.root.exists()


def test_dedupe_drops_exact_duplicates_only(tmp_path: Path) -> None:
    rows = [ROWS[0], ROWS[1], ROWS[0], {**ROWS[1], "src": "b"}]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    lake = Lake(tmp_path / "lake")
    with pytest.raises(UserError, match="duplicate example id .* in lines 1 and 3 .*--dedupe"):
        ingest(lake, path, "d")
    result = ingest(lake, path, "d", dedupe=True)
    got = lake.examples("d")
    assert result.rows == 2 and result.duplicates_dropped == 2 and got["row_index"].tolist() == [0, 1]
    assert result.version == ingest(lake, write_jsonl(tmp_path / "clean.jsonl", ROWS), "d").version
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"id": 1, **ROWS[0]}, {"id": 1, **ROWS[1]}])
    with pytest.raises(UserError, match="id '1' in lines 1 and 2 with different content"):
        ingest(lake, clash, "e", dedupe=True)


@pytest.mark.parametrize("name", ["bad name!", "name\n", "", ".hidden", "x" * 129, "a/b"])
def test_dataset_names_are_checked_whole(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="--dataset"):
        ingest(Lake(tmp_path / "lake"), write_jsonl(tmp_path / "ok.jsonl", ROWS), name)
    assert not (tmp_path / "lake").exists()


CHAT_LINE = '{"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}\n'
BAD_INPUTS = {
    "malformed_line": (
        '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response"\n',
        "line 2: malformed JSON",
    ),
    "missing_column": ('{"prompt": "a"}\n', "missing required column 'response'"),
    "wrong_type": ('{"prompt": "a", "response": ["b"]}\n', "line 1: column 'response' must be text"),
    "bad_difficulty": (
        '{"prompt": "a", "response": "b", "difficulty": "very"}\n',
        "line 1: column 'difficulty'",
    ),
    "empty_file": ("", "holds no examples"),
    "duplicate_ids": (
        '{"id": 1, "prompt": "a", "response": "b"}\n{"id": 1, "prompt": "c", "response": "d"}\n',
        "duplicate example id '1' in lines 1 and 2",
    ),
    "not_utf8": (
        b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff", "response": "b"}\n',
        "line 2: not valid UTF-8",
    ),
    "not_object": ("[1, 2]\n", "line 1: expected a JSON object"),
    "lone_surrogate": (
        '{"prompt": "a", "response": "b"}\n{"prompt": "x\\ud800y", "response": "b"}\n',
        "line 2: column 'prompt': text that is not valid Unicode",
    ),
    "lone_surrogate_in_other_column": (
        '{"prompt": "a", "response": "b", "note": "\\udfff"}\n',
        "line 1: column 'note': text that is not valid Unicode",
    ),
    "deep_nesting": (
        '{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": "b", "x": '
        + "[" * 100_000
        + "]" * 100_000
        + "}\n",
        "line 2: malformed JSON (nested too deeply)",
    ),
    "deep_messages_in_a_string": (
        '{"prompt": "a", "response": "b", "messages": "' + "[" * 100_000 + '"}\n',
        "line 1: column 'messages' must be a list",
    ),
    "huge_integer_difficulty": (
        '{"prompt": "a", "response": "b", "difficulty": ' + "9" * 400 + "}\n",
        "line 1: column 'difficulty' must be a finite number",
    ),
    "integer_beyond_python_digits": (
        '{"prompt": "a", "response": "b", "x": ' + "9" * 5000 + "}\n",
        "line 1: malformed JSON (Exceeds the limit",
    ),
    "nan_difficulty": (
        '{"prompt": "a", "response": "b", "difficulty": NaN}\n',
        "line 1: column 'difficulty' must be a finite",
    ),
    "two_objects_on_a_line": (
        '{"prompt": "a", "response": "b"}{"prompt": "c", "response": "d"}\n',
        "line 1: malformed JSON (Extra data)",
    ),
    # The first row sets the file's form; a row of the other form is named, not read as an empty column.
    "messages_row_in_a_prompt_response_file": (
        '{"prompt": "a", "response": "b"}\n' + CHAT_LINE,
        "line 2: has 'messages' but no 'prompt' and 'response', which this file is read as (it has those",
    ),
    "prompt_response_row_in_a_messages_file": (
        CHAT_LINE + '{"prompt": "a", "response": "b"}\n',
        "line 2: has 'prompt' and 'response' but no 'messages', which this file is read as (its first row",
    ),
    "pair_row_with_messages_and_a_prompt_but_no_response": (
        '{"prompt": "a", "response": "b"}\n' + CHAT_LINE.replace("{", '{"prompt": "x", ', 1),
        "line 2: column 'response' is empty",
    ),
    "duplicate_key_keeps_the_last_like_json": (
        '{"prompt": "a", "prompt": 5, "response": "b"}\n',
        "line 1: column 'prompt' must be text, got int",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("columnar", [True, False])
def test_bad_input_is_refused_and_leaves_the_lake_as_it_was(
    tmp_path: Path, case: str, columnar: bool
) -> None:
    content, message = BAD_INPUTS[case]
    lake = Lake(tmp_path / "lake")
    ingest(lake, write_jsonl(tmp_path / "good.jsonl", ROWS), "good")
    before = tree_digest(lake.root)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        ingest(lake, path, "bad", columnar=columnar)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
    assert tree_digest(lake.root) == before


def _parquet_with(tmp_path: Path, column: pa.Array) -> Path:
    n = len(column)
    table = pa.table(
        {"prompt": pa.array(["p"] * n), "response": pa.array([f"r{i}" for i in range(n)]), "x": column}
    )
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    return path


PARQUET_VALUES = {
    # Parquet holds what Python's datetime cannot (years past 9999): the row and column are named.
    "timestamp_out_of_range": (
        pa.array([0, 20_000 * 365 * 86_400 * 10**6], pa.timestamp("us")),
        "row 2: column 'x': a value Python cannot represent",
    ),
    "date_out_of_range": (
        pa.array([0, 5_000_000], pa.date32()),
        "row 2: column 'x': a value Python cannot represent",
    ),
}


@pytest.mark.parametrize("case", sorted(PARQUET_VALUES))
def test_parquet_values_python_cannot_hold_are_refused(tmp_path: Path, case: str) -> None:
    column, message = PARQUET_VALUES[case]
    lake = Lake(tmp_path / "lake")
    with pytest.raises(UserError, match=message):
        ingest(lake, _parquet_with(tmp_path, column), "d")
    assert not lake.root.exists()


def test_parquet_typed_columns_are_stored_in_meta(tmp_path: Path) -> None:
    """Dates, decimals, lists and structs of a Parquet file land in `meta` as JSON (dates as text)."""
    import decimal

    table = pa.table(
        {
            "prompt": ["p", "q"],
            "response": ["r", "s"],
            "when": pa.array([dt.date(2024, 1, 2), None], pa.date32()),
            "price": pa.array([decimal.Decimal("1.50"), decimal.Decimal("-2.25")], pa.decimal128(5, 2)),
            "tags": pa.array([["a", "b"], []]),
            "info": pa.array([{"k": 1}, {"k": None}]),
        }
    )
    pq.write_table(table, tmp_path / "typed.parquet")
    lake = Lake(tmp_path / "lake")
    ingest(lake, tmp_path / "typed.parquet", "d")
    meta = [json.loads(m) for m in lake.examples("d")["meta"]]
    assert meta == [
        {"when": "2024-01-02", "price": "1.50", "tags": ["a", "b"], "info": {"k": 1}},
        {"when": None, "price": "-2.25", "tags": [], "info": {"k": None}},
    ]


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{oops}\n')
    result = run_cli("ingest", "bad.jsonl", "--dataset", "d", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: bad.jsonl: line 2: malformed JSON (Expecting property name enclosed in double quotes)"
    ]
    assert not (tmp_path / "lake").exists()
    for name in ["bad name", "ok\n"]:
        refused = run_cli("ingest", "bad.jsonl", "--dataset", name, cwd=tmp_path)
        assert refused.returncode == 2 and "--dataset" in refused.stderr and "Traceback" not in refused.stderr
    unknown = run_cli("sql", "select 1", "--format", "xml", cwd=tmp_path)
    assert unknown.returncode == 2 and "--format 'xml'" in unknown.stderr


def test_unreadable_and_missing_files_are_user_errors(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    with pytest.raises(UserError, match="no such file"):
        ingest(lake, tmp_path / "nope.jsonl", "d")
    locked = write_jsonl(tmp_path / "locked.jsonl", ROWS)
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):  # root reads anything: use a directory posing as a file instead
        locked = tmp_path / "dir.jsonl"
        locked.mkdir()
    with pytest.raises(UserError, match="cannot read|not a Hugging Face|a directory"):
        ingest(lake, locked, "d")
    assert not lake.root.exists()


# ------------------------------------------------------------------------------- both paths agree
def varied_rows(n: int, seed: int, numeric_difficulty: bool = False) -> list[dict]:
    """Rows in the shapes real files have: words or numbers for difficulty (one kind per file in JSONL,
    where pyarrow needs one type per column), answers as text, nulls in the known columns, other
    columns of text (quotes, backslashes, newlines, non-ASCII), integers and booleans."""
    rng = np.random.default_rng(seed)
    texts = ["What is 2 + 2?", 'say "hi"\\n', "tab\tand\nnewline", "Ünïcödé \u2028 ok", "", "x" * 300]
    rows = []
    for i in range(n):
        row = {
            "id": int(i * 7 + 3),
            "prompt": f"{texts[int(rng.integers(len(texts)))]} #{i}",
            "response": f"{texts[int(rng.integers(len(texts)))]} -> {i}",
            "domain": ["math", "code", None][int(rng.integers(3))],
            "difficulty": ([1, 4.5, None] if numeric_difficulty else ["hard", "easy", "2", "", None])[
                int(rng.integers(3 if numeric_difficulty else 5))
            ],
            "answer": ["4", "x = 1", None][int(rng.integers(3))],
            "source": texts[int(rng.integers(len(texts)))],
            "n_tests": int(rng.integers(-3, 10**12)),
            "checked": bool(rng.integers(2)),
        }
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict], fmt: str) -> Path:
    if fmt == "jsonl":
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=bool(i % 2)) + "\n" for i, r in enumerate(rows)),
            encoding="utf-8",
        )
    elif fmt == "csv":
        pd.DataFrame(rows).astype(str).replace({"None": "", "": ""}).to_csv(path, index=False)
    else:
        frame = pd.DataFrame(rows).astype({"difficulty": str, "answer": str, "domain": "category"})
        frame.to_parquet(path)  # the domain as a Parquet dictionary column
    return path


def count_columnar_blocks(monkeypatch) -> list[bool]:
    """A list that gets, for every block ingest offers the columnar normaliser, whether it took it."""
    taken: list[bool] = []
    original = ingest_columnar.normalize_table

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr("storage.ingest.normalize_table", counting)
    return taken


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_columnar_and_row_by_row_ingest_store_the_same_lake(tmp_path: Path, fmt: str, monkeypatch) -> None:
    """A varied file of more than one block and more than one version chunk: the columnar path takes
    the blocks (counted), and the lake rows and version equal the row-by-row reference's."""
    n = max(BLOCK_ROWS, VERSION_CHUNK_ROWS) + 1234
    path = _write(tmp_path / f"varied.{fmt}", varied_rows(n, seed=1, numeric_difficulty=fmt == "jsonl"), fmt)
    taken = count_columnar_blocks(monkeypatch)
    fast = ingest(Lake(tmp_path / "fast"), path, "v", columnar=True)
    reference = ingest(Lake(tmp_path / "ref"), path, "v", columnar=False)
    assert taken and all(taken), taken  # every block went the columnar way
    assert fast.version == reference.version and fast.rows == reference.rows == n
    a = examples(Lake(tmp_path / "fast"), "v")
    b = examples(Lake(tmp_path / "ref"), "v")
    pd.testing.assert_frame_equal(a.drop(columns=["messages"]), b.drop(columns=["messages"]))
    assert a["messages"].map(list).map(str).tolist() == b["messages"].map(list).map(str).tolist()


def test_version_is_the_same_hash_as_before_streaming(tmp_path: Path) -> None:
    """Up to VERSION_CHUNK_ROWS rows the version is the SHA-256 of one Arrow IPC batch, as assay
    computed it before ingest streamed: re-ingesting an existing dataset stays a no-op after upgrading."""
    records = normalize(ROWS, "d", ColumnMap(), "t")
    table = records_table(records)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    import hashlib

    assert dataset_version(table) == hashlib.sha256(sink.getvalue()).hexdigest()[:12]
    lake = Lake(tmp_path / "lake")
    assert ingest(lake, write_jsonl(tmp_path / "a.jsonl", ROWS), "d").version == dataset_version(table)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
fuzz_rows = st.fixed_dictionaries(
    {"prompt": st.text(max_size=20) | st.integers(), "response": st.text(max_size=20)},
    optional={
        "id": st.integers(0, 40) | st.text(max_size=3),
        "domain": st.none() | st.sampled_from(["math", "code", ""]) | st.integers(),
        "difficulty": json_scalars | st.sampled_from(["hard", "Easy", " 3 ", "1e400", "nan", "1_0"]),
        "answer": json_scalars,
        "extra": json_scalars
        | st.lists(st.integers(), max_size=2)
        | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    },
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(fuzz_rows, min_size=1, max_size=8), ascii_only=st.booleans())
def test_columnar_path_never_differs_from_the_reference(
    tmp_path_factory, rows: list[dict], ascii_only: bool
) -> None:
    """Whatever the rows, both paths store the same records or refuse with the same message."""
    tmp = tmp_path_factory.mktemp("diff")
    path = tmp / "f.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows), encoding="utf-8")
    outcomes = []
    for columnar in (True, False):
        lake = Lake(tmp / f"lake-{columnar}")
        try:
            result = ingest(lake, path, "f", columnar=columnar)
            outcomes.append((result.version, examples(lake, "f").drop(columns=["messages"]).to_json()))
        except UserError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]


def test_jsonl_blocks_hold_whole_chunks_of_rows(tmp_path: Path, monkeypatch) -> None:
    """Blocks of exactly BLOCK_ROWS non-empty lines (blank lines and reads cut anywhere in between), so
    records come in the version's chunks; line numbers and row numbers stay right across blocks."""
    from storage import ingest_sources

    lines = []
    for i in range(2 * 1000 + 5):
        lines.append(json.dumps({"prompt": f"p{i}", "response": "r"}))
        if i % 7 == 0:
            lines.append("")  # blank lines are skipped, not counted as rows
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines))  # no newline at the end
    monkeypatch.setattr(ingest_sources, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(ingest_sources, "BLOCK_ROWS", 1000)
    parts = list(blocks(path))
    assert [len(b.lines) for b in parts] == [1000, 1000, 5]
    assert [b.first_row for b in parts] == [0, 1000, 2000]
    numbers = [n for b in parts for n in b.lines.tolist()]
    expected = [i + 1 for i, line in enumerate(lines) if line]
    assert numbers == expected
    assert [r["prompt"] for b in parts for r in b.rows()] == [f"p{i}" for i in range(2005)]


def test_columnar_records_share_the_parsed_text_buffers(tmp_path: Path) -> None:
    """A JSONL block parses into one chunk per column, and its prompt / response reach the records (and
    the messages built from them) without another copy: every extra copy of the text is memory the
    process faults in (see DEVELOPERS.md)."""
    from storage.ingest_columnar import contiguous, normalize_table, with_messages
    from storage.ingest_rows import Plan

    rows = [{"id": i, "prompt": f"question {i} " * 20, "response": f"answer {i} " * 30} for i in range(3000)]
    path = write_jsonl(tmp_path / "text.jsonl", rows)
    (block,) = list(blocks(path))
    assert block.table is not None and {block.table[c].num_chunks for c in block.table.column_names} == {1}
    plan = Plan.from_first_row(block.first_keys(), "d", ColumnMap(), str(path))
    records = normalize_table(block.table, block.first_row, plan, block.null_may_be_absent)
    for column in ("prompt", "response"):
        parsed = block.table[column].chunk(0).buffers()[2].address
        assert records[column].chunk(0).buffers()[2].address == parsed
        assert contiguous(records[column]).buffers()[2].address == parsed
    assert with_messages(records)["messages"].to_pylist()[7] == [
        {"role": "user", "content": rows[7]["prompt"]},
        {"role": "assistant", "content": rows[7]["response"]},
    ]
    several = pa.chunked_array([pa.array(["a", "b"]), pa.array(["c"])])
    assert contiguous(several).to_pylist() == ["a", "b", "c"]
    # with_messages allocates the pairs' text once (prompt and response back to back), no copy of either
    text = records["prompt"].nbytes + records["response"].nbytes
    counting = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(counting)
    try:
        with_messages(records)
    finally:
        pa.set_memory_pool(previous)
    assert text < counting.max_memory() < 1.5 * text


def test_a_block_beyond_pyarrows_parse_block_size_goes_line_by_line(tmp_path: Path, monkeypatch) -> None:
    """pyarrow.json's block size is 32-bit: a block larger than that parses in line-sized blocks, and a
    line larger than that goes to the reference normaliser (here with the limit made small)."""
    from storage import ingest_sources

    rows = [{"prompt": "p" * (200 if i == 3 else 20), "response": f"r{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    (first,) = list(blocks(path))
    whole = first.table
    longest = max(len(json.dumps(r)) for r in rows)
    monkeypatch.setattr(ingest_sources, "MAX_PARSE_BLOCK", longest + 2)
    (block,) = list(blocks(path))
    assert block.table is not None and block.table.equals(whole) and block.table["prompt"].num_chunks > 1
    monkeypatch.setattr(ingest_sources, "MAX_PARSE_BLOCK", longest + 1)
    (block,) = list(blocks(path))
    assert block.table is None and [r["prompt"] for r in block.rows()] == [r["prompt"] for r in rows]
    assert ingest(Lake(tmp_path / "lake"), path, "d").rows == 10


def test_records_spilled_to_a_staging_file_give_the_same_lake(tmp_path: Path, monkeypatch) -> None:
    """Past SPOOL_BYTES the records wait in a staging file: same version, rows and dedupe; the file is
    gone afterwards, on success and on a refusal."""
    rows = [ROWS[0], ROWS[1], ROWS[0]]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    in_memory = ingest(Lake(tmp_path / "a"), path, "d", dedupe=True)
    monkeypatch.setattr("storage.ingest.SPOOL_BYTES", 1)
    monkeypatch.setattr("storage.ingest.tempfile.gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    spilled = ingest(Lake(tmp_path / "b"), path, "d", dedupe=True)
    assert (spilled.version, spilled.rows, spilled.duplicates_dropped) == (in_memory.version, 2, 1)
    pd.testing.assert_frame_equal(examples(Lake(tmp_path / "a"), "d"), examples(Lake(tmp_path / "b"), "d"))
    with pytest.raises(UserError, match="duplicate example id"):
        ingest(Lake(tmp_path / "c"), path, "d")
    assert not list((tmp_path / "tmp").iterdir()) and not list((tmp_path / "b" / ".staging").iterdir())


@pytest.mark.parametrize("seed", range(4))
def test_jsonl_reader_blocks_are_the_file_cut_at_lines(tmp_path: Path, monkeypatch, seed: int) -> None:
    """The JSONL reader's blocks, whatever the read size: concatenated they are the file (less a leading
    BOM), each starts at its file offset, ends after a newline (but the last), holds BLOCK_ROWS non-empty
    lines (CRLF and blank lines included) unless MAX_BLOCK_BYTES cut it, and its line spans and "[" / "{"
    positions are those of a plain split of the block."""
    from storage import ingest_sources

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(400):
        kind = rng.integers(6)
        if kind == 0:
            lines.append(b"")
        elif kind == 1:
            lines.append(b"\r")
        else:
            text = json.dumps({"p": "x" * int(rng.integers(0, 300)), "q": [[i]] * int(rng.integers(0, 4))})
            lines.append(text.encode() + (b"\r" if kind == 2 else b""))
    data = b"\n".join(lines) + (b"\n" if seed % 2 else b"")
    bom = ingest_sources.BOM if seed < 2 else b""
    path = tmp_path / "f.jsonl"
    path.write_bytes(bom + data)
    monkeypatch.setattr(ingest_sources, "BLOCK_BYTES", 97)  # lines span several reads
    monkeypatch.setattr(ingest_sources, "BLOCK_ROWS", 13)
    monkeypatch.setattr(ingest_sources, "MAX_BLOCK_BYTES", 3000 if seed == 3 else 1 << 30)
    parts = list(ingest_sources._row_blocks(path))
    assert b"".join(bytes(block) for block, _, _ in parts) == data
    position = len(bom)
    for k, (block, offset, found) in enumerate(parts):
        raw = bytes(block)
        assert offset == position
        position += len(raw)
        last = k == len(parts) - 1
        assert last or raw.endswith(b"\n")
        pieces = raw.split(b"\n")[: -1 if raw.endswith(b"\n") else None]
        starts = np.cumsum([0] + [len(p) + 1 for p in pieces[:-1]])
        ends = starts + [len(p) - p.endswith(b"\r") for p in pieces]
        starts_found, ends_found, _ = found.spans
        assert starts_found.tolist() == starts.tolist() and ends_found.tolist() == ends.tolist()
        filled = int((ends > starts).sum())
        # a block cut by MAX_BLOCK_BYTES ends at the last newline read, less than a line short of it
        assert filled == 13 or last or len(raw) + max(map(len, lines)) + 1 >= 3000
        assert found.openers.tolist() == [i for i, b in enumerate(raw) if b in b"[{"]


def test_blank_lines_cannot_make_a_block_unbounded(tmp_path: Path, monkeypatch) -> None:
    """Blank lines do not count as rows, but each costs a line span: a block is also cut at
    MAX_BLOCK_LINES lines, and the lake is the same as without the cut (version, rows, line numbers)."""
    from storage import ingest_sources

    lines = [json.dumps({"prompt": f"p{i}", "response": "r"}) for i in range(30)]
    text = "\n" * 500 + "\n".join(lines[:10]) + "\n" * 300 + "\r\n" * 200 + "\n".join(lines[10:]) + "\n"
    path = tmp_path / "blank.jsonl"
    path.write_text(text)
    whole = ingest(Lake(tmp_path / "a"), path, "d")
    monkeypatch.setattr(ingest_sources, "MAX_BLOCK_LINES", 64)
    monkeypatch.setattr(ingest_sources, "BLOCK_BYTES", 128)
    parts = list(ingest_sources._row_blocks(path))
    assert max(len(found.spans[0]) for _, _, found in parts) <= 64
    assert b"".join(bytes(block) for block, _, _ in parts) == text.encode()
    cut = ingest(Lake(tmp_path / "b"), path, "d")
    assert (cut.version, cut.rows) == (whole.version, whole.rows) == (whole.version, 30)
    numbers = [n for b in blocks(path) for n in b.lines.tolist()]
    expected = [i + 1 for i, line in enumerate(text.split("\n")) if line.strip()]
    assert numbers == expected


def test_prefetch_keeps_order_and_stops_without_waiting_for_its_worker() -> None:
    """Items come in order with errors raised where they occur; closing an abandoned prefetch (as the
    garbage collector may, inside threading's own locks) returns while the worker is still busy, and
    the worker then closes the source itself."""
    import threading

    from storage.prefetch import prefetch

    assert list(prefetch(iter(range(5)))) == [0, 1, 2, 3, 4]

    def failing():
        yield "a"
        raise UserError("bad line 2")

    ahead = prefetch(failing())
    assert next(ahead) == "a"
    with pytest.raises(UserError, match="bad line 2"):
        next(ahead)

    busy, release, source_closed = threading.Event(), threading.Event(), threading.Event()

    def slow():
        try:
            yield 1
            busy.set()
            release.wait(60)
            yield 2
        finally:
            source_closed.set()

    ahead = prefetch(slow())
    assert next(ahead) == 1
    assert busy.wait(60)  # the worker is computing item 2
    closer = threading.Thread(target=ahead.close)
    closer.start()
    closer.join(60)  # a safety net: closing does not wait, however loaded the machine
    closed_while_busy = not closer.is_alive()
    release.set()
    assert closed_while_busy
    assert source_closed.wait(60)


def test_a_chunk_of_columnar_and_row_by_row_blocks_and_parts_cut_inside_chunks(
    tmp_path: Path, monkeypatch
) -> None:
    """Columnar blocks keep no `messages` until they are hashed or written; a version chunk that mixes
    them with a block the columnar path declines (a nested field), and partition files cut inside
    chunks, still store the reference's lake: same version, rows in file order, files balanced."""
    from storage import ingest as ingest_module
    from storage import ingest_sources

    rows = [
        {"id": i, "prompt": f"q{i} " * (i % 7 + 1), "response": f"a{i}\n" * (i % 3 + 1)} for i in range(2500)
    ]
    rows[1500]["tags"] = {"nested": [1, 2]}  # the second block goes row by row
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    monkeypatch.setattr(ingest_sources, "BLOCK_ROWS", 1000)
    taken = count_columnar_blocks(monkeypatch)
    monkeypatch.setattr(ingest_module, "VERSION_CHUNK_ROWS", 2000)  # blocks 1 and 2 share a chunk
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    reference = ingest(Lake(tmp_path / "ref"), path, "m", columnar=False)
    fast = ingest(Lake(tmp_path / "fast"), path, "m")
    assert taken == [True, False, True]
    files = sorted((tmp_path / "fast" / "examples").glob("run_id=*/*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in files] == [1250, 1250]  # 2 chunks: 2 files
    assert pa.concat_tables([pq.read_table(f) for f in files])["row_index"].to_pylist() == list(range(2500))
    a, b = examples(Lake(tmp_path / "fast"), "m"), examples(Lake(tmp_path / "ref"), "m")
    pd.testing.assert_frame_equal(a.drop(columns=["messages"]), b.drop(columns=["messages"]))
    assert a["messages"].map(list).map(str).tolist() == b["messages"].map(list).map(str).tolist()
    assert a["messages"].iloc[7].tolist() == [
        {"role": "user", "content": rows[7]["prompt"]},
        {"role": "assistant", "content": rows[7]["response"]},
    ]
    assert fast.version == reference.version and reference.rows == fast.rows == 2500


PREFETCH_AT_EXIT = """
import sys, threading, time
from storage.prefetch import prefetch

busy = threading.Event()

def source():
    try:
        yield 1
        busy.set()
        time.sleep(0.5)  # the worker is busy when the interpreter starts to exit
        yield 2
    finally:
        print("source closed", flush=True)

ahead = prefetch(source())
next(ahead)
busy.wait(60)
sys.exit(0)
"""


def test_prefetch_workers_are_stopped_and_joined_before_the_interpreter_exits() -> None:
    """A daemon worker still inside pyarrow or DuckDB while Python finalises aborts the process (seen as
    'FATAL: exception not rethrown' after Ctrl-C in an ingest): workers are stopped and joined at exit,
    so the busy worker finishes its item and closes its source before the process ends."""
    done = run_python(PREFETCH_AT_EXIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["source closed"]
