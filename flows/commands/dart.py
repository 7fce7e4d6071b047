"""`assay dart ...`: DART rejection sampling over lake datasets; `assay dart-replay ...`: a replay file
of constructed candidates with known correctness (for demos without a capable model).

Every option maps onto a parameter of the `dart` curation stage (curation/stages/dart.py), which
checks them all before anything is written: a bad option exits with status 2 and one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands import LakeOption
from storage import Lake, UserError


def _lake(root: Path | None) -> Lake:
    if root is not None:
        return Lake(root)
    from flows.cli import get_lake  # the global --lake option, when given before the command

    return get_lake()


def register(app: typer.Typer) -> None:
    @app.command("dart")
    def dart_command(
        dataset: Annotated[
            list[str], typer.Option("--dataset", "-d", help="dataset(s) whose examples are the queries")
        ],
        generator: Annotated[str, typer.Option(help="replay | transformers | vllm | openai")] = "replay",
        strategy: Annotated[str, typer.Option(help="vrt | uniform | prop2diff")] = "prop2diff",
        replay: Annotated[
            str | None,
            typer.Option(
                help="replay: a JSONL / Parquet file (query_id, response[, correct, truncated, trial]) or run:RUN_ID"
            ),
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(help="transformers / vllm: model directory; openai: the served model's name"),
        ] = None,
        endpoint: Annotated[
            str | None, typer.Option(help="openai: server URL, e.g. http://127.0.0.1:8000/v1")
        ] = None,
        api: Annotated[str, typer.Option(help="openai: chat | completions")] = "chat",
        n_per_query: Annotated[int, typer.Option(help="vrt: samples per query")] = 8,
        k_u: Annotated[int, typer.Option(help="uniform: correct responses wanted per query")] = 4,
        k_p: Annotated[int, typer.Option(help="prop2diff: correct responses for the hardest query")] = 8,
        n_max: Annotated[int, typer.Option(help="uniform / prop2diff: trial cap per query")] = 64,
        batch: Annotated[int, typer.Option(help="samples per query per round")] = 8,
        n_d: Annotated[int, typer.Option(help="prop2diff: samples that measure the fail rate")] = 8,
        difficulty: Annotated[
            str, typer.Option(help="prop2diff: fail_rate | labels (the examples' difficulty)")
        ] = "fail_rate",
        temperature: Annotated[float, typer.Option(help="sampling temperature (the paper: 1.6)")] = 1.0,
        top_p: Annotated[float, typer.Option(help="nucleus sampling (the paper: 0.95)")] = 0.95,
        max_new_tokens: Annotated[
            int, typer.Option(help="length limit; cut-off responses count as wrong")
        ] = 512,
        gen_batch_size: Annotated[int, typer.Option(help="transformers: sequences per generate call")] = 8,
        device: Annotated[str, typer.Option(help="transformers: cpu | cuda")] = "cpu",
        verify: Annotated[
            str, typer.Option(help="auto (recorded labels when present) | verify (always check) | recorded")
        ] = "auto",
        workers: Annotated[int, typer.Option(help="code sandboxes at a time")] = 2,
        domain: Annotated[
            list[str] | None, typer.Option("--domain", help="only these domains (repeatable)")
        ] = None,
        limit: Annotated[int | None, typer.Option(help="at most this many queries")] = None,
        seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
        output_dataset: Annotated[
            str | None, typer.Option(help="name of the curated dataset in the lake")
        ] = None,
        lake: LakeOption = None,
    ) -> None:
        """Sample responses per query, keep the verified ones (DART: VRT, Uniform or Prop2Diff)."""
        from curation.stages import StageContext
        from curation.stages.dart import dart

        params = {
            "strategy": strategy,
            "generator": generator,
            "replay": replay,
            "model": model,
            "endpoint": endpoint,
            "api": api,
            "n_per_query": n_per_query,
            "k_u": k_u,
            "k_p": k_p,
            "n_max": n_max,
            "batch": batch,
            "n_d": n_d,
            "difficulty": difficulty,
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "gen_batch_size": gen_batch_size,
            "device": device,
            "verify": verify,
            "workers": workers,
            "domains": list(domain) if domain else None,
            "limit": limit,
            "seed": seed,
            "output_dataset": output_dataset,
        }
        the_lake = _lake(lake)
        if not the_lake.exists:
            raise UserError(
                f"no lake at {the_lake.root}; ingest a dataset first (assay ingest FILE --dataset NAME)"
            )
        run_id = dart(StageContext(lake=the_lake, datasets=list(dataset)), params)
        kept = the_lake.query("SELECT count(*) AS n FROM weights WHERE run_id = ?", [run_id])["n"].iloc[0]
        typer.echo(f"dart run {run_id}: {int(kept)} responses kept")
        if kept:
            typer.echo(f"export with: assay export {run_id} --out FOLDER")

    @app.command("dart-replay")
    def dart_replay_command(
        dataset: Annotated[
            str, typer.Option("--dataset", "-d", help="dataset whose examples get candidates")
        ],
        out: Annotated[Path, typer.Option("--out", help="JSONL file to write")],
        per_query: Annotated[int, typer.Option(help="candidates per query")] = 16,
        seed: Annotated[int, typer.Option(help="seed of the correct / wrong draws")] = 0,
        lake: LakeOption = None,
    ) -> None:
        """Write constructed candidates of known correctness (labelled so) for `assay dart --generator replay`."""
        from curation.dart.generators import dump_responses
        from curation.dart.replay import demo_replay_records

        if per_query < 1:
            raise UserError(f"--per-query {per_query}: must be at least 1")
        if not out.parent.is_dir():
            raise UserError(f"--out {out}: the folder {out.parent} does not exist")
        examples = _lake(lake).examples(dataset)
        rows = demo_replay_records(examples, per_query=per_query, seed=seed)
        if not rows:
            raise UserError(
                f"dataset {dataset!r}: no example has an answer (math) or test and entry_point (code)"
            )
        dump_responses(rows, out)
        typer.echo(f"wrote {len(rows)} candidates for {len({r['query_id'] for r in rows})} queries to {out}")
