"""The SQL gate: one read-only statement, file access limited to the lake, bounded time."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from assay_figures import record
from assay_testing import tree_digest

from storage import Lake, UserError
from storage.gate import run_sql, select_where

HELD: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def record_attacks():
    yield
    record("SQL attacks", len(ATTACKS) + 1, len(HELD), "refused or stopped by the gate, lake unchanged")


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
