"""`assay attribute`: scores of a training dataset on a target dataset (example / segment / token level).

Calls the lake stage attribution.stage.run_attribution, which validates every option before opening a
run (a bad option exits with status 2 and one line) and resumes a killed run from its last shard.
"""

from __future__ import annotations

import os
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


def _method_params(
    method: str, damping: float | None, proj_dim: int | None, similarity: str | None, batch_size: int | None
) -> dict:
    params: dict = {}
    if damping is not None:
        if method in ("trak", "gradsim"):
            raise UserError("--damping applies to ekfac, kfac, diagonal and identity")
        params["damping"] = damping
    if proj_dim is not None:
        if method not in ("trak", "gradsim"):
            raise UserError("--proj-dim applies to trak and gradsim")
        params["proj_dim"] = proj_dim
    if similarity is not None:
        if method != "gradsim":
            raise UserError("--similarity applies to gradsim")
        params["similarity"] = similarity
    if batch_size is not None:
        params["train_batch_size" if method not in ("trak", "gradsim") else "batch_size"] = batch_size
    return params


def register(app: typer.Typer) -> None:
    @app.command("attribute")
    def attribute_command(
        model: Annotated[Path, typer.Option("--model", help="Hugging Face causal LM directory")],
        train: Annotated[str, typer.Option("--train", help="training dataset in the lake")],
        targets: Annotated[str, typer.Option("--targets", help="target dataset in the lake")],
        method: Annotated[
            str, typer.Option(help="ekfac | kfac | diagonal | identity | trak | gradsim")
        ] = "ekfac",
        level: Annotated[
            str, typer.Option(help="example | segment | token (segment/token: kronfluence methods)")
        ] = "example",
        device: Annotated[
            str | None, typer.Option(help="cpu | cuda | cuda:N (default: cuda when present)")
        ] = None,
        only_correct: Annotated[
            bool,
            typer.Option(
                "--only-correct", help="keep only targets the model answers correctly (greedy generation)"
            ),
        ] = False,
        segmenter: Annotated[
            str, typer.Option(help="lines | sentences | a regex separating steps")
        ] = "lines",
        token_targets: Annotated[
            str,
            typer.Option(
                help="segment/token rows per target group (groups: all, domain=...) or per target (each)"
            ),
        ] = "groups",
        group_by: Annotated[
            list[str] | None,
            typer.Option("--group-by", help="target columns forming groups (repeatable; default domain)"),
        ] = None,
        modules: Annotated[
            str, typer.Option(help="tracked layers: mlp (Infra's setting) | all | a regex over module names")
        ] = "mlp",
        damping: Annotated[
            float | None, typer.Option(help="influence damping (default 0.1 x mean eigenvalue)")
        ] = None,
        proj_dim: Annotated[
            int | None, typer.Option(help="trak / gradsim projection dimension (default 2048)")
        ] = None,
        similarity: Annotated[str | None, typer.Option(help="gradsim: cosine | dot")] = None,
        checkpoint: Annotated[
            list[Path] | None,
            typer.Option("--checkpoint", help="trak: more model directories to ensemble over (repeatable)"),
        ] = None,
        batch_size: Annotated[int | None, typer.Option(help="training examples per batch")] = None,
        shard_size: Annotated[
            int,
            typer.Option(
                help="training examples per written shard (each shard recomputes the target gradients)"
            ),
        ] = 256,
        max_length: Annotated[int, typer.Option(help="tokens per example (longer responses are cut)")] = 512,
        lake: LakeOption = None,
    ) -> None:
        """Attribute a target dataset's log-likelihood to training examples; scores go to the lake.

        Positive scores are helpful: upweighting the training example raises the targets' log-likelihood.
        """
        from attribution.stage import run_attribution

        if shard_size < 1 or max_length < 2:
            raise UserError("--shard-size must be >= 1 and --max-length >= 2")
        params = _method_params(method, damping, proj_dim, similarity, batch_size)
        the_lake = _lake(lake)
        if not the_lake.exists:
            raise UserError(
                f"no lake at {the_lake.root}; ingest a dataset first (assay ingest FILE --dataset NAME)"
            )
        progress = os.environ.get("ASSAY_QUIET") != "1"
        run_id = run_attribution(
            the_lake,
            model,
            train,
            targets,
            method,
            level,
            device=device,
            only_correct=only_correct,
            method_params=params,
            segmenter=segmenter,
            token_targets=token_targets,
            group_by=tuple(group_by or ["domain"]),
            modules=modules if modules in ("mlp", "all") else [modules],
            shard_size=shard_size,
            max_length=max_length,
            checkpoints=[str(c) for c in checkpoint] if checkpoint else None,
            progress=progress,
        )
        counts = the_lake.query(
            "SELECT (SELECT count(*) FROM scores WHERE run_id = ?) AS scores, "
            "(SELECT count(*) FROM segment_scores WHERE run_id = ?) AS segment_scores, "
            "(SELECT count(*) FROM token_scores WHERE run_id = ?) AS token_scores",
            [run_id] * 3,
        )
        row = counts.iloc[0]
        typer.echo(
            f"run {run_id}: {row.scores} scores, {row.segment_scores} segment scores, "
            f"{row.token_scores} token scores"
        )
        typer.echo(
            f'top helpful: assay sql "SELECT train_id, avg(score) AS influence FROM scores WHERE run_id = '
            f"'{run_id}' GROUP BY train_id ORDER BY influence DESC LIMIT 10\""
        )
