"""Ingest's readers: a source file as a stream of blocks, each both a columnar table (when the fast
path can read it faithfully) and, on demand, the Python rows the reference normaliser checks.

- JSONL: read in blocks of about BLOCK_BYTES cut at newlines (only "\\n" ends a line, so U+2028 or
  U+0085 inside a string is just text). pyarrow parses a block when every non-empty line is exactly
  one object `{...}` and no line is nested deeper than MAX_FAST_NESTING (pyarrow's recursive parser
  overflows the stack on deep nesting); otherwise, and whenever pyarrow refuses, the block's lines
  go through `json.loads`, which names the line.
- CSV: the csv module over the file (quoted newlines kept), header from the first record; an empty
  cell is a missing value.
- Parquet: record batches of the file; `datasets` save_to_disk folders: record batches of the split.
- JSON (one array): read whole (JSON has no streaming form); use JSONL for files larger than memory.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from storage.errors import UserError, shorten
from storage.prefetch import prefetch

FORMATS = ("jsonl", "json", "parquet", "csv", "hf")
BLOCK_BYTES = 16 << 20  # reads of the file
SCAN_BYTES = 1 << 20  # slices of a read scanned for newlines and brackets at a time
BLOCK_ROWS = 65_536  # rows per block (the dataset version's chunk size)
MAX_BLOCK_BYTES = 256 << 20  # a block of very long rows is cut sooner
MAX_BLOCK_LINES = 4 * BLOCK_ROWS  # and one of many blank lines (each line's span takes memory)
MAX_FAST_NESTING = 256
MAX_PARSE_BLOCK = 2**31 - 1  # pyarrow.json's block_size is an int32
BOM = b"\xef\xbb\xbf"


@dataclass
class Block:
    """Rows `first_row`.. of a source: `table` (columnar, or None) and `rows()` (Python dicts)."""

    first_row: int
    source: str
    table: pa.Table | None = None
    # JSONL: a column missing from a row and a JSON null both arrive as null in `table`, so nulls in
    # columns that end up in `meta` cannot be told apart; Parquet, CSV and HF rows have every column.
    null_may_be_absent: bool = False
    _rows: Any = None  # list of dicts, or a callable producing them
    lines: np.ndarray | None = None  # source line of each row (JSONL, CSV)
    keys: list[str] | None = None  # the first row's keys, when known without `rows()`

    def first_keys(self) -> list[str]:
        """The keys of the block's first row (what a Plan is made from)."""
        if self.keys is not None:
            return self.keys
        if self.table is not None and not self.null_may_be_absent:
            return self.table.column_names
        first = self.rows()[0]
        return list(first) if isinstance(first, dict) else []

    def drop_source(self) -> None:
        """Let go of the source rows (the file's bytes, the parsed table) once the block is normalised:
        only `lines` and `where` are used after that, and the memory is reused for the next blocks."""
        self.table = None
        self._rows = None

    def rows(self) -> list[dict]:
        if callable(self._rows):
            self._rows = self._rows()
        return self._rows

    def where(self, i: int) -> str:
        if self.lines is not None:
            return f"{self.source}: line {int(self.lines[i])}"
        return f"{self.source}: row {self.first_row + i + 1}"


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        ):
            return "hf"
        raise UserError(f"{path}: a directory, but not a Hugging Face dataset saved with save_to_disk")
    suffix = "".join(path.suffixes[-1:]).lower()
    by_suffix = {
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "json",
        ".parquet": "parquet",
        ".pq": "parquet",
        ".csv": "csv",
    }
    if suffix not in by_suffix:
        raise UserError(f"{path}: unknown file type {suffix or '(none)'}; use --format {'|'.join(FORMATS)}")
    return by_suffix[suffix]


