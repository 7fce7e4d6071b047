"""`assay export RUN --out PATH [--format jsonl|parquet|hf] [--style chat|chat_completion|prompt_completion|text]
[--materialise]`: a curation run as a fine-tuning dataset (curation/exporter.py writes it)."""

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
        out: Annotated[Path, typer.Option("--out", help="folder to create (missing parents are created)")],
        fmt: Annotated[
            str,
            typer.Option(
                "--format",
                help="jsonl | parquet | hf (a DatasetDict: load_from_disk and load_dataset read it)",
            ),
        ] = "jsonl",
        style: Annotated[
            str,
            typer.Option(
                "--style",
                help="chat (messages: TRL trains every turn) | chat_completion (prompt / completion turns: "
                "TRL applies the template, loss on the final response) | prompt_completion (plain text) | text",
            ),
        ] = "chat",
        materialise: Annotated[
            bool,
            typer.Option(
                "--materialise",
                help="one row per draw in training order (step, slot, phase), with per-phase files; "
                "else one row per example with copies",
            ),
        ] = False,
        force: Annotated[bool, typer.Option("--force", help="replace an existing non-empty --out")] = False,
        seed: Annotated[
            int, typer.Option("--seed", help="shuffle seed of a materialised run that has no schedule")
        ] = 0,
        language: Annotated[
            list[str] | None,
            typer.Option(
                "--language", help="language code(s) of the data for the card (repeatable: en, code)"
            ),
        ] = None,
        lake: LakeOption = None,
    ) -> None:
        """Export a curated run as fine-tuning records (copies, loss_weight), its schedule and a dataset card."""
        from curation.exporter import export_run
        from flows.cli import get_lake  # the app's global --lake, when this command's own is not given

        result = export_run(
            get_lake(lake),
            run,
            out,
            fmt=fmt,
            style=style,
            materialise=materialise,
            force=force,
            seed=seed,
            languages=language,
        )
        typer.echo(f"exported {result.rows} rows of run {run} to {result.path} ({result.order})")
        typer.echo(result.summary.to_string(float_format=lambda v: f"{v:.3g}"))
