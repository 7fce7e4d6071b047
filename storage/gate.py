"""Gated SQL: the one way users' SQL (and SQL fragments in recipes / options) reaches DuckDB.

One read-only statement (SELECT / WITH / EXPLAIN of one), decided by DuckDB's own parser; file
access limited to the lake; extensions neither installed nor loaded; configuration locked after
setup; a memory limit; a time limit enforced by interrupting the query.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import duckdb
import pyarrow as pa

from storage import catalog
from storage.errors import UserError

MAX_SQL_CHARS = 100_000
_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\s+", re.IGNORECASE)


def check_statement(sql: str) -> None:
    """Refuse anything but exactly one read-only statement."""
    if len(sql) > MAX_SQL_CHARS:
        raise UserError(f"SQL refused: {len(sql)} characters is over the limit of {MAX_SQL_CHARS}")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"SQL error: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise UserError(f"SQL refused: exactly one statement is allowed, got {len(statements)}")
    statement = statements[0]
    kind = statement.type
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN.sub("", statement.query, count=1)
        inner_statements = duckdb.extract_statements(inner) if inner.strip() else []
        if len(inner_statements) != 1 or inner_statements[0].type != duckdb.StatementType.SELECT:
            raise UserError("SQL refused: EXPLAIN is allowed of a SELECT only")
    elif kind != duckdb.StatementType.SELECT:
        raise UserError(f"SQL refused: only SELECT / WITH / EXPLAIN are allowed, got {kind.name}")


def gated_connection(
    lake_root: Path, memory_limit: str = "2GB", threads: int = 2
) -> duckdb.DuckDBPyConnection:
    root = Path(lake_root).absolute()
    con = duckdb.connect(
        ":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    catalog.define_views(con, root)
    con.execute(f"SET allowed_directories=[{catalog.quote(str(root) + '/')}]")
    con.execute("SET enable_external_access=false")
    con.execute(f"SET memory_limit={catalog.quote(memory_limit)}")
    con.execute(f"SET threads={int(threads)}")
    con.execute("SET lock_configuration=true")
    return con


def run_sql(
    lake_root: Path,
    sql: str,
    params: list | None = None,
    timeout_s: float = 60.0,
    memory_limit: str = "2GB",
) -> pa.Table:
    """Run one user statement through the gate; returns the whole result as an Arrow table."""
    check_statement(sql)
    con = gated_connection(lake_root, memory_limit=memory_limit)
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        relation = con.sql(sql, params=params or None)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.InterruptException:
        raise UserError(f"SQL stopped: it ran past the time limit of {timeout_s:g} s") from None
    except duckdb.OutOfMemoryException:
        raise UserError(f"SQL stopped: it needed more than the memory limit of {memory_limit}") from None
    except duckdb.PermissionException as exc:
        raise UserError(f"SQL refused: {str(exc).splitlines()[0]}") from None
    except duckdb.Error as exc:
        raise UserError(f"SQL error: {str(exc).splitlines()[0]}") from None
    finally:
        timer.cancel()
        con.close()


def select_where(
    lake_root: Path, table: str, predicate: str, columns: str = "*", timeout_s: float = 60.0
) -> pa.Table:
    """Rows of a lake view matching a user's SQL predicate (recipe filters, forget-set predicates)."""
    return run_sql(lake_root, f"SELECT {columns} FROM {table} WHERE ({predicate})", timeout_s=timeout_s)
