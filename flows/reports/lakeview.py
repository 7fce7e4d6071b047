"""What reports read: the lake's catalog views (complete runs only), through one DuckDB connection.

Reports never import a stage's internals: whatever stage wrote a table, the report reads the
table. Tables that a stage registers when it is imported (e.g. `mixture_schedule`) are registered
first by importing the curation stages, so their views exist.
"""

from __future__ import annotations

import json
from typing import Any, Self

import pandas as pd

from storage import Lake, UserError

EXAMPLE_COLUMNS = "dataset, version, example_id, domain, difficulty, prompt, response"


class LakeView:
    """Read-only queries over one lake, sharing a connection (each `Lake.query` would rebuild the views)."""

    def __init__(self, lake: Lake):
        from storage.schemas import TABLES

        self.lake = lake
        self.tables = list(TABLES)
        self._con = lake.connect()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def q(self, sql: str, params: list | None = None) -> pd.DataFrame:
        return self._con.execute(sql, params or []).df()

    # ------------------------------------------------------------------------------------- runs
    def run(self, run_id: str) -> dict:
        """The run's registry row; an unknown id is the user's error."""
        rows = self.q("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if rows.empty:
            known = self.q("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5")["run_id"].tolist()
            hint = f"; recent runs: {', '.join(known)}" if known else "; it has no runs yet"
            raise UserError(f"run {run_id!r} is not in the lake at {self.lake.root}{hint} (see `assay runs`)")
        record = rows.iloc[0].to_dict()
        for key in ("params", "inputs"):
            try:
                record[key] = json.loads(record.get(key) or "{}")
            except json.JSONDecodeError:
                record[key] = {"raw": record.get(key)}
        return record

    def runs(self, status: str | None = "complete") -> pd.DataFrame:
        where = "WHERE status = ?" if status else ""
        return self.q(f"SELECT * FROM runs {where} ORDER BY started_at, run_id", [status] if status else [])

    def counts(self, run_id: str) -> dict[str, int]:
        """Rows the run wrote to each table (complete runs; zero-row tables left out)."""
        union = " UNION ALL ".join(
            f"SELECT '{t}' AS name, count(*) AS n FROM {t} WHERE run_id = $1"
            for t in self.tables
            if t != "examples"
        )
        union += " UNION ALL SELECT 'examples' AS name, count(*) AS n FROM examples_all WHERE run_id = $1"
        frame = self.q(union, [run_id])
        return {str(r.name): int(r.n) for r in frame.itertuples(index=False) if r.n}

    def rows(
        self, table: str, run_id: str, columns: str = "*", where: str = "", params: list | None = None
    ) -> pd.DataFrame:
        if table not in self.tables:
            return pd.DataFrame()
        view = "examples_all" if table == "examples" else table
        extra = f" AND ({where})" if where else ""
        return self.q(f"SELECT {columns} FROM {view} WHERE run_id = ?{extra}", [run_id, *(params or [])])

    def metrics(self, run_id: str) -> pd.DataFrame:
        return self.rows("metrics", run_id, "name, key, value").sort_values(["name", "key"], kind="stable")

    # ------------------------------------------------------------------------------------- examples
    def dataset_examples(self, versions: dict[str, str]) -> pd.DataFrame:
        """Examples of the given dataset versions (a version that is gone falls back to the latest)."""
        frames = []
        for dataset, version in versions.items():
            frame = self.q(
                f"SELECT {EXAMPLE_COLUMNS} FROM examples_all WHERE dataset = ? AND version = ? "
                "ORDER BY row_index",
                [dataset, str(version)],
            )
            if frame.empty:
                frame = self.q(
                    f"SELECT {EXAMPLE_COLUMNS} FROM examples WHERE dataset = ? ORDER BY row_index", [dataset]
                )
            frames.append(frame)
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=EXAMPLE_COLUMNS.split(", "))
        )

    def examples_by_id(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Examples for (dataset, example_id) rows: latest version of each dataset, else any version."""
        if pairs.empty:
            return pd.DataFrame(columns=EXAMPLE_COLUMNS.split(", "))
        keys = pairs[["dataset", "example_id"]].drop_duplicates()
        self._con.register("_report_keys", keys)
        try:
            found = self.q(
                f"SELECT {', '.join('e.' + c for c in EXAMPLE_COLUMNS.split(', '))} FROM examples_all e "
                "JOIN _report_keys k ON e.dataset = k.dataset AND e.example_id = k.example_id "
                "LEFT JOIN datasets d ON d.dataset = e.dataset "
                "QUALIFY row_number() OVER (PARTITION BY e.dataset, e.example_id "
                "ORDER BY (e.version = d.version) DESC, e.run_id DESC) = 1"
            )
        finally:
            self._con.unregister("_report_keys")
        return found


def input_versions(inputs: Any) -> dict[str, str]:
    """Dataset name -> version from a run's `inputs` (stages record them under datasets / sources)."""
    versions: dict[str, str] = {}
    if not isinstance(inputs, dict):
        return versions
    for key in ("datasets", "sources", "dataset"):
        value = inputs.get(key)
        if isinstance(value, dict):
            versions.update({str(k): str(v) for k, v in value.items() if isinstance(v, str)})
    return versions


def input_runs(inputs: Any, known: set[str]) -> list[str]:
    """Run ids that appear anywhere in a run's `inputs` and exist in the lake (its lineage)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            candidate = value.removeprefix("run:")
            if candidate in known and candidate not in found:
                found.append(candidate)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(inputs)
    return found
