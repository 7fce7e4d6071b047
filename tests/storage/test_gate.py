"""The SQL gate: one read-only statement, file access limited to the lake, bounded time."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from assay_figures import record
from assay_testing import run_cli, tree_digest

from storage import Lake, UserError
from storage.gate import Gate, run_sql, select_where

HELD: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def record_attacks():
    yield
    record("SQL attacks", len(ATTACKS) + 8, len(HELD), "refused or stopped by the gate, lake unchanged")


@pytest.fixture
def lake(lake_dir: Path) -> Lake:
    lake = Lake(lake_dir)
    with lake.run("attribute", "gate") as run:
        run.write(
            "scores", pd.DataFrame({"train_id": ["a", "b"], "target_id": ["q", "q"], "score": [1.0, -2.0]})
        )
    return lake


ATTACKS = {
    "copy_out": "COPY scores TO '/tmp/assay-gate-leak.csv'",
    "copy_into_lake": "COPY scores TO '{lake}/scores/leak.parquet'",
    "attach": "ATTACH '/tmp/assay-gate.db' AS x",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "read_passwd_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_passwd_text": "SELECT * FROM read_text('/etc/passwd')",
    "glob": "SELECT * FROM glob('/etc/*')",
    "getenv": "SELECT getenv('HOME')",
    "pragma": "PRAGMA database_list",
    "set": "SET memory_limit='100GB'",
    "two_statements": "SELECT 1; SELECT 2",
    "create": "CREATE TABLE t AS SELECT 1",
    "explain_analyze_copy": "EXPLAIN ANALYZE COPY scores TO '/tmp/assay-gate-leak2.csv'",
    "query_function": "SELECT * FROM query('COPY scores TO ''/tmp/assay-gate-leak3.csv''')",
    "too_long": "SELECT 1" + " " * 200_000,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_are_refused_and_the_lake_is_unchanged(lake: Lake, name: str) -> None:
    before = tree_digest(lake.root)
    with pytest.raises(UserError, match="^SQL (refused|error)"):
        run_sql(lake.root, ATTACKS[name].format(lake=lake.root), timeout_s=10)
    assert tree_digest(lake.root) == before
    assert not list(Path("/tmp").glob("assay-gate-leak*"))
    HELD.append(name)


def test_endless_query_is_stopped(lake: Lake) -> None:
    endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    with pytest.raises(UserError, match="time limit"):
        run_sql(lake.root, endless, timeout_s=1)
    HELD.append("endless recursive CTE")


def test_reads_and_predicates_work(lake: Lake) -> None:
    assert run_sql(
        lake.root, "WITH s AS (SELECT * FROM scores) SELECT sum(score) AS t FROM s"
    ).to_pylist() == [{"t": -1.0}]
    assert run_sql(lake.root, "EXPLAIN SELECT * FROM scores").num_rows >= 1
    assert select_where(lake.root, "scores", "score > 0", "train_id").to_pylist() == [{"train_id": "a"}]


# ------------------------------------------------------------------------------- limits
@pytest.mark.parametrize("timeout", [float("nan"), -1, 0, float("inf"), 1e9, "soon"])
def test_bad_timeouts_are_refused(lake: Lake, timeout) -> None:
    with pytest.raises(UserError, match="--timeout"):
        run_sql(lake.root, "SELECT 1", timeout_s=timeout)


@pytest.mark.parametrize("memory", ["foo", "1KB", "10PB", "-2GB", "2 parsecs", ""])
def test_bad_memory_limits_are_refused(lake: Lake, memory: str) -> None:
    with pytest.raises(UserError, match="--memory"):
        run_sql(lake.root, "SELECT 1", memory_limit=memory)
    with pytest.raises(UserError, match="--max-result"):
        run_sql(lake.root, "SELECT 1", max_result=memory)


@pytest.mark.parametrize("timeout", [1e-6, 1e-3, 0.05])
def test_a_tiny_timeout_still_stops_an_endless_query(lake: Lake, timeout: float) -> None:
    """The first interrupt can land before DuckDB starts executing (and is dropped): the watchdog keeps
    interrupting until the statement returns."""
    endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    with pytest.raises(UserError, match="time limit"):
        run_sql(lake.root, endless, timeout_s=timeout)
    HELD.append(f"endless query, timeout {timeout}")


def test_the_result_size_is_bounded(lake: Lake) -> None:
    with pytest.raises(UserError, match="result is larger than 20MB .the --max-result limit"):
        run_sql(lake.root, "SELECT range, repeat('x', 100) AS pad FROM range(1000000)", max_result="20MB")
    with Gate(lake.root, max_result="20MB") as gate, pytest.raises(UserError, match="larger than"):
        gate.render("SELECT range, repeat('x', 100) AS pad FROM range(1000000)")
    HELD.append("result larger than the limit")


def test_spills_go_to_a_private_folder_and_nothing_else_is_readable(
    lake: Lake, tmp_path: Path, monkeypatch
) -> None:
    """DuckDB's default spill folder (./.tmp, shared by every process started there) and the lake's own
    staging files are out of reach; each connection spills to a fresh folder of its own, removed after."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.txt").write_text("secret\n")
    (lake.root / ".staging" / "other.parquet").write_text("not for queries\n")
    temps = []
    for _ in range(2):
        with Gate(lake.root) as gate:
            temp = gate.arrow("SELECT current_setting('temp_directory') AS t")["t"][0].as_py()
            temps.append(temp)
            assert Path(temp).parent == lake.root / ".staging" and Path(temp).name.startswith("sql-")
            for path in [
                tmp_path / ".tmp" / "secret.txt",
                lake.root / ".staging" / "other.parquet",
                lake.root / "catalog.duckdb",
            ]:
                with pytest.raises(UserError, match="SQL refused"):
                    gate.arrow(f"SELECT * FROM read_text('{path}')")
        assert not Path(temp).exists()
    assert temps[0] != temps[1]
    HELD.append("read outside the lake's tables")


