"""`assay export RUN --format jsonl|parquet|hf --out PATH`: a curation run as a fine-tuning dataset
(curation/exporter.py writes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands import LakeOption


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        run: Annotated[
            str, typer.Argument(help="run id of a curation run that wrote weights (e.g. stage mix)")
        ],
        out: Annotated[Path, typer.Option("--out", help="folder to create")],
        fmt: Annotated[
            str, typer.Option("--format", help="jsonl | parquet | hf (datasets save_to_disk)")
        ] = "jsonl",
        materialise: Annotated[
            bool,
            typer.Option(
                "--materialise", help="repeat each example by its copies (else one row with a weight)"
            ),
        ] = False,
        chat: Annotated[bool, typer.Option("--chat/--prompt-response", help="record style")] = True,
        force: Annotated[bool, typer.Option("--force", help="replace an existing non-empty --out")] = False,
        seed: Annotated[int, typer.Option("--seed", help="shuffle seed of materialised rows")] = 0,
        lake: LakeOption = None,
    ) -> None:
        """Export a curated run as fine-tuning records with a weight column, schedule and dataset card."""
        from curation.exporter import export_run
        from flows.cli import get_lake  # the app's global --lake, when this command's own is not given

        result = export_run(
            get_lake(lake),
            run,
            out,
            fmt=fmt,
            style="chat" if chat else "prompt_response",
            materialise=materialise,
            force=force,
            seed=seed,
        )
        typer.echo(f"exported {result.rows} rows of run {run} to {result.path}")
        typer.echo(result.summary.to_string())
