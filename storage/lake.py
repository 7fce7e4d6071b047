"""The lake: Parquet tables partitioned by run, a run registry, and DuckDB views over both.

Layout under the root:
  runs/<run_id>.parquet                  one registry row per run, replaced atomically
  <table>/run_id=<run_id>/part-N.parquet   written by a run in one piece (redone on resume)
  <table>/run_id=<run_id>/shard-N.parquet  written as computed (kept on resume)
  catalog.duckdb                         views for users (absolute paths), rebuilt atomically
  .staging/, .locks/                     temporary files and per-run locks

Every file is written under .staging and renamed into place, so a reader never sees half a file,
and views show rows of complete runs only, so a reader never sees half a run. Temporary names carry
the writer's host and pid (`HOST-PID-*`): the next run to open removes those of writers that no
longer run (a SIGKILL leaves them behind).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage import catalog
from storage.errors import UserError
from storage.schemas import RUNS, TABLES
from storage.version import code_version


def default_root() -> Path:
    return Path(os.environ.get("ASSAY_LAKE") or "lake")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def run_id_for(kind: str, method: str, params: dict, inputs: dict, model: str | None) -> str:
    """A run's id is derived from what it computes, so rerunning a command finds (and resumes) it."""
    key = canonical_json({"kind": kind, "method": method, "params": params, "inputs": inputs, "model": model})
    return f"{kind}-{method}-{hashlib.sha256(key.encode()).hexdigest()[:12]}".replace("_", "-")


def to_table(name: str, frame: pd.DataFrame | pa.Table, run_id: str) -> pa.Table:
    """Cast a frame to the table's schema; extra columns are kept after the schema's."""
    schema = TABLES[name]
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    if "run_id" in table.column_names:
        table = table.drop(["run_id"])
    table = table.append_column("run_id", pa.repeat(pa.scalar(run_id, pa.string()), table.num_rows))
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"table {name}: missing columns {missing}")
    extra = [c for c in table.column_names if c not in schema.names]
    columns = [table.column(f.name).cast(f.type) for f in schema] + [table.column(c) for c in extra]
    fields = list(schema) + [table.schema.field(c) for c in extra]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


