"""`assay dart-replay ...`: a replay file of constructed DART candidates with known correctness, for
`assay dart --generator replay` (demos without a capable model). `assay dart` itself is the generated
command of the `dart` stage (flows/commands/stages.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands import ForceOption, LakeOption, checked_out
from storage import Lake, UserError


def _lake(root: Path | None) -> Lake:
    if root is not None:
        return Lake(root)
    from flows.cli import get_lake  # the global --lake option, when given before the command

    return get_lake()


def register(app: typer.Typer) -> None:
    @app.command("dart-replay")
    def dart_replay_command(
        dataset: Annotated[
            str, typer.Option("--dataset", "-d", help="dataset whose examples get candidates")
        ],
        out: Annotated[Path, typer.Option("--out", help="JSONL file to write")],
        per_query: Annotated[int, typer.Option(help="candidates per query")] = 16,
        seed: Annotated[int, typer.Option(help="seed of the correct / wrong draws")] = 0,
        lake: LakeOption = None,
        force: ForceOption = False,
    ) -> None:
        """Write constructed candidates of known correctness (labelled so) for `assay dart --generator replay`."""
        from curation.dart.generators import dump_responses
        from curation.dart.replay import demo_replay_records

        if per_query < 1:
            raise UserError(f"--per-query {per_query}: must be at least 1")
        out = checked_out(out, kind="file", force=force, lake_root=_lake(lake).root)
        examples = _lake(lake).examples(dataset)
        rows = demo_replay_records(examples, per_query=per_query, seed=seed)
        if not rows:
            raise UserError(
                f"dataset {dataset!r}: no example has an answer (math) or test and entry_point (code)"
            )
        dump_responses(rows, out)
        typer.echo(f"wrote {len(rows)} candidates for {len({r['query_id'] for r in rows})} queries to {out}")
