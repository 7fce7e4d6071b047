"""The unlearn job: remove a forget set from a fine-tuned causal LM (`attribution.unlearn_stage`), writing
the unlearned model folder and an `unlearn` run with its before / after metrics."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.runtime import step
from flows.tasks import RETRY, publish_summary
from storage import Lake, UserError


@step(name="unlearn", task_run_name="unlearn-{method}", **RETRY)
def unlearn_step(
    lake_root: str,
    model_dir: str,
    train_dataset: str,
    out_dir: str,
    forget_ids: list[str] | None,
    forget_where: str | None,
    scores_run_id: str | None,
    method: str,
    settings: dict,
    device: str | None,
    force: bool,
) -> str:
    from attribution.unlearn_stage import UnlearnSettings, run_unlearning

    try:
        chosen = UnlearnSettings(**settings)
    except TypeError as exc:
        raise UserError(f"unlearn settings: {exc}") from None
    return run_unlearning(
        Lake(lake_root),
        model_dir,
        train_dataset,
        out_dir,
        forget_ids=forget_ids,
        forget_where=forget_where,
        scores_run_id=scores_run_id,
        method=method,
        settings=chosen,
        device=device,
        force=force,
    )


@flow(name="unlearn", log_prints=False)
def unlearn_flow(
    model_dir: str,
    train_dataset: str,
    out_dir: str,
    lake_root: str | None = None,
    forget_ids: list[str] | None = None,
    forget_where: str | None = None,
    scores_run_id: str | None = None,
    method: str = "dmm",
    settings: dict | None = None,
    device: str | None = None,
    force: bool = False,
) -> dict:
    """Unlearn `forget_ids` (or the examples matching the SQL predicate `forget_where`) of
    `train_dataset` from the model in `model_dir`; the unlearned model goes to `out_dir`.
    `settings`: fields of attribution.unlearn_stage.UnlearnSettings (lr, epochs, ...)."""
    lake = Lake(lake_root)
    out = str(Path(out_dir).expanduser().absolute())
    run_id = unlearn_step(
        str(lake.root),
        str(Path(model_dir).expanduser().absolute()),
        train_dataset,
        out,
        forget_ids,
        forget_where,
        scores_run_id,
        method,
        dict(settings or {}),
        device,
        force,
    )
    publish_summary(
        f"unlearn-{train_dataset}",
        f"Unlearning ({method}) from {model_dir}",
        lake,
        [run_id],
        {"unlearned model": out},
    )
    return {"run_id": run_id, "model": out}
