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

import os
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


def quote(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _parquet_files(folder: Path) -> list[str]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [e.path for e in entries if e.name.endswith(".parquet") and not e.name.startswith(".")]


def registry_files(root: Path) -> list[str]:
    return sorted(_parquet_files(Path(root) / "runs"))


def complete_run_files(root: Path, complete: set[str]) -> dict[str, list[str]]:
    """Every table's Parquet files that belong to complete runs, sorted (one scandir per table and run)."""
    out: dict[str, list[str]] = {}
    for name in TABLES:
        files: list[str] = []
        try:
            entries = sorted(os.scandir(Path(root) / name), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            if entry.name.startswith("run_id=") and entry.name[len("run_id=") :] in complete:
                files += sorted(_parquet_files(Path(entry.path)))
        out[name] = files
    return out


def _file_list(files: list[str]) -> str:
    return "[" + ", ".join(quote(f) for f in files) + "]"


def define_views(con: duckdb.DuckDBPyConnection, root: Path) -> dict[str, list[str]]:
    """Create the lake's views on `con`; returns the files each table's view reads."""
    root = Path(root).absolute()
    registry = registry_files(root)
    if registry:
        con.execute(
            f"CREATE OR REPLACE TABLE _registry AS SELECT * FROM read_parquet({_file_list(registry)}, "
            "union_by_name=true)"
        )
        runs_sql = (
            "SELECT * REPLACE (TRY_CAST(params AS JSON) AS params, TRY_CAST(inputs AS JSON) AS inputs) "
            "FROM _registry"
        )
        complete = {
            r[0] for r in con.execute("SELECT run_id FROM _registry WHERE status = 'complete'").fetchall()
        }
    else:
        runs_sql = empty_select(RUNS).replace(
            "CAST(NULL AS VARCHAR) AS params", "CAST(NULL AS JSON) AS params"
        )
        runs_sql = runs_sql.replace("CAST(NULL AS VARCHAR) AS inputs", "CAST(NULL AS JSON) AS inputs")
        complete = set()
    con.execute(f"CREATE OR REPLACE VIEW runs AS {runs_sql}")
    files = complete_run_files(root, complete)
    for name, schema in TABLES.items():
        view = "examples_all" if name == "examples" else name
        if files[name]:
            source = f"read_parquet({_file_list(files[name])}, union_by_name=true, hive_partitioning=false)"
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {source}")
        else:
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {empty_select(schema)}")
    con.execute(
        """CREATE OR REPLACE VIEW dataset_versions AS
           SELECT e.dataset, e.version, e.run_id, count(*) AS n_examples,
                  any_value(r.finished_at) AS ingested_at, any_value(r.params) AS params
           FROM examples_all e JOIN runs r ON e.run_id = r.run_id GROUP BY e.dataset, e.version, e.run_id"""
    )
    # The current version of a dataset: the one ingested, or restored by re-ingesting it, last.
    con.execute(
        f"""CREATE OR REPLACE VIEW datasets AS
           WITH restored AS (
             SELECT json_extract_string(inputs, '$.run_id') AS data_run, max(finished_at) AS at,
                    arg_max(run_id, finished_at) AS restore_run FROM runs
             WHERE kind = 'ingest' AND method = '{RESTORE}' AND status = 'complete' GROUP BY ALL)
           SELECT v.*, greatest(v.ingested_at, coalesce(r.at, v.ingested_at)) AS current_since,
                  CASE WHEN r.at > v.ingested_at THEN r.restore_run ELSE v.run_id END AS set_by
           FROM dataset_versions v LEFT JOIN restored r ON v.run_id = r.data_run
           QUALIFY row_number() OVER (PARTITION BY v.dataset ORDER BY current_since DESC, v.run_id) = 1"""
    )
    con.execute(
        "CREATE OR REPLACE VIEW examples AS SELECT * FROM examples_all "
        "WHERE run_id IN (SELECT run_id FROM datasets)"
    )
    return files
