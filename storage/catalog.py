"""DuckDB views over the lake's Parquet files: what `assay sql` and catalog.duckdb users query.

Views show rows of complete runs only, and they name those runs' files explicitly (absolute paths),
never a glob: a complete run's partitions never change again, so a reader's file list stays valid
while other runs write, resume or fail (a glob would pick up a resuming run's folder as its parts are
being redone, and fail with "No files found" when they are all gone for a moment). The price: a view
defined earlier does not see runs completed later, so catalog.duckdb is rebuilt after every run and
whenever it is older than the registry (`Lake.refresh_catalog_if_stale`).

`examples` shows the current version of each dataset; `examples_all` every version; `datasets` one
row per dataset; `runs` the registry with `params` and `inputs` as JSON.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa

from storage.schemas import RUNS, TABLES

EXTRA_VIEWS = ("runs", "examples_all", "dataset_versions", "datasets")
# A registry row of kind "ingest", method RESTORE: re-ingesting an earlier version made it current again.
RESTORE = "restore"


def sql_type(dtype: pa.DataType) -> str:
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "VARCHAR"
    if pa.types.is_int64(dtype):
        return "BIGINT"
    if pa.types.is_int32(dtype):
        return "INTEGER"
    if pa.types.is_floating(dtype):
        return "DOUBLE"
    if pa.types.is_boolean(dtype):
        return "BOOLEAN"
    if pa.types.is_timestamp(dtype):
        return "TIMESTAMPTZ" if dtype.tz else "TIMESTAMP"
    if pa.types.is_list(dtype):
        return sql_type(dtype.value_type) + "[]"
    if pa.types.is_struct(dtype):
        return "STRUCT(" + ", ".join(f"{f.name} {sql_type(f.type)}" for f in dtype) + ")"
    raise TypeError(f"no SQL type for {dtype}")


def empty_select(schema: pa.Schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {sql_type(f.type)}) AS {f.name}" for f in schema)
    return f"SELECT {cols} WHERE false"


_SCRATCH: tuple[int, duckdb.DuckDBPyConnection] | None = None
_SCRATCH_LOCK = threading.Lock()


def scratch_cursor() -> duckdb.DuckDBPyConnection:
    """A new connection to this process's scratch DuckDB database, for work that names nothing in it
    (queries over Arrow tables, a database ATTACHed under a unique name). Opening a database costs
    about 20 ms (DuckDB registers its functions each time); a cursor of an open one, microseconds.
    Close the cursor when done: the database is closed before every fork (`_close_scratch`)."""
    global _SCRATCH
    with _SCRATCH_LOCK:
        if _SCRATCH is None or _SCRATCH[0] != os.getpid():
            _SCRATCH = (os.getpid(), duckdb.connect(":memory:"))
        return _SCRATCH[1].cursor()


def open_scratch_in_background() -> None:
    """Open the scratch database on a helper thread, for a caller with other work to do before its
    first DuckDB query (DuckDB releases the GIL while it opens). A failure here is left to that query."""

    def open_scratch() -> None:
        with contextlib.suppress(Exception):
            scratch_cursor().close()

    threading.Thread(target=open_scratch, name="assay-duckdb-open").start()


def _close_scratch() -> None:
    """Before a fork: a DuckDB database alive in the parent makes a forked child hang or crash when the
    database is dropped, even at the child's exit (its threads are not in the child). The lock is held
    across the fork, so the child does not inherit it taken; both sides release it."""
    global _SCRATCH
    _SCRATCH_LOCK.acquire()
    if _SCRATCH is not None:
        if _SCRATCH[0] == os.getpid():
            _SCRATCH[1].close()
        _SCRATCH = None


os.register_at_fork(
    before=_close_scratch, after_in_parent=_SCRATCH_LOCK.release, after_in_child=_SCRATCH_LOCK.release
)


def write_catalog(path: Path, root: Path) -> None:
    """A new DuckDB file at `path` holding the lake's views (`define_views`), built on the scratch
    database: ATTACHing the file costs about 2 ms where opening it as a database costs 20."""
    name = f"catalog_{uuid.uuid4().hex}"
    con = scratch_cursor()
    try:
        con.execute(f"ATTACH {quote(path)} AS {name}")
        try:
            con.execute(f"USE {name}")  # the views' own names resolve inside the file
            define_views(con, root)
        finally:
            con.execute("USE memory")
            con.execute(f"DETACH {name}")
    finally:
        con.close()


def quote(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _parquet_files(folder: Path | str) -> list[str]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [e.path for e in entries if e.name.endswith(".parquet") and not e.name.startswith(".")]


def registry_files(root: Path) -> list[str]:
    return sorted(_parquet_files(Path(root) / "runs"))


# The registry compacted: every run's row in one file, each with the stamp of the registry file it was
# read from. A reader takes a run's row from here while its file still has that stamp, and reads only
# the other files: at 1,000 runs a query read 1,000 small Parquet files (0.7 s) before.
COMPACT_REGISTRY = Path(".registry") / "runs.parquet"
COMPACT_AFTER = 16  # registry files not in the compacted file before `refresh_catalog` rewrites it
_STAMP = ("_file", "_inode", "_mtime_ns", "_ctime_ns", "_size")
Stamp = tuple[int, int, int, int]


def _stamps(files: list[str]) -> dict[str, Stamp]:
    """File name -> (inode, mtime, ctime, size). A run's file is replaced as a whole (os.replace), a
    few times in its life (running, then complete or failed, maybe running again), and each of those
    records differs in size from the one before (the status and finish time change). So a file that
    still has its stamp holds the row read with it; inode numbers alone are reused at once here, and
    mtime and ctime may be coarse (milliseconds) on some file systems."""
    stamps = {}
    for file in files:
        try:
            stat = os.stat(file)
        except FileNotFoundError:
            continue  # gone since it was listed: read (and fail) as before, or absent next time
        stamps[os.path.basename(file)] = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
    return stamps


def _runs_columns(con: duckdb.DuckDBPyConnection, source: str) -> str:
    """The select list that gives `source` (registry rows) the RUNS schema: each column in its order and
    type, NULL where the files lack it, and nothing else. The registry's schema is then the same
    whatever mix of files (an older one missing a column, a compacted file) the rows came from."""
    present = {row[0] for row in con.execute(f"DESCRIBE {source}").fetchall()}
    return ", ".join(
        f"CAST({field.name if field.name in present else 'NULL'} AS {sql_type(field.type)}) AS {field.name}"
        for field in RUNS
    )


def _compacted_rows(root: Path, stamps: dict[str, Stamp]) -> pa.Table | None:
    """The compacted registry's rows whose file still has the stamp they were read with (with the
    stamp columns), or None when there is no compacted registry."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(root / COMPACT_REGISTRY)
    except (OSError, pa.ArrowException):
        return None  # absent, or damaged: every run is read from its own file until the next refresh
    if not set(_STAMP) <= set(table.column_names):
        return None  # not a file this version wrote: ignored, rewritten at the next refresh
    keys = zip(*(table[c].to_pylist() for c in _STAMP), strict=True)
    keep = [stamps.get(name) == tuple(stamp) for name, *stamp in keys]
    return table.filter(pa.array(keep, pa.bool_()))