def test_a_query_larger_than_memory_spills_and_cleans_up(lake: Lake) -> None:
    sql = "SELECT sum(x) AS s FROM (SELECT range AS x, repeat('y', 50) AS pad FROM range(2000000) ORDER BY pad, x DESC)"
    assert run_sql(lake.root, sql, memory_limit="64MB", timeout_s=600).to_pylist() == [{"s": 1999999000000}]
    assert (lake.root / ".staging").is_dir()
    assert not list((lake.root / ".staging").glob("sql-*"))


# ------------------------------------------------------------------------------- statements and values
def test_explain_with_options_is_checked_and_parser_errors_are_user_errors(lake: Lake) -> None:
    assert run_sql(lake.root, "explain (format json) select 1").num_rows == 1
    assert run_sql(lake.root, "EXPLAIN ANALYZE SELECT * FROM scores").num_rows >= 1
    for refused in [
        "explain (format json) copy scores to '/tmp/assay-gate-leak4.csv'",
        "explain (analyze) copy scores to 'x.csv'",
    ]:
        with pytest.raises(UserError, match="EXPLAIN is allowed of a SELECT only"):
            run_sql(lake.root, refused)
    for broken in ["select 1 +", "explain (format json", "selec 1", "explain (", "\x00"]:
        with pytest.raises(UserError, match="^SQL (error|refused)"):
            run_sql(lake.root, broken)
    assert not list(Path("/tmp").glob("assay-gate-leak*"))


def test_huge_and_unusual_values_come_out_right(lake: Lake) -> None:
    sql = """SELECT 340282366920938463463374607431768211455::UHUGEINT AS u, '-170141183460469231731687303715884105728'::HUGEINT AS h,
             interval 1 day AS i, union_value(k := 1) AS un, NULL::DOUBLE AS missing, 'nan'::DOUBLE AS nan"""
    row = run_sql(lake.root, sql).to_pylist()[0]
    assert row["u"] == "340282366920938463463374607431768211455" and row["h"] == -(2**127)
    assert row["missing"] is None and row["nan"] != row["nan"]
    with Gate(lake.root) as gate:
        text = gate.render(sql)
        assert text.rows[0][:2] == (
            "340282366920938463463374607431768211455",
            "-170141183460469231731687303715884105728",
        )
        assert text.rows[0][4:] == (None, "nan")
        as_json = json.loads(gate.render(sql, as_json=True).rows[0][0])
        assert as_json["u"] == 340282366920938463463374607431768211455 and as_json["missing"] is None
        assert as_json["nan"] == "nan"  # JSON has no NaN: given as text


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_every_duckdb_type_prints_or_is_refused_cleanly(lake: Lake, tmp_path: Path, fmt: str) -> None:
    out = ["--out", str(tmp_path / f"all.{ {'table': 'txt'}.get(fmt, fmt) }")]
    result = run_cli("--lake", str(lake.root), "sql", "SELECT * FROM test_all_types()", *out, cwd=tmp_path)
    assert result.returncode in (0, 2) and "Traceback" not in result.stderr, result.stderr[-2000:]
    if fmt == "json":
        rows = [json.loads(line) for line in (tmp_path / "all.json").read_text().splitlines()]
        assert len(rows) == 3 and rows[0]["uhugeint"] == 0 and rows[1]["uhugeint"] == 2**128 - 1
    if fmt == "table":
        assert "NULL" in (tmp_path / "all.txt").read_text()


