"""Gated SQL: the one way users' SQL (and SQL fragments in recipes / options) reaches DuckDB.

One read-only statement (SELECT / WITH / EXPLAIN of one), decided by DuckDB's own parser; file
access limited to the lake's table folders and registry; extensions neither installed nor loaded;
configuration locked after setup; limits on time, memory and result size.

Limits (each checked before anything runs; a bad value is a UserError):
- time: `timeout_s`, finite, > 0 and at most MAX_TIMEOUT_S. A watchdog interrupts the query at the
  deadline and keeps interrupting every 50 ms until it returns: an interrupt that lands before DuckDB
  starts executing (which DuckDB drops) cannot leave the query unbounded.
- memory: `memory_limit` ("4GB", "512MiB", ...; default DuckDB's own, 80% of RAM), between MIN_MEMORY
  and the machine's RAM. DuckDB spills beyond it to a temporary folder private to this connection
  (`<lake>/.staging/sql-HOST-PID-*`, created fresh and removed on close; no spilling when the lake does
  not exist yet). DuckDB always lets a query read its own spill folder; being private, it holds
  nothing but this query's spilled blocks. (DuckDB's default, `./.tmp`, is shared by every process
  started in that folder.)
- result size: `max_result` (default 2GB) bounds the result assay holds for the caller, which
  DuckDB's limit does not cover (Arrow bytes, or the text of rendered cells); past it the query stops
  with a UserError saying to aggregate, add a LIMIT, or raise --max-result.

`Gate` is one connection for one command: views are defined once, and `arrow()` / `render()` run
statements on it. `run_sql` / `select_where` are the one-statement shortcuts.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from storage import catalog
from storage.errors import UserError, shorten
from storage.schemas import TABLES

MAX_SQL_CHARS = 100_000
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 24 * 3600.0
DEFAULT_MAX_RESULT = "2GB"
MIN_MEMORY = 16 * 2**20
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)\s*", re.IGNORECASE)
# EXPLAIN [ANALYZE] [(option, ...)] statement
_EXPLAIN = re.compile(r"\s*explain\s*(?:analyze\b\s*)?(?:\([^()]*\)\s*)?", re.IGNORECASE)
# Result columns of these types do not survive DuckDB -> Arrow intact (UHUGEINT max arrives as -1 in a
# decimal128; Arrow has no arbitrary-precision integer, bit string or time with time zone; Parquet has no
# union): they are handed over as text.
_AS_TEXT = re.compile(r"\b(UHUGEINT|BIGNUM|VARINT|BIT|UNION|TIME WITH TIME ZONE)\b")


def check_timeout(value: float) -> float:
    """A time limit in seconds: finite, > 0 and at most MAX_TIMEOUT_S."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--timeout {shorten(value)}: expected a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TIMEOUT_S:
        raise UserError(f"--timeout {value}: expected seconds > 0 and at most {MAX_TIMEOUT_S:g} (24 hours)")
    return seconds


def _machine_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def check_memory(text: str, option: str = "--memory") -> int:
    """A size such as "2GB" or "512MiB" in bytes: at least MIN_MEMORY, at most the machine's RAM."""
    match = _MEMORY.fullmatch(str(text))
    if match is None:
        raise UserError(f"{option} {shorten(text)}: expected a size such as 2GB or 512MiB")
    nbytes = int(float(match[1]) * _UNITS[match[2].lower()])
    if nbytes < MIN_MEMORY or nbytes > _machine_memory():
        raise UserError(
            f"{option} {text}: expected at least 16MiB and at most this machine's memory "
            f"({_machine_memory() / 2**30:.1f} GiB)"
        )
    return nbytes


def check_statement(sql: str) -> None:
    """Refuse anything but exactly one read-only statement."""
    if not isinstance(sql, str):
        raise UserError("SQL refused: expected the text of one statement")
    if len(sql) > MAX_SQL_CHARS:
        raise UserError(f"SQL refused: {len(sql)} characters is over the limit of {MAX_SQL_CHARS}")
    statements = _parse(sql)
    if len(statements) != 1:
        raise UserError(f"SQL refused: exactly one statement is allowed, got {len(statements)}")
    statement = statements[0]
    kind = statement.type
    if kind == duckdb.StatementType.EXPLAIN:
        match = _EXPLAIN.match(statement.query)
        inner = statement.query[match.end() :] if match else ""
        inner_statements = _parse(inner) if inner.strip() else []
        if len(inner_statements) != 1 or inner_statements[0].type != duckdb.StatementType.SELECT:
            raise UserError("SQL refused: EXPLAIN is allowed of a SELECT only")
    elif kind != duckdb.StatementType.SELECT:
        raise UserError(f"SQL refused: only SELECT / WITH / EXPLAIN are allowed, got {kind.name}")


