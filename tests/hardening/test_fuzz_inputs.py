"""Bad-input fuzzing: whatever a file holds, ingest either succeeds or refuses with one clear line,
writing nothing; CLI options likewise."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from assay_figures import record
from assay_testing import tree_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Lake, UserError
from storage.ingest import ingest

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
COUNTS = {"tried": 0, "held": 0}


def check_ingest(tmp: Path, name: str, data: bytes) -> None:
    """Ingest `data`: success, or UserError with one line and the lake byte-for-byte unchanged."""
    lake = Lake(tmp / "lake")
    before = tree_digest(lake.root)
    path = tmp / name
    path.write_bytes(data)
    COUNTS["tried"] += 1
    try:
        ingest(lake, path, "fuzz")
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
        assert tree_digest(lake.root) == before
    COUNTS["held"] += 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
rows = st.dictionaries(
    st.sampled_from(["prompt", "response", "domain", "difficulty", "id", "messages", "x"]),
    json_values,
    max_size=7,
)


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(["jsonl", "json", "csv", "parquet"]))
def test_fuzz_random_bytes(tmp_path_factory, data: bytes, suffix: str) -> None:
    check_ingest(tmp_path_factory.mktemp("f"), f"data.{suffix}", data)


@FUZZ
@given(records=st.lists(rows, min_size=0, max_size=6), fmt=st.sampled_from(["jsonl", "json"]))
def test_fuzz_wrong_types(tmp_path_factory, records: list[dict], fmt: str) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records) if fmt == "jsonl" else json.dumps(records)
    check_ingest(tmp_path_factory.mktemp("f"), f"data.{fmt}", text.encode())


@FUZZ
@given(
    text=st.text(alphabet=string.printable + "éß漢字", max_size=300),
    encoding=st.sampled_from(["utf-16", "latin-1", "cp1252", "utf-32"]),
)
def test_fuzz_wrong_encodings(tmp_path_factory, text: str, encoding: str) -> None:
    row = json.dumps({"prompt": text, "response": "é" + text}, ensure_ascii=False) + "\n"
    try:
        data = row.encode(encoding)
    except UnicodeEncodeError:
        data = row.encode(encoding, errors="replace")
    check_ingest(tmp_path_factory.mktemp("f"), "data.jsonl", data)


def test_fuzz_huge_lines_and_deep_nesting(tmp_path: Path) -> None:
    cases = {
        "huge.jsonl": json.dumps({"prompt": "x" * 5_000_000, "response": "y"}) + "\n",
        "deep.jsonl": '{"prompt": "a", "response": "b", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
        "deep.json": "[" * 200_000 + "]" * 200_000,
    }
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        check_ingest(tmp_path / name, name, text.encode())
    assert Lake(tmp_path / "huge.jsonl" / "lake").examples("fuzz")["prompt"].str.len().tolist() == [5_000_000]
    assert not (tmp_path / "deep.json" / "lake").exists()


option_values = st.text(alphabet=string.ascii_letters + string.digits + "-_./ '\";", max_size=12)


@FUZZ
@given(
    command=st.sampled_from(["sql", "ingest", "runs", "tables"]),
    fmt=option_values,
    out=option_values,
    extra=st.lists(option_values, max_size=3),
)
def test_fuzz_cli_options(
    tmp_path_factory, capsys, command: str, fmt: str, out: str, extra: list[str]
) -> None:
    from flows.cli import run

    tmp = tmp_path_factory.mktemp("cli")
    args = ["--lake", str(tmp / "lake"), command]
    args += {"sql": ["SELECT 1"], "ingest": [str(tmp / "missing.jsonl"), "--dataset", fmt or "d"]}.get(
        command, []
    )
    args += ["--format", fmt, "--out", str(tmp / "missing-dir" / (out or "x")), *extra]
    COUNTS["tried"] += 1
    status = run(args)
    err = capsys.readouterr().err
    # Never a crash: success, or a user error (status 2) with a message and no traceback.
    assert status in (0, 2), err
    assert "Traceback" not in err
    assert not (tmp / "lake").exists()
    written = (
        [p for p in (tmp / "missing-dir").rglob("*") if p.is_file()] if (tmp / "missing-dir").exists() else []
    )
    if status == 2:  # a refusal creates nothing, not even the --out folder
        assert not (tmp / "missing-dir").exists()
    else:  # `sql --out` creates the parent folders and writes exactly the one file
        assert command == "sql" and len(written) == 1 and not written[0].name.startswith(".")
    COUNTS["held"] += 1


# ------------------------------------------------------------------------------- reported cases
# Each case an attack pass found (issue 18), kept as a regression test: one line, exit 2 or handled
# correctly, the lake byte-for-byte unchanged.
REPORTED_FILES = {
    "lone_surrogate.jsonl": b'{"prompt": "\\ud800", "response": "b"}\n',
    "deep_nesting.jsonl": b'{"prompt": "a", "response": "b", "x": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}\n",
    "deep_nesting.json": b"[" * 100_000 + b"]" * 100_000,
    "deep_messages.csv": b"prompt,response,messages\na,b," + b"[" * 100_000 + b"\n",
    "digits_400.jsonl": b'{"prompt": "a", "response": "b", "difficulty": ' + b"9" * 400 + b"}\n",
    "digits_5000.jsonl": b'{"prompt": "a", "response": "b", "x": ' + b"9" * 5000 + b"}\n",
    "nan_id.jsonl": b'{"id": NaN, "prompt": "a", "response": "b"}\n',
    "u2028.jsonl": '{"prompt": "a\u2028b\u0085c", "response": "d"}\n'.encode(),
    "quoted_newline.csv": b'prompt,response\n"two\nlines","x"\n',
    "bom_then_row.jsonl": b'\xef\xbb\xbf{"prompt": "a", "response": "b"}\n',
}


@pytest.mark.parametrize("name", sorted(REPORTED_FILES))
def test_reported_bad_files(tmp_path: Path, name: str) -> None:
    check_ingest(tmp_path, name, REPORTED_FILES[name])
    stored = Lake(tmp_path / "lake")
    if name in ("u2028.jsonl", "quoted_newline.csv", "bom_then_row.jsonl"):  # valid: stored exactly
        prompt = stored.examples("fuzz")["prompt"][0]
        assert prompt == {"u2028.jsonl": "a\u2028b\u0085c", "quoted_newline.csv": "two\nlines"}.get(name, "a")
    else:
        assert not stored.root.exists()


def test_reported_out_of_range_parquet_values(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, column in {
        "timestamp.parquet": pa.array([0, 20_000 * 365 * 86_400 * 10**6], pa.timestamp("us")),
        "date.parquet": pa.array([0, 5_000_000], pa.date32()),
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        table = pa.table({"prompt": ["a", "b"], "response": ["c", "d"], "when": column})
        pq.write_table(table, folder / name)
        check_ingest(folder, name, (folder / name).read_bytes())
        assert not (folder / "lake").exists()


REPORTED_CLI = {
    "name_with_newline": ["ingest", "{data}", "--dataset", "name\n"],
    "out_dot": ["sql", "SELECT 1", "--out", ".", "--format", "csv"],
    "out_parent": ["sql", "SELECT 1", "--out", "..", "--format", "csv"],
    "out_lake": ["sql", "SELECT 1", "--out", "{lake}", "--format", "csv", "--force"],
    "out_fifo": ["sql", "SELECT 1", "--out", "{fifo}", "--format", "csv", "--force"],
    "out_device": ["sql", "SELECT 1", "--out", "/dev/null", "--format", "csv", "--force"],
    "out_symlink": ["sql", "SELECT 1", "--out", "{link}", "--force"],
    "out_root": ["sql", "SELECT 1", "--out", "/", "--format", "csv", "--force"],
    "out_home": ["sql", "SELECT 1", "--out", "~", "--format", "csv", "--force"],
    "timeout_negative": ["sql", "SELECT 1", "--timeout", "-1"],
    "timeout_nan": ["sql", "SELECT 1", "--timeout", "nan"],
    "timeout_inf": ["sql", "SELECT 1", "--timeout", "inf"],
    "memory_foo": ["sql", "SELECT 1", "--memory", "foo"],
    "explain_json_of_copy": ["sql", "explain (format json) copy scores to 'x.csv'"],
    "parser_error": ["sql", "explain (format json"],
}


@pytest.mark.parametrize("case", sorted(REPORTED_CLI))
def test_reported_cli_cases(tmp_path: Path, capsys, monkeypatch, case: str) -> None:
    import os

    from flows.cli import run

    monkeypatch.chdir(tmp_path)
    lake = Lake(tmp_path / "lake")
    check_ingest(tmp_path, "data.jsonl", b'{"prompt": "a", "response": "b"}\n')
    (tmp_path / "data.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "target.csv").write_text("keep\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.csv")
    before = tree_digest(lake.root)
    values = {
        "data": str(tmp_path / "data.jsonl"),
        "lake": str(lake.root),
        "fifo": "fifo",
        "link": "link.csv",
    }
    args = ["--lake", str(lake.root)] + [a.format(**values) for a in REPORTED_CLI[case]]
    COUNTS["tried"] += 1
    status = run(args)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert tree_digest(lake.root) == before and (tmp_path / "target.csv").read_text() == "keep\n"
    assert (tmp_path / "link.csv").is_symlink() and not (tmp_path / "fifo").is_file()
    COUNTS["held"] += 1


@FUZZ
@given(text=st.text(alphabet="ab:-[]{}&*!|>'\"\n #?,.1", max_size=120))
def test_fuzz_yaml_loader(text: str) -> None:
    """Any text either loads as plain data or is refused with one line naming the file."""
    from storage.safe_yaml import load_yaml

    COUNTS["tried"] += 1
    try:
        load_yaml(text, "fuzz.yaml")
    except UserError as exc:
        assert str(exc).startswith("fuzz.yaml") and "\n" not in str(exc)
    COUNTS["held"] += 1


@pytest.fixture(scope="module", autouse=True)
def record_counts():
    yield
    record(
        "bad inputs", COUNTS["tried"], COUNTS["held"], "ingest files, recipes and CLI options (hypothesis)"
    )


recipe_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
stage_entries = st.fixed_dictionaries(
    {
        "stage": st.sampled_from(
            ["mix", "ppp", "presto", "dart", "difficulty_flip", "influence_reweight", "nope"]
        )
        | recipe_values
    },
    optional={
        "params": st.dictionaries(
            st.sampled_from(["by", "tau", "schedule", "k_p", "ladder", "cv", "x"]), recipe_values, max_size=3
        )
        | recipe_values,
        "name": recipe_values,
    },
)
recipes = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["demo", "bad name!", ""]) | recipe_values,
        "datasets": st.lists(st.sampled_from(["demo_train", "x"]), max_size=2) | recipe_values,
        "stages": st.lists(stage_entries, max_size=3) | recipe_values,
        "export": st.dictionaries(
            st.sampled_from(["out", "format", "style", "run"]), recipe_values, max_size=3
        )
        | recipe_values,
    },
)


@FUZZ
@given(doc=recipes)
def test_fuzz_recipes(doc: dict) -> None:
    """Any recipe either parses or is refused with one line; it never crashes the parser."""
    from flows.recipes import parse_recipe

    COUNTS["tried"] += 1
    try:
        parse_recipe(doc, "fuzz.yaml", None)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc)
    COUNTS["held"] += 1