class Lake:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.root = self.root.expanduser().absolute()

    # ---------------------------------------------------------------- paths
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def run_dir(self, table: str, run_id: str) -> Path:
        return self.root / table / f"run_id={run_id}"

    def _registry_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.parquet"

    @property
    def exists(self) -> bool:
        return (self.root / "runs").is_dir()

    # ---------------------------------------------------------------- atomic files
    def _staging(self) -> Path:
        path = self.root / ".staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def staging_path(self, kind: str, suffix: str = "") -> Path:
        """A fresh temporary name under .staging, tagged with this host and pid (see clean_staging)."""
        return self._staging() / f"{kind}-{staging_tag()}{suffix}"

    def clean_staging(self) -> int:
        """Remove what killed writers left in .staging (their process is gone); returns how many."""
        folder = self.root / ".staging"
        if not folder.is_dir():
            return 0
        removed = 0
        for entry in list(os.scandir(folder)):
            if not _abandoned(entry):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
            removed += 1
        return removed

    def write_file_atomic(self, table: pa.Table, dest: Path) -> None:
        tmp = self.staging_path("part", ".parquet")
        pq.write_table(table, tmp)
        self._move_into_place(tmp, dest)

    def _move_into_place(self, tmp: Path, dest: Path) -> None:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    def write_batches_atomic(
        self, batches: Iterable[pa.RecordBatch | pa.Table], schema: pa.Schema, dest: Path, **options: Any
    ) -> int:
        """Stream record batches into one Parquet file (a row group per batch), renamed into place
        when whole. Memory holds one batch at a time. Returns the number of rows."""
        tmp = self.staging_path("part", ".parquet")
        rows = 0
        try:
            with pq.ParquetWriter(tmp, schema, **options) as writer:
                for batch in batches:
                    if isinstance(batch, pa.Table):
                        writer.write_table(batch)
                    else:
                        writer.write_batch(batch)
                    rows += batch.num_rows
            self._move_into_place(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return rows

    # ---------------------------------------------------------------- registry
    def run_record(self, run_id: str) -> dict | None:
        path = self._registry_path(run_id)
        if not path.exists():
            return None
        return pq.read_table(path).to_pylist()[0]

    def _write_record(self, record: dict) -> None:
        self.write_file_atomic(
            pa.Table.from_pylist([record], schema=RUNS), self._registry_path(record["run_id"])
        )

    def runs(self) -> list[dict]:
        folder = self.root / "runs"
        if not folder.is_dir():
            return []
        records = [pq.read_table(p).to_pylist()[0] for p in sorted(folder.glob("*.parquet"))]
        return sorted(records, key=lambda r: r["started_at"])

    @contextmanager
    def _run_lock(self, run_id: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{run_id}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"run {run_id} is being written by another process right now") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def run(
        self,
        kind: str,
        method: str,
        params: dict | None = None,
        inputs: dict | None = None,
        model: str | None = None,
    ) -> Iterator[Run]:
        """Open (or resume) the run that computes `method` on `inputs` with `params`.

        Yields a Run; `run.complete` is True when an identical run already finished (do nothing).
        A clean exit marks the run complete and refreshes the catalog; an exception marks it failed.
        """
        params, inputs = params or {}, inputs or {}
        run_id = run_id_for(kind, method, params, inputs, model)
        self.clean_staging()
        self.refresh_catalog_if_stale()
        with self._run_lock(run_id):
            previous = self.run_record(run_id)
            handle = Run(self, run_id, complete=bool(previous and previous["status"] == "complete"))
            if handle.complete:
                yield handle
                return
            handle.resumed = previous is not None
            handle._discard_unsharded()
            record = {
                "run_id": run_id,
                "kind": kind,
                "method": method,
                "params": canonical_json(params),
                "inputs": canonical_json(inputs),
                "model": model,
                "status": "running",
                "error": None,
                "started_at": previous["started_at"] if previous else datetime.now(UTC),
                "finished_at": None,
                "version": code_version(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
            }
            self._write_record(record)
            try:
                yield handle
            except BaseException as exc:
                message = f"{type(exc).__name__}: {exc}"[:2000]
                self._write_record(
                    {**record, "status": "failed", "error": message, "finished_at": datetime.now(UTC)}
                )
                raise
            # The registry row turns complete last: everything the run wrote is already in place.
            self._write_record({**record, "status": "complete", "finished_at": datetime.now(UTC)})
            self.refresh_catalog()

    # ---------------------------------------------------------------- reading
    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the lake's views (complete runs only)."""
        con = duckdb.connect(":memory:")
        catalog.define_views(con, self.root)
        return con

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Trusted SQL (assay's own, user values as parameters) over the views it names."""
        con = duckdb.connect(":memory:")
        try:
            views = catalog.LakeViews(con, self.root)
            views.define(catalog.referenced(sql))
            try:
                return con.execute(sql, params or []).df()
            except duckdb.CatalogException:
                views.define(catalog.ALL_VIEWS)  # a name the parser's list missed
                return con.execute(sql, params or []).df()
        finally:
            con.close()

    def table(self, name: str, where: str | None = None, params: list | None = None) -> pd.DataFrame:
        if name not in TABLES and name not in catalog.EXTRA_VIEWS:
            raise UserError(f"unknown table {name!r}; tables: {', '.join(sorted(TABLES))}")
        return self.query(f"SELECT * FROM {name}" + (f" WHERE {where}" if where else ""), params)

    def datasets(self) -> pd.DataFrame:
        return self.query("SELECT * FROM datasets ORDER BY dataset")

    def examples(self, dataset: str) -> pd.DataFrame:
        """The latest version of one dataset; an unknown name is the user's error."""
        frame = self.query("SELECT * FROM examples WHERE dataset = ? ORDER BY row_index", [dataset])
        if frame.empty:
            known = self.datasets()["dataset"].tolist()
            raise UserError(
                f"unknown dataset {dataset!r}; the lake at {self.root} has: {', '.join(known) or 'none'}"
            )
        return frame

    def dataset_version(self, dataset: str) -> str:
        rows = self.query("SELECT version FROM datasets WHERE dataset = ?", [dataset])
        if rows.empty:
            self.examples(dataset)  # raises the UserError naming the known datasets
        return str(rows["version"].iloc[0])

    def require_run(self, run_id: str, kind: str | None = None) -> dict:
        record = self.run_record(run_id)
        if record is None or record["status"] != "complete":
            state = "not found" if record is None else record["status"]
            raise UserError(f"run {run_id!r} is {state} in the lake at {self.root}")
        if kind and record["kind"] != kind:
            raise UserError(f"run {run_id!r} is a {record['kind']} run, not {kind}")
        return record

    # ---------------------------------------------------------------- catalog
    def _registry_mtime(self) -> int | None:
        try:
            return os.stat(self.root / "runs").st_mtime_ns
        except FileNotFoundError:
            return None

    def catalog_is_stale(self) -> bool:
        """Whether catalog.duckdb predates the last change to the registry (a run that was killed
        between turning complete and refreshing the catalog leaves it so). Two stat calls."""
        registry = self._registry_mtime()
        if registry is None:
            return False
        try:
            return os.stat(self.root / "catalog.duckdb").st_mtime_ns < registry
        except FileNotFoundError:
            return True

    def refresh_catalog_if_stale(self) -> bool:
        """Rebuild catalog.duckdb when it is stale; readers call this too, so a read-only lake is not an
        error (the catalog then stays as it is). Returns whether it was rebuilt."""
        if not self.catalog_is_stale():
            return False
        try:
            self.refresh_catalog()
        except OSError:
            return False
        return True

    def refresh_catalog(self) -> Path:
        """Rebuild catalog.duckdb beside the data; readers keep the old file until the rename.

        The file's mtime is set to the registry's as it was read, so any later registry change makes
        it stale (`catalog_is_stale`)."""
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / "catalog.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            registry = self._registry_mtime()
            catalog.compact_registry(self.root, self.staging_path("registry", ".parquet"))
            tmp = self.staging_path("catalog", ".duckdb")
            catalog.write_catalog(tmp, self.root)
            wal = tmp.with_name(tmp.name + ".wal")
            if wal.exists():
                wal.unlink()
            if registry is not None:
                os.utime(tmp, ns=(registry, registry))
            dest = self.root / "catalog.duckdb"
            os.replace(tmp, dest)
            return dest


class Run:
    """A run being written: atomic partitions of lake tables, shards for resumable work."""

    def __init__(self, lake: Lake, run_id: str, complete: bool):
        self.lake, self.run_id, self.complete = lake, run_id, complete
        self.resumed = False
        self._parts: dict[str, int] = {}

    def _discard_unsharded(self) -> None:
        # Whole-piece partitions of an interrupted attempt are redone; shards are kept for resume.
        for table in TABLES:
            folder = self.lake.run_dir(table, self.run_id)
            for part in folder.glob("part-*.parquet") if folder.is_dir() else []:
                part.unlink()

    def write(self, table: str, frame: pd.DataFrame | pa.Table, shard: int | None = None) -> Path:
        if self.complete:
            raise RuntimeError(f"run {self.run_id} is complete; it cannot be written again")
        if table not in TABLES:
            raise KeyError(f"unknown lake table {table!r}")
        data = to_table(table, frame, self.run_id)
        folder = self.lake.run_dir(table, self.run_id)
        if shard is None:
            index = self._parts.get(table, 0)
            self._parts[table] = index + 1
            dest = folder / f"part-{index:05d}.parquet"
        else:
            dest = folder / f"shard-{shard:06d}.parquet"
        self.lake.write_file_atomic(data, dest)
        return dest

    def write_batches(self, table: str, batches: Iterable[pa.Table | pa.RecordBatch], **options: Any) -> Path:
        """Like `write` without a shard, for data larger than memory: the batches are streamed into one
        Parquet partition (a row group each), which appears whole or not at all. `options` go to
        pyarrow's ParquetWriter."""
        if self.complete:
            raise RuntimeError(f"run {self.run_id} is complete; it cannot be written again")
        if table not in TABLES:
            raise KeyError(f"unknown lake table {table!r}")
        index = self._parts.get(table, 0)
        self._parts[table] = index + 1
        return self._write_part(table, batches, index, options)

    def write_parallel(
        self, table: str, groups: Sequence[Iterable[pa.Table | pa.RecordBatch]], **options: Any
    ) -> list[Path]:
        """`write_batches` of each group at once, one partition file per group on its own thread
        (Parquet encoding releases the GIL); the files are numbered in the groups' order."""
        if len(groups) <= 1:
            return [self.write_batches(table, groups[0] if groups else [], **options)]
        if self.complete:
            raise RuntimeError(f"run {self.run_id} is complete; it cannot be written again")
        if table not in TABLES:
            raise KeyError(f"unknown lake table {table!r}")
        from concurrent.futures import ThreadPoolExecutor

        start = self._parts.get(table, 0)
        self._parts[table] = start + len(groups)
        with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="assay-parquet") as pool:
            futures = [
                pool.submit(self._write_part, table, batches, start + i, options)
                for i, batches in enumerate(groups)
            ]
            return [f.result() for f in futures]

    def _write_part(self, table: str, batches: Iterable, index: int, options: dict) -> Path:
        dest = self.lake.run_dir(table, self.run_id) / f"part-{index:05d}.parquet"
        converted = (to_table(table, batch, self.run_id) for batch in batches)
        first = next(converted, None)
        if first is None:
            first = to_table(table, pa.Table.from_pylist([], schema=TABLES[table]), self.run_id)
        self.lake.write_batches_atomic(itertools.chain([first], converted), first.schema, dest, **options)
        return dest

    def has_shard(self, table: str, shard: int) -> bool:
        return (self.lake.run_dir(table, self.run_id) / f"shard-{shard:06d}.parquet").exists()

    def read(self, table: str) -> pd.DataFrame:
        """What this run has written so far to one table (for resuming stages)."""
        folder = self.lake.run_dir(table, self.run_id)
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if not files:
            return to_table(table, pa.Table.from_pylist([], schema=TABLES[table]), self.run_id).to_pandas()
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default").to_pandas()


STALE_UNTAGGED_S = 3600.0


def staging_tag() -> str:
    """HOST-PID-RANDOM: who wrote a temporary file, so a later writer can tell if it was abandoned."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


_TAGGED = re.compile(r"[a-z]+-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{12}(\..*)?")


def _abandoned(entry: os.DirEntry) -> bool:
    """A .staging entry whose writer no longer runs: same host, pid gone. Names without a tag (older
    versions of assay) count as abandoned after an hour; other hosts' entries are never touched."""
    tagged = _TAGGED.fullmatch(entry.name)
    if tagged is not None:
        if tagged["host"] != socket.gethostname():
            return False
        try:
            os.kill(int(tagged["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_UNTAGGED_S
    except FileNotFoundError:
        return False


def remove_run(lake: Lake, run_id: str) -> None:
    """Delete a run's registry row, partitions and what it keeps in the lake's work area
    (`.work/KIND/RUN_ID`, e.g. an attribution run's fitted factors); registry first, so no view shows half
    of it."""
    registry = lake._registry_path(run_id)
    if registry.exists():
        registry.unlink()
    for table in TABLES:
        shutil.rmtree(lake.run_dir(table, run_id), ignore_errors=True)
    for kept in (lake.root / ".work").glob(f"*/{run_id}"):
        shutil.rmtree(kept, ignore_errors=True)
    lake.refresh_catalog()