def _registry_table(con: duckdb.DuckDBPyConnection, root: Path, name: str) -> int | None:
    """Table `name`: every run's registry row with its file's stamp (`_STAMP` columns), from the
    compacted registry where it is current and from the run's file otherwise. Returns how many files
    were read one by one, or None when the lake has no registry files."""
    files = registry_files(root)
    if not files:
        return None
    stamps = _stamps(files)
    compacted = _compacted_rows(root, stamps)
    covered = set() if compacted is None else set(compacted["_file"].to_pylist())
    rest = [f for f in files if os.path.basename(f) not in covered]
    parts = []
    if compacted is not None and compacted.num_rows:
        con.register("_compacted_rows", compacted)
        parts.append("SELECT * FROM _compacted_rows")
    if rest:
        names = [os.path.basename(f) for f in rest]
        con.register("_rest_stamps", _stamp_table({name: stamps.get(name) for name in names}))
        parts.append(
            f"SELECT r.* EXCLUDE (filename), s.* EXCLUDE (_file), parse_filename(r.filename) AS _file "
            f"FROM read_parquet({_file_list(rest)}, union_by_name=true, filename=true) r "
            "LEFT JOIN _rest_stamps s ON s._file = parse_filename(r.filename)"
        )
    try:
        # TEMP: private to this connection (cursors of the scratch database share its tables), and not
        # written into catalog.duckdb while that file is the current database.
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS " + " UNION ALL BY NAME ".join(parts))
    finally:
        for view in ("_compacted_rows", "_rest_stamps"):
            with contextlib.suppress(duckdb.Error):
                con.unregister(view)
    return len(rest)


