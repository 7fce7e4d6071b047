"""Ingest: files of examples (JSONL, JSON, Parquet, CSV, a `datasets` save_to_disk directory) into the
lake's `examples` table, with column mapping, chat format and stable ids.

How a file goes in (memory holds a block of the file, at most SPOOL_BYTES of records, and the ids):
1. The file is read in blocks (`storage.ingest_sources`). Each block is normalised in bulk
   (`storage.ingest_columnar`) or, when the bulk path declines, row by row (`storage.ingest_rows`, the
   definition of what is stored, which names the first bad line and field). Both give the same
   records; the bulk path leaves out `messages`, the prompt / response pair, until it is needed. The
   next block is read while this one is parsed, and normalised while the previous one is hashed.
2. Records are cut into chunks of VERSION_CHUNK_ROWS rows; the dataset version is the SHA-256 of the
   Arrow IPC stream of those chunks (for up to VERSION_CHUNK_ROWS rows, the same hash as before ingest
   streamed). The chunks wait for the lake write in memory up to SPOOL_BYTES, beyond that in a staging
   file (the lake's .staging, or the system's temp folder before the lake exists). Ids are checked for
   duplicates over the whole file; `dedupe=True` drops exact duplicates (same id, same record) and
   keeps the first.
3. Only then is the lake touched: a run whose id derives from the version writes the records as one
   Parquet partition (up to MAX_PARTS files written at once, each an equal range of rows). A bad file
   writes nothing to the lake.

Re-ingesting the current version is a no-op. Re-ingesting an earlier version makes it current again:
a registry row (kind ingest, method restore) points at the existing partition; nothing is copied.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.catalog import RESTORE, open_scratch_in_background, scratch_cursor
from storage.errors import UserError, shorten
from storage.ingest_columnar import contiguous, normalize_table, with_messages
from storage.ingest_rows import (
    DIFFICULTY_WORDS,
    EXAMPLE_COLUMNS,
    ColumnMap,
    Plan,
    content_id,
    normalize_block,
    normalize_row,
    records_table,
)
from storage.ingest_sources import FORMATS, Block, blocks, detect_format
from storage.lake import Lake, staging_tag
from storage.names import NAME, check_name
from storage.prefetch import prefetch

__all__ = [
    "DATASET_NAME",
    "DIFFICULTY_WORDS",
    "FORMATS",
    "ColumnMap",
    "IngestResult",
    "content_id",
    "dataset_version",
    "detect_format",
    "ingest",
    "ingest_records",
    "normalize",
    "read_rows",
    "records_table",
]

DATASET_NAME = NAME  # `DATASET_NAME.match(name)` is a full match (`\Z`: no trailing newline)
VERSION_CHUNK_ROWS = 65_536  # fixed for good: it defines dataset versions (ingest_sources.BLOCK_ROWS too)
# Dictionaries only where values repeat, statistics only on short columns: the text columns are
# unique per row, and trying both on them costs a third of the write.
PARQUET_OPTIONS = {
    "use_dictionary": ["run_id", "dataset", "version", "domain", "answer", "meta"],
    "write_statistics": ["run_id", "dataset", "version", "example_id", "row_index", "domain", "difficulty"],
}
MAX_PARTS = 4  # Parquet files written at once for one dataset version
SPOOL_BYTES = 512 * 2**20  # records held in memory before the rest goes to a staging file


@dataclass
class IngestResult:
    dataset: str
    version: str
    run_id: str
    rows: int
    unchanged: bool  # this version was already the current one: nothing written
    domains: dict[str, int]
    restored: bool = False  # an earlier version, made current again
    duplicates_dropped: int = 0


# ------------------------------------------------------------------------------- versions
class _Hasher:
    """A write-only file that only feeds a SHA-256 (what pyarrow's PythonFile needs)."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hasher.update(view)
        self.position += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Spool:
    """Chunks of records held for the lake write: in memory up to SPOOL_BYTES (as they come: without
    `messages` when those are the prompt / response pair), beyond that in a staging file (an Arrow IPC
    file of EXAMPLE_COLUMNS), so memory stays bounded for any file size."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tables: list[pa.Table] = []
        self.nbytes = 0
        self.path: Path | None = None
        self.writer: pa.ipc.RecordBatchFileWriter | None = None
        self.spilled = 0

    def add(self, chunk: pa.Table, complete: pa.Table) -> None:
        """Hold `chunk`; `complete` is the same records with `messages` (`with_messages(chunk)`, which the
        caller has built to hash them): a chunk that goes to the staging file is written with them."""
        if self.writer is None and self.nbytes + chunk.nbytes <= SPOOL_BYTES:
            self.tables.append(chunk)
            self.nbytes += chunk.nbytes
            return
        if self.writer is None:
            self.path = self.folder / f"ingest-{staging_tag()}.arrow"
            self.writer = pa.ipc.new_file(str(self.path), EXAMPLE_COLUMNS)
        self.writer.write_table(complete)
        self.spilled += 1

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __len__(self) -> int:
        return len(self.tables) + self.spilled

    def chunks(self, start: int = 0, stop: int | None = None, complete: bool = True) -> Iterator[pa.Table]:
        """Chunks `start`..`stop` in order (the first in memory, the rest from the staging file), with
        every EXAMPLE_COLUMNS column (`complete=False`: maybe without `messages`, see `with_messages`)."""
        stop = len(self) if stop is None else stop
        for chunk in self.tables[start:stop]:
            yield with_messages(chunk) if complete else chunk
        first = max(start - len(self.tables), 0)
        last = stop - len(self.tables)
        if self.path is not None and last > first:
            # Read, not memory-mapped: mapped pages would count as this process's memory until the end.
            with pa.OSFile(str(self.path)) as source:
                reader = pa.ipc.open_file(source)
                for i in range(first, last):
                    yield pa.Table.from_batches([reader.get_batch(i)])

    def batches(self) -> Iterator[pa.RecordBatch]:
        for chunk in self.chunks():
            yield from chunk.to_batches()

    def remove(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self.tables = []


class VersionWriter:
    """Records -> an Arrow IPC stream of VERSION_CHUNK_ROWS-row batches of EXAMPLE_COLUMNS whose SHA-256
    (12 hex digits, from `close()`) is the dataset version; each chunk also goes to `spool` when one is
    given. Tables of PAIRED_COLUMNS are hashed with their `messages` and spooled without them."""

    def __init__(self, spool: Spool | None = None):
        self.sink = _Hasher()
        self.writer = pa.ipc.new_stream(pa.PythonFile(self.sink, mode="w"), EXAMPLE_COLUMNS)
        self.spool = spool
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= VERSION_CHUNK_ROWS:
            self._emit(VERSION_CHUNK_ROWS)

    def _emit(self, rows: int) -> None:
        # One batch per chunk, whatever the blocks were: the bytes depend on the records only. Blocks of
        # whole chunks (JSONL, CSV, Parquet batches) pass without a copy.
        pending = self.pending
        if len({"messages" in table.column_names for table in pending}) > 1:  # both kinds of block (rare)
            pending = [with_messages(table) for table in pending]
        merged = pending[0] if len(pending) == 1 else pa.concat_tables(pending)
        chunk, rest = merged.slice(0, rows).combine_chunks(), merged.slice(rows)
        complete = with_messages(chunk)  # the pair lives only while it is hashed (and maybe spilled)
        self.writer.write_table(complete)
        if self.spool is not None:
            self.spool.add(chunk, complete)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        self.rows += rows

    def close(self) -> str:
        if self.pending_rows:
            self._emit(self.pending_rows)
        self.writer.close()
        if self.spool is not None:
            self.spool.finish()
        return self.sink.hasher.hexdigest()[:12]


def dataset_version(table: pa.Table) -> str:
    """A content hash of normalised examples (EXAMPLE_COLUMNS): the same as streaming ingest computes."""
    writer = VersionWriter()
    writer.write(table.select(EXAMPLE_COLUMNS.names).cast(EXAMPLE_COLUMNS))
    return writer.close()


# ------------------------------------------------------------------------------- staging
@dataclass
class _Staged:
    spool: Spool
    version: str
    rows: int
    domains: Counter = field(default_factory=Counter)
    dropped: int = 0

    def batches(self) -> Iterator[pa.RecordBatch]:
        return self.spool.batches()

    def remove(self) -> None:
        self.spool.remove()


def _staging_dir(lake: Lake) -> Path:
    """The lake's own staging folder when the lake exists (same disk as the data), else the system's
    temp folder: checking a file must not create a lake."""
    folder = lake.root / ".staging"
    return folder if folder.is_dir() else Path(tempfile.gettempdir())


class _Ids:
    """Every example id with its row and (when known) source line, for the duplicate check."""

    def __init__(self) -> None:
        self.ids: list[pa.Array] = []
        self.lines: list[np.ndarray] = []
        self.has_lines = True

    def add(self, ids: pa.Array, block: Block) -> None:
        self.ids.append(ids)
        if block.lines is None:
            self.has_lines = False
        else:
            self.lines.append(block.lines)

    def table(self) -> pa.Table:
        ids = pa.chunked_array(self.ids, pa.string())
        return pa.table({"id": ids, "row": pa.array(np.arange(len(ids), dtype=np.int64))})

    def where(self, rows: Sequence[int]) -> str:
        if self.has_lines:
            lines = np.concatenate(self.lines)
            return "lines " + " and ".join(str(int(lines[r])) for r in rows)
        return "rows " + " and ".join(str(r + 1) for r in rows)


def _duplicates(ids: _Ids) -> pa.Table:
    """Rows whose id an earlier row has: (id, row, first) sorted by row; empty when ids are unique."""
    id_rows = ids.table()
    # unique() is about twice as fast as count_distinct() on text ids.
    if not len(id_rows) or len(pc.unique(id_rows["id"])) == len(id_rows):
        return pa.table(
            {
                "id": pa.array([], pa.string()),
                "row": pa.array([], pa.int64()),
                "first": pa.array([], pa.int64()),
            }
        )
    con = scratch_cursor()
    try:
        return con.sql(
            """SELECT id, row, first FROM (SELECT id, row, min(row) OVER (PARTITION BY id) AS first FROM id_rows)
               WHERE row > first ORDER BY row"""
        ).to_arrow_table()
    finally:
        con.close()


def _normalised(
    source: Iterator[Block], dataset: str, columns: ColumnMap
) -> Iterator[tuple[pa.Table, Block]]:
    """Each block's records: in bulk when the columnar path takes it, else row by row."""
    plan = None
    for block in source:
        if plan is None:
            plan = Plan.from_first_row(block.first_keys(), dataset, columns, block.source)
        table = None
        if block.table is not None:
            table = normalize_table(block.table, block.first_row, plan, block.null_may_be_absent)
        if table is None:
            table, _ = normalize_block(block.rows(), block.first_row, block.where, plan)
        block.drop_source()
        yield table, block


def _stage(lake: Lake, tables: Iterator[tuple[pa.Table, Block]], source: str, dedupe: bool) -> _Staged:
    spool = Spool(_staging_dir(lake))
    writer = VersionWriter(spool)
    ids, domains = _Ids(), Counter()
    try:
        for table, block in prefetch(tables):
            writer.write(table)
            ids.add(contiguous(table["example_id"]), block)
            counts = pc.value_counts(pc.fill_null(contiguous(table["domain"]), "(none)"))
            for item in counts.to_pylist():
                domains[item["values"] or "(none)"] += item["counts"]
        staged = _Staged(spool, writer.close(), writer.rows, domains)
        repeats = _duplicates(ids)
        if len(repeats):
            if not dedupe:
                first = repeats.slice(0, 1).to_pylist()[0]
                raise UserError(
                    f"{source}: duplicate example id {shorten(first['id'])} in "
                    f"{ids.where([first['first'], first['row']])} (pass --dedupe to drop exact duplicates)"
                )
            staged = _drop_exact_duplicates(staged, repeats, ids, source)
    except BaseException:
        spool.remove()
        raise
    return staged


def _drop_exact_duplicates(staged: _Staged, repeats: pa.Table, ids: _Ids, source: str) -> _Staged:
    """Drop rows that repeat an earlier row exactly (all but row_index); a repeated id with different
    content is an error naming both rows."""
    wanted = np.union1d(repeats["row"].to_numpy(), repeats["first"].to_numpy())
    records, start = {}, 0
    for chunk in staged.spool.chunks():  # one chunk in memory at a time
        local = wanted[(wanted >= start) & (wanted < start + chunk.num_rows)]
        picked = chunk.drop(["row_index"]).take(pa.array(local - start)).to_pylist()
        records.update(zip(local.tolist(), picked, strict=True))
        start += chunk.num_rows
    for row, first in zip(repeats["row"].to_pylist(), repeats["first"].to_pylist(), strict=True):
        a, b = records[first], records[row]
        if a != b:
            raise UserError(
                f"{source}: duplicate example id {shorten(a['example_id'])} in {ids.where([first, row])} "
                "with different content (--dedupe drops exact duplicates only)"
            )
    keep = np.ones(staged.rows, dtype=bool)
    keep[repeats["row"].to_numpy()] = False
    spool = Spool(staged.spool.folder)
    writer = VersionWriter(spool)
    domains, start = Counter(), 0
    try:
        for batch in staged.batches():
            kept = pa.Table.from_batches([batch]).filter(pa.array(keep[start : start + batch.num_rows]))
            start += batch.num_rows
            writer.write(kept)
            for value in kept["domain"].to_pylist():
                domains[value or "(none)"] += 1
        version = writer.close()
    except BaseException:
        spool.remove()
        raise
    staged.remove()
    return _Staged(spool, version, writer.rows, domains, dropped=len(repeats))


# ------------------------------------------------------------------------------- the lake
def _commit(lake: Lake, staged: _Staged, dataset: str, columns: ColumnMap) -> IngestResult:
    """Write the staged records as a dataset version, or make an earlier identical version current."""
    params = {"dataset": dataset, "columns": asdict(columns)}
    version = staged.version

    def with_version(start: int, stop: int) -> Iterator[pa.Table]:
        """Rows `start`..`stop` with the version column, a chunk (or the part of one in range) at a time."""
        first = start // VERSION_CHUNK_ROWS
        last = -(-stop // VERSION_CHUNK_ROWS)
        for index, chunk in enumerate(staged.spool.chunks(first, last, complete=False), start=first):
            offset = index * VERSION_CHUNK_ROWS
            lo, hi = max(start, offset), min(stop, offset + chunk.num_rows)
            piece = with_messages(chunk.slice(lo - offset, hi - lo))
            yield piece.add_column(1, "version", pa.repeat(pa.scalar(version), piece.num_rows))

    # Parquet encoding is the longest step of the write: up to one partition file per core, each a
    # contiguous range of rows, the same number in each (files are read in name order, so rows keep
    # theirs; chunk-sized ranges would leave a core idle behind a short last chunk).
    n = len(staged.spool)
    files = max(1, min(os.cpu_count() or 1, n, MAX_PARTS))
    bounds = [round(i * staged.rows / files) for i in range(files + 1)]
    with lake.run("ingest", "examples", params=params, inputs={"version": version}) as run:
        if not run.complete:
            groups = [with_version(a, b) for a, b in itertools.pairwise(bounds)]
            run.write_parallel("examples", groups, **PARQUET_OPTIONS)
        already = run.complete
    restored = False
    if already:
        current = lake.query("SELECT run_id, set_by FROM datasets WHERE dataset = ?", [dataset])
        if current.empty or current["run_id"].iloc[0] != run.run_id:
            previous = None if current.empty else str(current["set_by"].iloc[0])
            inputs = {"version": version, "run_id": run.run_id, "previous": previous}
            with lake.run("ingest", RESTORE, params=params, inputs=inputs):
                pass
            restored = True
    return IngestResult(
        dataset,
        version,
        run.run_id,
        staged.rows,
        already and not restored,
        dict(staged.domains),
        restored,
        staged.dropped,
    )


def ingest(
    lake: Lake,
    path: str | Path,
    dataset: str,
    columns: ColumnMap | None = None,
    fmt: str | None = None,
    split: str | None = None,
    dedupe: bool = False,
    columnar: bool = True,
) -> IngestResult:
    """Ingest one file as a version of `dataset` (see the module docstring). `columnar=False` uses the
    row-by-row normaliser only (the reference; tests compare the two)."""
    check_name(dataset, "--dataset")
    columns = columns or ColumnMap()
    path = Path(path)
    source = blocks(path, fmt, split, fast=columnar)
    open_scratch_in_background()  # for the catalog written at the end, while the file is read
    staged = _stage(lake, _normalised(source, dataset, columns), str(path), dedupe)
    try:
        if not staged.rows:
            raise UserError(f"{path}: the file holds no examples")
        return _commit(lake, staged, dataset, columns)
    finally:
        staged.remove()


def ingest_records(
    lake: Lake, records: list[dict], dataset: str, columns: ColumnMap, source: str
) -> IngestResult:
    """Write already-normalised records as a dataset version (no-op when the version is current)."""
    if not records:
        raise UserError(f"{source}: no examples")
    staged = _stage(lake, iter([(records_table(records), Block(0, source))]), source, dedupe=False)
    try:
        return _commit(lake, staged, dataset, columns)
    finally:
        staged.remove()


# ------------------------------------------------------------------------------- compatibility
def read_rows(path: Path, fmt: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """Every row of a source file as a dict (whole file in memory: for small files and tests)."""
    rows = [row for block in blocks(Path(path), fmt, split, fast=False) for row in block.rows()]
    if not rows:
        raise UserError(f"{path}: the file holds no examples")
    return rows


def normalize(rows: list[dict[str, Any]], dataset: str, columns: ColumnMap, source: str) -> list[dict]:
    """Source rows to `examples` records (without version / run_id). Raises UserError naming the row."""
    if not rows:
        return []
    first = rows[0]
    plan = Plan.from_first_row(list(first) if isinstance(first, dict) else [], dataset, columns, source)
    records, seen = [], {}
    for index, row in enumerate(rows):
        record = normalize_row(row, index, f"{source}: row {index + 1}", plan)
        example_id = record["example_id"]
        if example_id in seen:
            raise UserError(
                f"{source}: duplicate example id {shorten(example_id)} in rows {seen[example_id] + 1} and {index + 1}"
            )
        seen[example_id] = index
        records.append(record)
    return records