def _parse(sql: str) -> list:
    try:
        return duckdb.extract_statements(sql)
    except (duckdb.Error, RuntimeError) as exc:
        raise UserError(f"SQL error: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return shorten(lines[0] if lines else type(exc).__name__, 300)[1:-1]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Rendered:
    """A result as text: column names, DuckDB types, and cells as DuckDB prints them (None = NULL);
    `more` is True when rows were left out because of `max_rows`."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[str | None, ...]]
    more: bool = False


class Gate:
    """One gated DuckDB connection over a lake, for one command (`with Gate(root) as gate: ...`)."""

    def __init__(
        self,
        lake_root: Path | str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit: str | None = None,
        max_result: str = DEFAULT_MAX_RESULT,
        threads: int | None = None,
    ):
        self.timeout_s = check_timeout(timeout_s)
        self.memory_limit = memory_limit
        memory_bytes = None if memory_limit is None else check_memory(memory_limit)
        self.max_result = max_result
        self.max_result_bytes = check_memory(max_result, "--max-result")
        self.root = Path(lake_root).absolute()
        from storage.lake import Lake, staging_tag

        Lake(self.root).refresh_catalog_if_stale()
        self._temp: Path | None = None
        if (self.root / "runs").is_dir():
            self._temp = self.root / ".staging" / f"sql-{staging_tag()}"
            self._temp.parent.mkdir(exist_ok=True)
        self.con = duckdb.connect(
            ":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        )
        try:
            self.views = catalog.LakeViews(self.con, self.root)
            readable = [self.root / name for name in (*TABLES, "runs")]
            listed = ", ".join(catalog.quote(str(p) + "/") for p in readable)
            self.con.execute(f"SET temp_directory={catalog.quote(str(self._temp) if self._temp else '')}")
            self.con.execute(f"SET allowed_directories=[{listed}]")
            self.con.execute("SET enable_external_access=false")
            if memory_bytes is not None:
                self.con.execute(f"SET memory_limit={catalog.quote(str(memory_bytes) + 'B')}")
            if threads is not None:
                self.con.execute(f"SET threads={int(threads)}")
            self.con.execute("SET lock_configuration=true")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Gate:  # noqa: PYI034 - Gate is final
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)

    # ------------------------------------------------------------------------------ running
    @contextmanager
    def _limits(self) -> Iterator[None]:
        """The time limit around one statement, and its errors as one-line UserErrors."""
        done, fired = threading.Event(), threading.Event()

        def watch() -> None:
            if done.wait(self.timeout_s):
                return
            fired.set()
            while True:  # until the statement returns: an early interrupt is dropped by DuckDB
                self.con.interrupt()
                if done.wait(0.05):
                    return

        watchdog = threading.Thread(target=watch, name="assay-sql-timeout", daemon=True)
        watchdog.start()
        try:
            yield
        except duckdb.InterruptException:
            raise UserError(f"SQL stopped: it ran past the time limit of {self.timeout_s:g} s") from None
        except duckdb.OutOfMemoryException:
            raise UserError(
                f"SQL stopped: it needed more than the memory limit of {self.memory_limit or 'DuckDB (80% of RAM)'}"
            ) from None
        except duckdb.PermissionException as exc:
            raise UserError(f"SQL refused: {_first_line(exc)}") from None
        except (duckdb.Error, pa.ArrowException) as exc:
            if fired.is_set():
                raise UserError(f"SQL stopped: it ran past the time limit of {self.timeout_s:g} s") from None
            raise UserError(f"SQL error: {_first_line(exc)}") from None
        finally:
            done.set()
            watchdog.join()

    def _relation(self, sql: str, params: list | None) -> duckdb.DuckDBPyRelation:
        check_statement(sql)
        # Only the views this statement names (and what they read): each costs milliseconds to bind.
        self.views.define(catalog.referenced(sql))
        try:
            relation = self.con.sql(sql, params=params or None)
        except duckdb.CatalogException:
            if len(self.views.defined) == len(catalog.ALL_VIEWS):
                raise
            self.views.define(catalog.ALL_VIEWS)  # a name the parser's list missed: define them all
            relation = self.con.sql(sql, params=params or None)
        if relation is None:  # pragma: no cover - check_statement lets only queries through
            raise UserError("SQL refused: the statement returns no rows")
        return relation

    def _too_big(self) -> UserError:
        return UserError(
            f"SQL stopped: the result is larger than {self.max_result} (the --max-result limit); "
            "aggregate, add a LIMIT, or raise --max-result"
        )

    def arrow(self, sql: str, params: list | None = None, max_rows: int | None = None) -> pa.Table:
        """The result of one statement as an Arrow table with DuckDB's types, except the few Arrow
        cannot hold (huge integers, intervals, unions, bit strings), which arrive as text."""
        with self._limits():
            relation = self._relation(sql, params)
            types = [str(t) for t in relation.types]
            if any(_AS_TEXT.search(t) for t in types):
                exprs = [
                    f"{f'CAST(#{i} AS VARCHAR)' if _AS_TEXT.search(kind) else f'#{i}'} AS {_ident(name)}"
                    for i, (name, kind) in enumerate(zip(relation.columns, types, strict=True), start=1)
                ]
                relation = relation.project(", ".join(exprs))
            if max_rows is not None:
                relation = relation.limit(max_rows)
            reader = relation.to_arrow_reader(64 * 1024)
            batches, nbytes = [], 0
            for batch in reader:
                nbytes += batch.nbytes
                if nbytes > self.max_result_bytes:
                    raise self._too_big()
                batches.append(batch)
            return pa.Table.from_batches(batches, schema=reader.schema)

    def render(self, sql: str, max_rows: int | None = None, as_json: bool = False) -> Rendered:
        """The result of one statement as text, rendered by DuckDB itself (every type prints right):
        one VARCHAR cell per column, or with `as_json` one JSON object per row (a single column)."""
        with self._limits():
            relation = self._relation(sql, None)
            columns, types = list(relation.columns), [str(t) for t in relation.types]
            if as_json:
                pairs = []
                for i, (name, kind) in enumerate(zip(columns, types, strict=True), start=1):
                    value = f"#{i}"
                    if kind in ("DOUBLE", "FLOAT"):  # NaN / Infinity are not JSON: give them as text
                        value = f"CASE WHEN isfinite(#{i}) THEN to_json(#{i}) ELSE to_json(CAST(#{i} AS VARCHAR)) END"
                    pairs.append(f"{catalog.quote(name)}, {value}")
                relation = relation.project(f"CAST(json_object({', '.join(pairs)}) AS VARCHAR)")
            else:
                relation = relation.project(
                    ", ".join(f"CAST(#{i} AS VARCHAR)" for i in range(1, len(columns) + 1))
                )
            if max_rows is not None:
                relation = relation.limit(max_rows + 1)
            rows: list[tuple] = []
            nbytes = 0
            for batch in relation.to_arrow_reader(4096):
                nbytes += batch.nbytes
                if nbytes > self.max_result_bytes:
                    raise self._too_big()
                rows.extend(zip(*(column.to_pylist() for column in batch.columns), strict=True))
        more = max_rows is not None and len(rows) > max_rows
        return Rendered(columns, types, rows[:max_rows] if more else rows, more)


def run_sql(
    lake_root: Path,
    sql: str,
    params: list | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_limit: str | None = None,
    max_result: str = DEFAULT_MAX_RESULT,
) -> pa.Table:
    """Run one user statement through the gate; returns the whole result as an Arrow table."""
    check_statement(sql)
    with Gate(lake_root, timeout_s=timeout_s, memory_limit=memory_limit, max_result=max_result) as gate:
        return gate.arrow(sql, params)


def select_where(
    lake_root: Path, table: str, predicate: str, columns: str = "*", timeout_s: float = DEFAULT_TIMEOUT_S
) -> pa.Table:
    """Rows of a lake view matching a user's SQL predicate (recipe filters, forget-set predicates)."""
    return run_sql(lake_root, f"SELECT {columns} FROM {table} WHERE ({predicate})", timeout_s=timeout_s)