def _open(path: Path):
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise UserError(f"{path}: a directory, not a file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def _utf8(data: bytes, path: Path, first_line: int, offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data[: exc.start].count(b"\n")
        raise UserError(f"{path}: line {line}: not valid UTF-8 (byte {offset + exc.start})") from None


# ------------------------------------------------------------------------------- JSONL
def _raw_blocks(path: Path) -> Iterator[tuple[bytes, int]]:
    """(bytes of whole lines, byte offset of the first) blocks of a file, without a leading BOM."""
    with _open(path) as fh:
        carry, offset, first = b"", 0, True
        while True:
            try:
                chunk = fh.read(BLOCK_BYTES)
            except OSError as exc:
                raise UserError(f"{path}: cannot read file ({exc.strerror or exc})") from None
            data = carry + chunk
            if first and data.startswith(BOM):
                data, offset = data[len(BOM) :], len(BOM)
            first = False
            if chunk:
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                block, carry = data[: cut + 1], data[cut + 1 :]
            else:
                block, carry = data, b""
            if block:
                yield block, offset
                offset += len(block)
            if not chunk:
                return


def _line_spans(data: np.ndarray, newlines: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (without "\\r\\n") and newline position of every line of a block (`data`, its bytes;
    `newlines`, where its "\\n" are; a last line without one ends at the end of the block)."""
    if not len(data) or data[-1] != 10:
        newlines = np.append(newlines, len(data))
    starts = np.concatenate([[0], newlines[:-1] + 1]).astype(np.int64)
    ends = newlines.astype(np.int64)
    has_cr = (ends > starts) & (data[np.maximum(ends - 1, 0)] == 13) if len(data) else ends > starts
    return starts, ends - has_cr, newlines


def _valid_utf8(data: bytes) -> bool:
    """Whether `data` is UTF-8, checked by Arrow's validator without copying the bytes."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    raw = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        raw.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _jsonl_fast(block: memoryview, lines: JsonlLines) -> pa.Table | None:
    """pyarrow's parse of a block, or None when it might differ from json.loads line by line."""
    import pyarrow.json as pajson

    data = np.frombuffer(block, np.uint8)
    starts, ends, newlines = lines.spans
    filled = ends > starts
    if not filled.any():
        return None
    first, last = data[starts[filled]], data[ends[filled] - 1]
    if not ((first == ord("{")).all() and (last == ord("}")).all()):
        return None  # leading / trailing whitespace, a non-object line, a BOM: the reference decides
    openers = lines.openers
    if (
        len(openers) > MAX_FAST_NESTING
        and np.bincount(np.searchsorted(newlines, openers)).max() > MAX_FAST_NESTING
    ):
        return None
    longest = int((ends - starts).max())
    # One parse block for the whole block: one chunk per column, which the records keep as they are
    # (1 MB blocks parse on both cores, but every column was then copied into one chunk: more fresh
    # memory than the parse saved; the other core reads, normalises and hashes meanwhile). pyarrow's
    # block size is a 32-bit number: a block beyond it (a line of nearly 2 GB) parses line-sized blocks,
    # and a line beyond it goes to the reference.
    block_size = max(len(block), longest) + 2
    if block_size > MAX_PARSE_BLOCK:
        block_size = longest + 2
    if block_size > MAX_PARSE_BLOCK or not _valid_utf8(block):
        return None  # pyarrow does not check every string; the reference names the line
    try:
        table = pajson.read_json(
            pa.BufferReader(block), read_options=pajson.ReadOptions(use_threads=True, block_size=block_size)
        )
    except (pa.ArrowException, UnicodeDecodeError, ValueError, OverflowError):
        return None
    # One object per non-empty line: `{...}{...}` on one line would give pyarrow two rows.
    return table if table.num_rows == int(filled.sum()) else None


def _first_keys(block: memoryview, starts: np.ndarray, ends: np.ndarray) -> list[str] | None:
    """The keys of a block's first object (json.loads of its first non-empty line), or None."""
    first = int(np.flatnonzero(ends > starts)[0])
    try:
        row = json.loads(bytes(block[starts[first] : ends[first]]))
    except (ValueError, RecursionError):
        return None
    return list(row) if isinstance(row, dict) else None


def _jsonl_rows(path: Path, block: memoryview, first_line: int, offset: int) -> tuple[list[dict], np.ndarray]:
    rows, lines = [], []
    position = 0
    for number, raw in enumerate(bytes(block).split(b"\n"), start=first_line):
        text = _utf8(raw, path, number, offset + position)
        position += len(raw) + 1
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise UserError(f"{path}: line {number}: malformed JSON ({_json_reason(exc)})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        lines.append(number)
    return rows, np.array(lines, dtype=np.int64)


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return shorten(str(exc), 80)[1:-1]  # e.g. an integer of more than 4300 digits


Spans = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class JsonlLines:
    """A block's lines: `spans` (start, end without "\\r\\n", newline position of every line) and
    where its "[" and "{" are (the nesting check), all relative to the block."""

    spans: Spans
    openers: np.ndarray


class _JsonlReader:
    """A JSONL file as blocks of whole lines holding BLOCK_ROWS non-empty lines each (the last fewer;
    fewer also once a block reaches MAX_BLOCK_BYTES or MAX_BLOCK_LINES lines, blank ones included), so
    records come in the version's chunks and memory stays bounded for any file.

    Each byte is read once into an Arrow buffer and scanned once (for "\\n", "[" and "{"); a block is a
    view of that buffer, not a copy. Only the unfinished tail moves to a fresh buffer before the next
    read, because the blocks handed out still point into the old one."""

    def __init__(self, fh: Any, path: Path):
        self.fh, self.path = fh, path
        self.buffer = pa.allocate_buffer(2 * BLOCK_BYTES)
        self.start = self.filled = 0  # the bytes not yet handed out: buffer[start:filled]
        self.offset = 0  # the file offset of buffer[start]
        self.newlines = np.empty(0, np.int64)  # positions in buffer, in [start, filled)
        self.openers = np.empty(0, np.int64)
        self.handed_out = False  # a block points into buffer: it must not be written again
        self.block_bytes = BLOCK_BYTES  # the last block's size: the next buffer's guess
        self.eof = False
        self.first_read = True
        self.scratch_flags = np.empty(SCAN_BYTES, bool)
        self.scratch_bits = np.empty(SCAN_BYTES, np.uint8)

    def blocks(self) -> Iterator[tuple[memoryview, int, JsonlLines]]:
        while not self.eof:
            self._read()
            while (cut := self._cut()) is not None:
                yield self._take(cut)
        if self.filled > self.start:
            yield self._take(self.filled)

    def _read(self) -> None:
        if self.handed_out or self.buffer.size - self.filled < BLOCK_BYTES:
            # Doubling keeps a long block's copies linear; the last block's size sizes the next buffer.
            # Sizes are whole multiples of BLOCK_BYTES, so a freed buffer fits the next one: the
            # allocator then reuses its pages instead of faulting in fresh ones.
            rest = self.filled - self.start
            need = max(2 * BLOCK_BYTES, 2 * rest, rest + BLOCK_BYTES, self.block_bytes + BLOCK_BYTES)
            self._move(-(-need // BLOCK_BYTES) * BLOCK_BYTES)
        try:
            n = self.fh.readinto(memoryview(self.buffer)[self.filled : self.filled + BLOCK_BYTES])
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read file ({exc.strerror or exc})") from None
        if self.first_read and bytes(memoryview(self.buffer)[: min(n, len(BOM))]) == BOM:
            self.start = self.offset = len(BOM)  # a BOM opens the file only
        self.first_read = False
        newlines, openers = [self.newlines], [self.openers]
        for start in range(self.filled, self.filled + n, SCAN_BYTES):
            size = min(SCAN_BYTES, self.filled + n - start)
            region = np.frombuffer(self.buffer, np.uint8, size, start)
            # Small scratch arrays reused for every slice: fresh temporaries of a whole read would
            # fault in their pages each time (slow on a VM), and these stay in cache.
            flags, bits = self.scratch_flags[:size], self.scratch_bits[:size]
            np.equal(region, 10, out=flags)
            newlines.append(np.flatnonzero(flags) + start)
            # "[" is 0x5B and "{" 0x7B: the only bytes that become 0x7B with bit 5 set.
            np.equal(np.bitwise_or(region, 0x20, out=bits), 0x7B, out=flags)
            openers.append(np.flatnonzero(flags) + start)
        self.newlines, self.openers = np.concatenate(newlines), np.concatenate(openers)
        self.filled += n
        self.eof = n == 0

    def _move(self, size: int) -> None:
        """Carry the bytes not yet handed out over to a fresh buffer of `size` bytes."""
        fresh = pa.allocate_buffer(size)
        rest = self.filled - self.start
        memoryview(fresh)[:rest] = memoryview(self.buffer)[self.start : self.filled]
        self.newlines -= self.start
        self.openers -= self.start
        self.buffer, self.filled, self.start, self.handed_out = fresh, rest, 0, False

    def _cut(self) -> int | None:
        """Where the next block ends in the bytes read so far, or None when more must be read. Only the
        first MAX_BLOCK_LINES pending lines are looked at: no block holds more, and many cuts in one read
        (very short lines) must not rescan the whole read each time."""
        newlines = self.newlines[:MAX_BLOCK_LINES]
        if not len(newlines):
            return None
        starts = np.concatenate([[self.start], newlines[:-1] + 1])
        data = np.frombuffer(self.buffer, np.uint8, self.filled)
        has_cr = (newlines > starts) & (data[np.maximum(newlines - 1, 0)] == 13)
        filled = np.flatnonzero(newlines - has_cr > starts)
        if len(filled) >= BLOCK_ROWS:
            return int(newlines[filled[BLOCK_ROWS - 1]]) + 1
        if len(newlines) == MAX_BLOCK_LINES:  # blank lines count here: their spans cost memory too
            return int(newlines[-1]) + 1
        if self.filled - self.start >= MAX_BLOCK_BYTES:
            return int(newlines[-1]) + 1
        return None

    def _take(self, cut: int) -> tuple[memoryview, int, JsonlLines]:
        block = memoryview(self.buffer)[self.start : cut]
        lines_in, openers_in = np.searchsorted(self.newlines, cut), np.searchsorted(self.openers, cut)
        spans = _line_spans(np.frombuffer(block, np.uint8), self.newlines[:lines_in] - self.start)
        lines = JsonlLines(spans, self.openers[:openers_in] - self.start)
        self.newlines, self.openers = self.newlines[lines_in:], self.openers[openers_in:]
        offset, self.offset, self.start = self.offset, self.offset + len(block), cut
        self.handed_out, self.block_bytes = True, len(block)
        return block, offset, lines


def _row_blocks(path: Path) -> Iterator[tuple[memoryview, int, JsonlLines]]:
    """(bytes, file offset, lines) blocks of a JSONL file (see `_JsonlReader`)."""
    with _open(path) as fh:
        yield from _JsonlReader(fh, path).blocks()


def jsonl_blocks(path: Path, fast: bool = True) -> Iterator[Block]:
    first_row = 0
    next_line = 1
    # The next block is read and scanned while this one is parsed.
    for block, offset, lines in prefetch(_row_blocks(path)):
        starts, ends, _ = lines.spans
        first_line, next_line = next_line, next_line + len(starts) - (block[-1] != 10)
        table = _jsonl_fast(block, lines) if fast else None
        keys = _first_keys(block, starts, ends) if table is not None else None
        if keys is not None:
            filled = np.flatnonzero(ends > starts)
            lines = first_line + filled.astype(np.int64)

            def rows(block=block, first_line=first_line, offset=offset) -> list[dict]:
                return _jsonl_rows(path, block, first_line, offset)[0]

            item = Block(first_row, str(path), table, True, rows, lines, keys)
        else:
            parsed, lines = _jsonl_rows(path, block, first_line, offset)
            item = Block(first_row, str(path), None, True, parsed, lines)
        # Only the item holds the source now, so `drop_source` frees it while the next block is read.
        block = table = parsed = None
        if item.lines is not None and len(item.lines):
            yield item
            first_row += len(item.lines)


# ------------------------------------------------------------------------------- CSV
def _text_lines(path: Path) -> Iterator[str]:
    """The file's lines decoded as UTF-8, each with its "\\n" (only "\\n" ends a line)."""
    first_line = 1
    for block, offset in _raw_blocks(path):
        text = _utf8(block, path, first_line, offset)
        pieces = text.split("\n")
        first_line += len(pieces) - 1
        for piece in pieces[:-1]:
            yield piece + "\n"
        if pieces[-1]:
            yield pieces[-1]


def csv_blocks(path: Path) -> Iterator[Block]:
    csv.field_size_limit(1 << 30)
    reader = csv.reader(_text_lines(path))
    source = str(path)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if header is None:
        return
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise UserError(f"{path}: line 1: the header names column {shorten(duplicated[0])} twice")
    width, first_row = len(header), 0
    buffer: list[list[str]] = []
    lines: list[int] = []
    previous = reader.line_num
    while True:
        try:
            record = next(reader, None)
        except csv.Error as exc:
            raise UserError(f"{path}: line {previous + 1}: malformed CSV ({exc})") from None
        if record is not None:
            start, previous = previous + 1, reader.line_num
            if not record:  # an empty line: csv.DictReader skips these too
                continue
            if len(record) != width:
                raise UserError(
                    f"{path}: line {start}: wrong number of fields ({len(record)}, the header has {width})"
                )
            buffer.append(record)
            lines.append(start)
        if buffer and (record is None or len(buffer) >= BLOCK_ROWS):
            yield _csv_block(buffer, header, np.array(lines, dtype=np.int64), first_row, source)
            first_row += len(buffer)
            buffer, lines = [], []
        if record is None:
            return


def _csv_block(
    records: list[list[str]], header: list[str], lines: np.ndarray, first_row: int, source: str
) -> Block:
    # CSV has no nulls: an empty cell is a missing value.
    columns = {name: pa.array([r[j] or None for r in records], pa.string()) for j, name in enumerate(header)}
    table = pa.table(columns)

    def rows() -> list[dict]:
        return [{name: (r[j] or None) for j, name in enumerate(header)} for r in records]

    return Block(first_row, source, table, False, rows, lines)


# ------------------------------------------------------------------------------- Arrow sources
def _arrow_rows(table: pa.Table, first_row: int, source: str) -> list[dict]:
    """Python rows of an Arrow table; a value Python cannot hold (a timestamp or date out of range)
    is a UserError naming its row and column."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            columns[name] = column.to_pylist()
        except (ValueError, OverflowError, pa.ArrowException) as exc:
            for i in range(len(column)):
                try:
                    column[i].as_py()
                except (ValueError, OverflowError, pa.ArrowException):
                    raise UserError(
                        f"{source}: row {first_row + i + 1}: column {shorten(name)}: a value Python cannot "
                        f"represent ({shorten(str(exc), 80)[1:-1]})"
                    ) from None
            raise
    names = list(columns)
    return (
        [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        if names
        else []
    )


def _table_blocks(batches: Iterator[pa.RecordBatch | pa.Table], source: str) -> Iterator[Block]:
    first_row = 0
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if not table.num_rows:
            continue

        def rows(table=table, first_row=first_row) -> list[dict]:
            return _arrow_rows(table, first_row, source)

        yield Block(first_row, source, table, False, rows, None)
        first_row += table.num_rows


def parquet_blocks(path: Path) -> Iterator[Block]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
        batches = reader.iter_batches(batch_size=BLOCK_ROWS)
        yield from _guard_arrow(_table_blocks(batches, str(path)), path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({shorten(str(exc), 120)[1:-1]})") from None


def _guard_arrow(blocks: Iterator[Block], path: Path) -> Iterator[Block]:
    try:
        yield from blocks
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable file ({shorten(str(exc), 120)[1:-1]})") from None


def hf_blocks(path: Path, split: str | None) -> Iterator[Block]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable saved dataset ({shorten(str(exc), 120)[1:-1]})") from None
    if isinstance(data, datasets.DatasetDict):
        if split is None:
            if len(data) != 1:
                raise UserError(f"{path}: has splits {', '.join(data)}; choose one with --split")
            split = next(iter(data))
        if split not in data:
            raise UserError(f"--split {split}: {path} has splits {', '.join(data)}")
        data = data[split]
    yield from _guard_arrow(_table_blocks(iter(data.with_format("arrow").iter(BLOCK_ROWS)), str(path)), path)


def json_blocks(path: Path) -> Iterator[Block]:
    with _open(path) as fh:
        raw = fh.read()
    text = _utf8(raw.removeprefix(BOM), path, 1)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        where = f"line {exc.lineno}: " if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"{path}: {where}malformed JSON ({_json_reason(exc)})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{path}: expected a JSON array of objects")
    for start in range(0, len(data), BLOCK_ROWS):
        yield Block(start, str(path), None, True, data[start : start + BLOCK_ROWS], None)


_FORMAT_READERS = {"jsonl": jsonl_blocks, "csv": csv_blocks, "parquet": parquet_blocks, "json": json_blocks}


def blocks(
    path: Path, fmt: str | None = None, split: str | None = None, fast: bool = True
) -> Iterator[Block]:
    """The blocks of a source file (see the module docstring); `fast=False` never parses columnar
    (the reference path, for tests that compare the two)."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"--format {shorten(fmt)}: expected one of {', '.join(FORMATS)}")
    if fmt != "hf" and path.is_dir():
        raise UserError(f"{path}: a directory, not a {fmt} file")
    if fmt == "hf":
        source = hf_blocks(path, split)
    elif fmt == "jsonl":
        source = jsonl_blocks(path, fast=fast)
    else:
        source = _FORMAT_READERS[fmt](path)
    for block in source:
        if not fast:
            block.table = None
        yield block
