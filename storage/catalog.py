"""DuckDB views over the lake's Parquet files: what `assay sql` and catalog.duckdb users query.

Views read absolute paths and show rows of complete runs only. `examples` shows the latest
version of each dataset; `examples_all` every version; `datasets` one row per dataset.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from storage.schemas import RUNS, TABLES

EXTRA_VIEWS = ("runs", "examples_all", "dataset_versions", "datasets")


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


def has_files(pattern_root: Path, pattern: str) -> bool:
    return pattern_root.is_dir() and next(pattern_root.glob(pattern), None) is not None


def define_views(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    root = Path(root).absolute()
    runs_dir = root / "runs"
    if has_files(runs_dir, "*.parquet"):
        runs_sql = f"SELECT * FROM read_parquet({quote(runs_dir / '*.parquet')}, union_by_name=true)"
    else:
        runs_sql = empty_select(RUNS)
    con.execute(f"CREATE OR REPLACE VIEW runs AS {runs_sql}")
    complete = "run_id IN (SELECT run_id FROM runs WHERE status = 'complete')"
    for name, schema in TABLES.items():
        folder = root / name
        view = "examples_all" if name == "examples" else name
        if has_files(folder, "run_id=*/*.parquet"):
            source = f"read_parquet({quote(folder / 'run_id=*' / '*.parquet')}, union_by_name=true)"
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {source} WHERE {complete}")
        else:
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {empty_select(schema)}")
    con.execute(
        """CREATE OR REPLACE VIEW dataset_versions AS
           SELECT e.dataset, e.version, e.run_id, count(*) AS n_examples,
                  any_value(r.finished_at) AS ingested_at, any_value(r.params) AS params
           FROM examples_all e JOIN runs r ON e.run_id = r.run_id GROUP BY e.dataset, e.version, e.run_id"""
    )
    con.execute(
        """CREATE OR REPLACE VIEW datasets AS SELECT * FROM dataset_versions
           QUALIFY row_number() OVER (PARTITION BY dataset ORDER BY ingested_at DESC) = 1"""
    )
    con.execute(
        "CREATE OR REPLACE VIEW examples AS SELECT * FROM examples_all "
        "WHERE run_id IN (SELECT run_id FROM datasets)"
    )
