"""Query results as files or terminal text, in one style for every command that prints rows.

Formats: `table` (aligned text), `csv` (NULL is an empty field), `json` (JSON Lines: one object per
row; JSON columns such as `runs.params` are nested objects, not strings; NULL is null; NaN and
infinities, which JSON lacks, are strings), `parquet` (DuckDB's types). Every cell is rendered by
DuckDB itself (`Gate.render`), so huge integers, intervals and out-of-range dates print as DuckDB
prints them. With `--out FILE` and no `--format`, the file's suffix selects the format.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import UserError, shorten
from storage.gate import Gate, Rendered
from storage.outputs import staged_output

FORMATS = ("table", "csv", "json", "parquet")
SUFFIXES = {
    ".txt": "table",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
NULL = "NULL"


def output_format(fmt: str | None, out: Path | None) -> str:
    """The format to write: --format, else --out's suffix, else a table on the terminal. A --format that
    contradicts the suffix, or an unknown suffix without --format, is a UserError."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format {shorten(fmt)}: expected {', '.join(FORMATS)}")
    by_suffix = SUFFIXES.get(out.suffix.lower()) if out is not None else None
    if fmt is None:
        if out is None:
            return "table"
        if by_suffix is None:
            known = ", ".join(SUFFIXES)
            raise UserError(
                f"--out {shorten(str(out))[1:-1]}: unknown suffix; use one of {known} or give --format"
            )
        return by_suffix
    if by_suffix is not None and by_suffix != fmt:
        raise UserError(
            f"--format {fmt} but --out {shorten(out.name)[1:-1]} is a {by_suffix} name; give one or make them agree"
        )
    if fmt == "parquet" and out is None:
        raise UserError("--format parquet needs --out FILE")
    return fmt


def text_table(result: Rendered) -> str:
    """Aligned plain text (for files and pipes): a header, a rule, one line per row."""

    def clean(cell: str | None) -> str:
        return NULL if cell is None else cell.replace("\n", "\\n").replace("\r", "\\r").replace("\t", " ")

    cells = [[clean(c) for c in row] for row in result.rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(result.columns)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(result.columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def csv_text(result: Rendered) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([["" if c is None else c for c in row] for row in result.rows])
    return buffer.getvalue()


def json_lines(result: Rendered) -> str:
    return "".join(row[0] + "\n" for row in result.rows)


def render_text(gate: Gate, sql: str, fmt: str) -> tuple[str, int]:
    """The whole result of `sql` in a text format, and its number of rows."""
    if fmt == "json":
        result = gate.render(sql, as_json=True)
        return json_lines(result), len(result.rows)
    result = gate.render(sql)
    return (csv_text(result) if fmt == "csv" else text_table(result)), len(result.rows)


def write_result(gate: Gate, sql: str, fmt: str, out: Path) -> int:
    """Run `sql` and write its result to `out` (checked with prepare_output first) aside-then-rename;
    returns the number of rows."""
    if fmt == "parquet":
        table = gate.arrow(sql)
        try:
            with staged_output(out, kind="file", writer="assay sql") as tmp:
                pq.write_table(table, tmp)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise UserError(
                f"--out {out.name}: cannot write this result as Parquet ({shorten(str(exc), 100)[1:-1]})"
            ) from None
        return table.num_rows
    text, rows = render_text(gate, sql, fmt)
    with staged_output(out, kind="file", writer="assay sql") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return rows