def _stamp_table(stamps: dict[str, Stamp | None]) -> pa.Table:
    names = list(stamps)
    values = [stamps[n] or (None,) * 4 for n in names]
    columns = {"_file": pa.array(names, pa.string())}
    for k, column in enumerate(_STAMP[1:]):
        columns[column] = pa.array([v[k] for v in values], pa.int64())
    return pa.table(columns)


def compact_registry(root: Path, tmp: Path, after: int | None = None) -> bool:
    """Rewrite the compacted registry when at least `after` (default COMPACT_AFTER) registry files are not
    in it (as they stand now), through the temporary file `tmp` (on the lake's disk); returns whether it
    was rewritten. The caller holds the catalog lock (`Lake.refresh_catalog`). A file replaced while this
    runs keeps being read from its file by every reader until the next rewrite."""
    root = Path(root)
    con = scratch_cursor()
    try:
        outside = _read_registry_table(con, root, "_registry_compacting")
        if outside is None or outside < (COMPACT_AFTER if after is None else after):
            return False
        dest = root / COMPACT_REGISTRY
        try:
            dest.parent.mkdir(exist_ok=True)
            columns = _runs_columns(con, "_registry_compacting") + ", " + ", ".join(_STAMP)
            con.execute(
                f"COPY (SELECT {columns} FROM _registry_compacting ORDER BY _file) TO {quote(tmp)} (FORMAT parquet)"
            )
            os.replace(tmp, dest)
        except (OSError, duckdb.IOException):
            return False  # e.g. a lake this user may read but not write: readers read every file, as before
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return True
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute("DROP TABLE IF EXISTS _registry_compacting")
        con.close()


