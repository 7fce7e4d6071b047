"""Ingest: every format, column mapping, chat format, stable ids, versions, and every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from assay_testing import run_cli, tree_digest

from storage import Lake, UserError
from storage.ingest import ColumnMap, ingest

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
    examples = lake.examples("d")
    assert result.rows == 2 and examples["domain"].tolist() == ["math", "code"]
    assert examples["difficulty"].tolist() == [1.0, 5.0]  # 'hard' maps to 5
    assert json.loads(examples["meta"][0]) == {"src": "a"}
    assert examples["messages"][0][1]["content"] == "4"


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
    examples = lake.examples("d")
    assert len(examples) == 3 and examples["example_id"].tolist()[:2] == ids  # same content, same ids
    assert len(lake.query("SELECT * FROM dataset_versions WHERE dataset = 'd'")) == 2


BAD_INPUTS = {
    "malformed_line": (
        '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response"\n',
        "line 2: malformed JSON",
    ),
    "missing_column": ('{"prompt": "a"}\n', "missing required column 'response'"),
    "wrong_type": ('{"prompt": "a", "response": ["b"]}\n', "line 1: column 'response' must be text"),
    "bad_difficulty": ('{"prompt": "a", "response": "b", "difficulty": "very"}\n', "column 'difficulty'"),
    "empty_file": ("", "holds no examples"),
    "duplicate_ids": (
        '{"id": 1, "prompt": "a", "response": "b"}\n{"id": 1, "prompt": "c", "response": "d"}\n',
        "duplicate example id '1' in lines 1 and 2",
    ),
    "not_utf8": (b'{"prompt": "\xff", "response": "b"}\n', "not valid UTF-8"),
    "not_object": ("[1, 2]\n", "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_leaves_the_lake_as_it_was(tmp_path: Path, case: str) -> None:
    content, message = BAD_INPUTS[case]
    lake = Lake(tmp_path / "lake")
    ingest(lake, write_jsonl(tmp_path / "good.jsonl", ROWS), "good")
    before = tree_digest(lake.root)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ingest(lake, path, "bad")
    assert tree_digest(lake.root) == before


def test_unreadable_and_missing_files_are_user_errors(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    with pytest.raises(UserError, match="no such file"):
        ingest(lake, tmp_path / "nope.jsonl", "d")
    locked = write_jsonl(tmp_path / "locked.jsonl", ROWS)
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):  # root reads anything: use a directory posing as a file instead
        locked = tmp_path / "dir.jsonl"
        locked.mkdir()
    with pytest.raises(UserError, match="cannot read|not a Hugging Face"):
        ingest(lake, locked, "d")
    with pytest.raises(UserError, match="--dataset"):
        ingest(lake, write_jsonl(tmp_path / "ok.jsonl", ROWS), "bad name!")
    assert not lake.root.exists()


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "response": "b"}\n{oops}\n')
    result = run_cli("ingest", "bad.jsonl", "--dataset", "d", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        ("error: bad.jsonl: line 2: malformed JSON (Expecting property name enclosed in double quotes)")
    ]
    assert not (tmp_path / "lake").exists() and not (tmp_path / ".assay").exists()
    unknown = run_cli("sql", "select 1", "--format", "xml", cwd=tmp_path)
    assert unknown.returncode == 2 and "--format xml" in unknown.stderr
