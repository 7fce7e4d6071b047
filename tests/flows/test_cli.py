"""The CLI as a user runs it: ingest, sql in every format, runs, tables, and the quick demo."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from assay_testing import run_cli


@pytest.fixture
def project(tmp_path: Path) -> Path:
    rows = [
        {
            "prompt": f"q{i}",
            "response": f"a{i}",
            "domain": "math" if i % 2 else "code",
            "difficulty": i % 5 + 1,
        }
        for i in range(6)
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_cli("ingest", "data.jsonl", "--dataset", "toy", cwd=tmp_path).returncode == 0
    return tmp_path


def test_sql_formats_and_out_files(project: Path) -> None:
    query = "SELECT domain, count(*) AS n FROM examples GROUP BY 1 ORDER BY 1"
    table = run_cli("sql", query, cwd=project)
    assert table.returncode == 0 and "code" in table.stdout and "math" in table.stdout
    csv = run_cli("sql", query, "--format", "csv", cwd=project)
    assert csv.stdout.splitlines() == ["domain,n", "code,3", "math,3"]
    js = run_cli("sql", query, "--format", "json", cwd=project)
    assert [json.loads(line) for line in js.stdout.splitlines()] == [
        {"domain": "code", "n": 3},
        {"domain": "math", "n": 3},
    ]
    out = run_cli("sql", query, "--format", "parquet", "--out", "r.parquet", cwd=project)
    assert out.returncode == 0 and pd.read_parquet(project / "r.parquet")["n"].tolist() == [3, 3]
    refused = run_cli("sql", "DROP VIEW examples", cwd=project)
    assert refused.returncode == 2 and refused.stderr.startswith("error: SQL refused")


def test_runs_and_tables(project: Path) -> None:
    runs = run_cli("runs", "--json", cwd=project)
    records = [json.loads(line) for line in runs.stdout.splitlines()]
    assert [(r["kind"], r["status"]) for r in records] == [("ingest", "complete")]
    assert records[0]["params"]["dataset"] == "toy"  # JSON columns come out as JSON, not as strings
    tables = run_cli("tables", cwd=project)
    assert tables.returncode == 0 and "examples" in tables.stdout and "token_scores" in tables.stdout


def test_lake_option_and_env_pick_the_lake(project: Path) -> None:
    other = project / "elsewhere"
    assert run_cli("--lake", str(other), "ingest", "data.jsonl", "-d", "toy", cwd=project).returncode == 0
    via_env = run_cli(
        "sql",
        "SELECT count(*) AS n FROM examples",
        "--format",
        "csv",
        cwd=project,
        env={"ASSAY_LAKE": str(other)},
    )
    assert via_env.stdout.splitlines() == ["n", "6"]
    assert (other / "catalog.duckdb").exists()


def test_quick_demo_through_prefect(tmp_path: Path) -> None:
    result = run_cli("demo", "--quick", cwd=tmp_path, prefect=True)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = run_cli(
        "sql",
        "select domain, count(*) AS n from examples group by 1 order by 1",
        "--format",
        "csv",
        cwd=tmp_path,
    )
    lines = answer.stdout.splitlines()
    assert lines[0] == "domain,n" and [line.split(",")[0] for line in lines[1:]] == ["code", "math"]
    model_dirs = list((tmp_path / ".assay" / "cache").glob("reference-model-*"))
    assert len(model_dirs) == 1 and (model_dirs[0] / "config.json").exists()
    from transformers import AutoModelForCausalLM

    from attribution.lm_data import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dirs[0])
    tokenizer = load_tokenizer(model_dirs[0])
    assert tokenizer.chat_template and model.config.model_type == "qwen2"
    # loaded as trained: numbers are BPE merges, not the digit-by-digit split of Qwen2Tokenizer
    assert len(tokenizer("8 * 33 = 264")["input_ids"]) < 8