def complete_run_files(root: Path, complete: set[str], table: str) -> list[str]:
    """The Parquet files of `table` that belong to complete runs, sorted (one scandir per run)."""
    files: list[str] = []
    try:
        entries = sorted(os.scandir(Path(root) / table), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        if entry.name.startswith("run_id=") and entry.name[len("run_id=") :] in complete:
            files += sorted(_parquet_files(entry.path))
    return files


def _file_list(files: list[str]) -> str:
    return "[" + ", ".join(quote(f) for f in files) + "]"


_DATASET_VERSIONS = """SELECT f.dataset, f.version, f.run_id, CAST(sum(f.n) AS BIGINT) AS n_examples,
       any_value(r.finished_at) AS ingested_at, any_value(r.params) AS params
    FROM _example_files f JOIN runs r ON f.run_id = r.run_id GROUP BY f.dataset, f.version, f.run_id"""
# The current version of a dataset: the one ingested, or restored by re-ingesting it, last.
_DATASETS = f"""WITH restored AS (
      SELECT json_extract_string(inputs, '$.run_id') AS data_run, max(finished_at) AS at,
             arg_max(run_id, finished_at) AS restore_run FROM runs
      WHERE kind = 'ingest' AND method = '{RESTORE}' AND status = 'complete' GROUP BY ALL)
    SELECT v.*, greatest(v.ingested_at, coalesce(r.at, v.ingested_at)) AS current_since,
           CASE WHEN r.at > v.ingested_at THEN r.restore_run ELSE v.run_id END AS set_by
    FROM dataset_versions v LEFT JOIN restored r ON v.run_id = r.data_run
    QUALIFY row_number() OVER (PARTITION BY v.dataset ORDER BY current_since DESC, v.run_id) = 1"""
# What each derived view reads.
_NEEDS = {
    "examples": ("datasets",),
    "datasets": ("dataset_versions", "runs"),
    "dataset_versions": ("_example_files", "runs"),
}
ALL_VIEWS = (*(("examples_all" if t == "examples" else t) for t in TABLES), *_NEEDS, "runs")


REGISTRY_READS = 5


def _read_registry_table(con: duckdb.DuckDBPyConnection, root: Path, name: str) -> int | None:
    """`_registry_table`, listed and read again when a read fails, up to REGISTRY_READS times: a run's
    registry file is replaced (atomically) as it starts, completes or fails, and DuckDB opens a file
    more than once while reading it, so a replacement in between reads as broken Parquet ("Invalid
    data")."""
    for attempt in range(REGISTRY_READS):
        try:
            return _registry_table(con, root, name)
        except duckdb.InterruptException:
            raise
        except duckdb.Error:
            if attempt == REGISTRY_READS - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    return None


def _read_registry(con: duckdb.DuckDBPyConnection, root: Path) -> bool:
    """Table _registry (the RUNS schema) from the registry; False when there are no registry files."""
    if _read_registry_table(con, root, "_registry_stamped") is None:
        return False
    con.execute(
        f"CREATE OR REPLACE TABLE _registry AS SELECT {_runs_columns(con, '_registry_stamped')} "
        "FROM _registry_stamped ORDER BY _file"
    )
    con.execute("DROP TABLE _registry_stamped")
    return True


class LakeViews:
    """The lake's views on one connection, defined on demand (`define`): binding a view costs a few
    milliseconds, so a query defines only what it reads. The registry is read once, at construction:
    every view shows the runs that were complete then."""

    def __init__(self, con: duckdb.DuckDBPyConnection, root: Path):
        self.con, self.root = con, Path(root).absolute()
        self.defined: set[str] = set()
        self.has_registry = _read_registry(con, self.root)
        self.complete: set[str] = set()
        if self.has_registry:
            self.complete = {
                r[0] for r in con.execute("SELECT run_id FROM _registry WHERE status = 'complete'").fetchall()
            }
        self._files: dict[str, list[str]] = {}

    def files(self, table: str) -> list[str]:
        """`table`'s files of complete runs, listed when a view first needs them (a query over `runs`
        lists none: at 1,000 runs, listing every table took a scandir per run and table)."""
        if table not in self._files:
            self._files[table] = complete_run_files(self.root, self.complete, table)
        return self._files[table]

    def _sql(self, view: str) -> str:
        if view == "runs":
            if self.has_registry:
                return (
                    "SELECT * REPLACE (TRY_CAST(params AS JSON) AS params, TRY_CAST(inputs AS JSON) AS inputs) "
                    "FROM _registry"
                )
            empty = empty_select(RUNS).replace(
                "CAST(NULL AS VARCHAR) AS params", "CAST(NULL AS JSON) AS params"
            )
            return empty.replace("CAST(NULL AS VARCHAR) AS inputs", "CAST(NULL AS JSON) AS inputs")
        if view == "examples":
            return self._current_examples()
        if view in _NEEDS:
            return {"datasets": _DATASETS, "dataset_versions": _DATASET_VERSIONS}[view]
        table = "examples" if view == "examples_all" else view
        if self.files(table):
            return f"SELECT * FROM {self._read(self.files(table))}"
        return empty_select(TABLES[table])

    def _read(self, files: list[str]) -> str:
        """read_parquet over `files`; by column name only when their schemas differ (a run that wrote
        extra columns): matching columns by name costs about a sixth of a large scan."""
        schemas: dict[str, list[tuple]] = {}
        for row in self.con.execute(f"SELECT * FROM parquet_schema({_file_list(files)})").fetchall():
            schemas.setdefault(row[0], []).append(row[1:])
        union = ", union_by_name=true" if len({tuple(rows) for rows in schemas.values()}) > 1 else ""
        return f"read_parquet({_file_list(files)}{union}, hive_partitioning=false)"

    def _example_files(self) -> None:
        """Table _example_files(file, run_id, dataset, version, n): the dataset versions in each examples
        file, from the Parquet footers' statistics (a file whose dataset or version varies is scanned)."""
        self.con.execute(
            "CREATE OR REPLACE TABLE _example_files (file VARCHAR, run_id VARCHAR, dataset VARCHAR, "
            "version VARCHAR, n BIGINT)"
        )
        files = self.files("examples")
        if not files:
            return
        meta = self.con.execute(
            f"""SELECT file_name, path_in_schema, min(stats_min_value), max(stats_max_value),
                       count(*) FILTER (WHERE stats_min_value IS NULL), sum(row_group_num_rows)
                FROM parquet_metadata({_file_list(files)}) WHERE path_in_schema IN ('dataset', 'version')
                GROUP BY ALL"""
        ).fetchall()
        found: dict[str, dict[str, tuple]] = {}
        for file, column, low, high, missing, rows in meta:
            found.setdefault(file, {})[column] = (low, high, missing, rows)
        entries = []
        for file in files:
            run_id = Path(file).parent.name[len("run_id=") :]
            stats = found.get(file, {})
            single = all(
                c in stats and stats[c][2] == 0 and stats[c][0] == stats[c][1] for c in ("dataset", "version")
            )
            if single:
                entries.append(
                    (file, run_id, stats["dataset"][0], stats["version"][0], int(stats["dataset"][3]))
                )
                continue
            scanned = self.con.execute(
                f"SELECT dataset, version, count(*) FROM read_parquet([{quote(file)}]) GROUP BY ALL"
            ).fetchall()
            entries += [(file, run_id, d, v, n) for d, v, n in scanned]
        self.con.executemany("INSERT INTO _example_files VALUES (?, ?, ?, ?, ?)", entries)

    def _current_examples(self) -> str:
        """The examples of each dataset's current version: only those runs' files are read."""
        current = set(self.con.execute("SELECT run_id, dataset FROM datasets").fetchall())
        rows = self.con.execute("SELECT file, run_id, dataset FROM _example_files ORDER BY file").fetchall()
        files = sorted({f for f, r, d in rows if (r, d) in current})
        if not files:
            return empty_select(TABLES["examples"])
        source = self._read(files)
        mixed = any((r, d) not in current for f, r, d in rows if f in set(files))
        if mixed:  # a file holding more than one dataset: keep the current one's rows only
            return (
                f"SELECT * FROM {source} e WHERE EXISTS "
                "(SELECT 1 FROM datasets c WHERE c.run_id = e.run_id AND c.dataset = e.dataset)"
            )
        return f"SELECT * FROM {source}"

    def define(self, names: Iterable[str]) -> None:
        """Create the named views (and the views they read); other names are ignored."""
        for name in names:
            view = name.lower()
            if view == "_example_files" and view not in self.defined:
                self._example_files()
                self.defined.add(view)
                continue
            if view in self.defined or view not in ALL_VIEWS:
                continue
            self.define(_NEEDS.get(view, ()))
            self.con.execute(f"CREATE OR REPLACE VIEW {view} AS {self._sql(view)}")
            self.defined.add(view)


def referenced(sql: str) -> list[str]:
    """The lake views a statement names (DuckDB's parser; parameters `?` / `$1` read as NULL), or all of
    them when it cannot tell."""
    for text in (sql, re.sub(r"\?|\$\d+", "NULL", sql)):
        try:
            return [name.rsplit(".", 1)[-1] for name in duckdb.get_table_names(text)]
        except (duckdb.Error, RuntimeError):
            continue
    return list(ALL_VIEWS)


def define_views(con: duckdb.DuckDBPyConnection, root: Path) -> dict[str, list[str]]:
    """Create all the lake's views on `con`; returns the files each table's view reads."""
    views = LakeViews(con, root)
    views.define(ALL_VIEWS)
    return {table: views.files(table) for table in TABLES}
