"""`assay unlearn`: remove a forget set's influence from a fine-tuned causal LM (DMM or a baseline),
write the unlearned model as a Hugging Face directory, and record forget / retain losses in the lake."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands import LakeOption
from storage import Lake, UserError


def register(app: typer.Typer) -> None:
    @app.command("unlearn")
    def unlearn_command(
        ctx: typer.Context,
        model: Annotated[
            Path, typer.Option("--model", help="Hugging Face directory of the fine-tuned model")
        ],
        train: Annotated[str, typer.Option("--train", help="the dataset the model was fine-tuned on")],
        out: Annotated[Path, typer.Option("--out", help="folder to write the unlearned model to")],
        forget: Annotated[
            Path | None,
            typer.Option("--forget", help="file of example ids to forget (one per line, JSON list or JSONL)"),
        ] = None,
        forget_where: Annotated[
            str | None,
            typer.Option(
                "--forget-where", help="SQL predicate over the examples view, e.g. \"domain = 'code'\""
            ),
        ] = None,
        scores: Annotated[
            str | None,
            typer.Option(
                "--scores", help="run id of an attribute run on this model and dataset (needed by dmm)"
            ),
        ] = None,
        method: Annotated[str, typer.Option("--method", help="dmm | oracle | ga | gd | ga+gd")] = "dmm",
        lr: Annotated[float, typer.Option(help="learning rate (Adam)")] = 1e-4,
        epochs: Annotated[int, typer.Option(help="passes over the fine-tuning set")] = 4,
        batch_size: Annotated[int, typer.Option(help="examples per step")] = 512,
        lr_decay: Annotated[float, typer.Option(help="learning rate factor after each epoch")] = 0.95,
        l2_to_init: Annotated[
            float, typer.Option(help="weight of the L2 pull toward the original weights")
        ] = 0.0,
        forget_repeats: Annotated[int, typer.Option(help="copies of each forget example (dmm, oracle)")] = 5,
        retain_multiple: Annotated[int, typer.Option(help="retain sample size as a multiple of |F|")] = 20,
        scale: Annotated[
            str,
            typer.Option(
                help="scores -> leave-one-out units: 'auto' (fitted on retrains when the model records its recipe, "
                "else analytic), 'analytic' (1/n for influence, 1 for TRAK) or a number"
            ),
        ] = "auto",
        calibration_retrains: Annotated[int, typer.Option(help="retrains that fit the 'auto' scale")] = 3,
        calibration_fraction: Annotated[
            float, typer.Option(help="share of the training set each calibration retrain drops")
        ] = 0.1,
        optimizer: Annotated[str, typer.Option(help="adam | sgd")] = "adam",
        ascent_weight: Annotated[float, typer.Option(help="ga+gd: weight of the forget batch's loss")] = 1.0,
        anchor_targets: Annotated[
            bool,
            typer.Option(
                "--anchor-targets/--no-anchor-targets",
                help="add the scores run's targets to the fine-tuning set",
            ),
        ] = True,
        max_length: Annotated[
            int | None, typer.Option(help="token limit (default: the scores run's, else 512)")
        ] = None,
        retrain: Annotated[
            bool,
            typer.Option(
                "--retrain/--no-retrain", help="also retrain without the forget set, for comparison"
            ),
        ] = True,
        seed: Annotated[int, typer.Option(help="retain sample and batch order")] = 0,
        device: Annotated[
            str | None, typer.Option(help="cpu, cuda, ... (default: cuda when present)")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="replace an existing non-empty --out")] = False,
        lake: LakeOption = None,
    ) -> None:
        """Unlearn a forget set from a fine-tuned model (Datamodel Matching by default)."""
        from attribution.unlearn_stage import UnlearnSettings, read_forget_file, run_unlearning

        if (forget is None) == (forget_where is None):
            raise UserError("give exactly one of --forget FILE and --forget-where PREDICATE")
        forget_ids = read_forget_file(forget) if forget is not None else None
        try:
            scale_value: float | str = scale if scale in ("auto", "analytic") else float(scale)
        except ValueError:
            raise UserError(f"--scale {scale!r}: a number, 'auto' or 'analytic'") from None
        if optimizer not in ("adam", "sgd"):
            raise UserError(f"--optimizer {optimizer!r}: adam or sgd")
        settings = UnlearnSettings(
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            lr_decay=lr_decay,
            l2_to_init=l2_to_init,
            forget_repeats=forget_repeats,
            retain_multiple=retain_multiple,
            scale=scale_value,
            calibration_retrains=calibration_retrains,
            calibration_fraction=calibration_fraction,
            optimizer=optimizer,
            ascent_weight=ascent_weight,
            anchor_targets=anchor_targets,
            max_length=max_length,
            seed=seed,
            retrain=retrain,
        )
        # the app-wide --lake (given before the command name) lives on the parent context
        handle = Lake(lake or (ctx.parent.params.get("lake") if ctx.parent else None))
        run_id = run_unlearning(
            handle,
            model,
            train,
            out,
            forget_ids=forget_ids,
            forget_where=forget_where,
            scores_run_id=scores,
            method=method,
            settings=settings,
            device=device,
            force=force,
        )
        metrics = handle.table("metrics", "run_id = ?", [run_id])
        typer.echo(f"unlearned model written to {out.expanduser().absolute()} (run {run_id})")
        for row in metrics.itertuples():
            typer.echo(f"  {row.name}{'.' + row.key if row.key else ''}: {row.value:.6g}")