def test_cli_shows_null_as_null_and_json_columns_as_objects(lake: Lake, tmp_path: Path) -> None:
    sql = "SELECT NULL::DOUBLE AS missing, 'nan'::DOUBLE AS not_a_number, 1.5 AS x"
    table = run_cli("--lake", str(lake.root), "sql", sql, cwd=tmp_path)
    assert table.returncode == 0 and "NULL" in table.stdout and "nan" in table.stdout
    as_csv = run_cli("--lake", str(lake.root), "sql", sql, "--format", "csv", cwd=tmp_path)
    assert as_csv.stdout == "missing,not_a_number,x\n,nan,1.5\n"
    runs = run_cli("--lake", str(lake.root), "runs", "--format", "json", cwd=tmp_path)
    record = json.loads(runs.stdout.splitlines()[0])
    assert isinstance(record["params"], dict) and isinstance(record["inputs"], dict)
    same = run_cli("--lake", str(lake.root), "sql", "SELECT * FROM runs", "--format", "json", cwd=tmp_path)
    assert json.loads(same.stdout.splitlines()[0]) == record  # one JSON style for both commands
    legacy = run_cli("--lake", str(lake.root), "runs", "--json", cwd=tmp_path)
    assert legacy.stdout == runs.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "q.json", "--format", "csv"], "--format csv but --out q.json"),
        (["--out", "q.xlsx"], "unknown suffix"),
        (["--format", "parquet"], "needs --out"),
        (["--timeout", "nan"], "--timeout"),
        (["--timeout", "-1"], "--timeout"),
        (["--memory", "foo"], "--memory"),
        (["--max-result", "lots"], "--max-result"),
    ],
)
def test_cli_option_errors_exit_2(lake: Lake, tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("--lake", str(lake.root), "sql", "SELECT 1", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".assay"] or not list(tmp_path.glob("q.*"))


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl", "parquet", "txt"])
def test_the_out_suffix_picks_the_format(lake: Lake, tmp_path: Path, suffix: str) -> None:
    result = run_cli(
        "--lake",
        str(lake.root),
        "sql",
        "SELECT train_id, score FROM scores ORDER BY 1",
        "--out",
        f"q.{suffix}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path / f"q.{suffix}"
    if suffix == "parquet":
        assert pd.read_parquet(path)["score"].tolist() == [1.0, -2.0]
    elif suffix == "csv":
        assert path.read_text() == "train_id,score\na,1.0\nb,-2.0\n"
    elif suffix in ("json", "jsonl"):
        assert [json.loads(x) for x in path.read_text().splitlines()] == [
            {"train_id": "a", "score": 1.0},
            {"train_id": "b", "score": -2.0},
        ]
    else:
        assert path.read_text().splitlines()[0].split() == ["train_id", "score"]


@pytest.mark.parametrize("command", ["sql", "runs", "ingest"])
def test_help_is_whole_at_any_width(tmp_path: Path, command: str) -> None:
    for columns in ("20", "80", "300"):
        result = run_cli(command, "--help", cwd=tmp_path, env={"COLUMNS": columns, "TERM": "dumb"})
        words = " ".join(result.stdout.split())
        assert result.returncode == 0 and "…" not in result.stdout
        expected = {
            "sql": "Seconds before the query is stopped (at most 86400).",
            "runs": "Only runs of this kind (ingest, attribute, curate, ...).",
            "ingest": "Drop rows that repeat an earlier row exactly (same id and content); keep the first.",
        }[command]
        assert expected in words, words
