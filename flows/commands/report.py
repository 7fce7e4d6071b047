"""`assay report RUN_ID [--out FILE.html]`: one self-contained HTML page about one run of the lake.

The page needs no network and no scripts (charts are inline PNG images); the default file is
`$ASSAY_HOME/reports/<run_id>.html` (`./.assay/reports/` unless ASSAY_HOME moves it). `--out` follows
the output policy (storage/outputs.py: missing folders are created; an existing file is replaced only
with --force). An unknown run id, or an --out the policy refuses, exits with status 2 and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands import ForceOption, checked_out
from storage import Lake, UserError


def _lake(root: Path | None) -> Lake:
    if root is not None:
        return Lake(root)
    from flows.cli import get_lake  # the global --lake option, when given before the command

    return get_lake()


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_command(
        run_id: Annotated[str, typer.Argument(help="The run to report on (see `assay runs`).")],
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", "-o", help="HTML file to write (default: $ASSAY_HOME/reports/<run_id>.html)."
            ),
        ] = None,
        lake: Annotated[
            Path | None,
            typer.Option(
                "--lake", help="Lake directory (default: $ASSAY_LAKE or ./lake).", show_default=False
            ),
        ] = None,
        force: ForceOption = False,
    ) -> None:
        """Write an HTML report of one run: charts, tables and examples, readable offline in any browser."""
        from flows.reports import write_report

        target = _lake(lake)
        if out is not None:
            out = checked_out(out, kind="file", force=force, lake_root=target.root)
        if not target.exists:
            raise UserError(f"no lake at {target.root} (use --lake DIR or ASSAY_LAKE)")
        path = write_report(target, run_id, out)
        typer.echo(str(path))
