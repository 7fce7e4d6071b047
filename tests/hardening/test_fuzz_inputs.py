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
    assert not (tmp / "lake").exists() and not (tmp / "missing-dir").exists()
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
