"""The unlearn job: the `unlearn` stage as a flow (removes a forget set from a fine-tuned causal LM, writes
the unlearned model folder and an `unlearn` run with its before / after metrics)."""

from __future__ import annotations

from pathlib import Path

from flows.runtime import flow
from flows.stages import run_stage
from flows.tasks import publish_summary
from storage import Lake


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
    """Unlearn `forget_ids` (or the examples matching the SQL predicate `forget_where`) of `train_dataset`
    from the model in `model_dir`; the unlearned model goes to `out_dir`. `settings`: more parameters of the
    unlearn stage (lr, epochs, ...)."""
    lake = Lake(lake_root)
    out = str(Path(out_dir).expanduser().absolute())
    params = {
        "model": str(Path(model_dir).expanduser().absolute()),
        "out": out,
        "forget_ids": forget_ids,
        "forget_where": forget_where,
        "scores": scores_run_id,
        "method": method,
        "force": force,
        **(settings or {}),
    }
    run_id = run_stage(str(lake.root), "unlearn", params, [train_dataset], {}, device, None, 0, True)
    publish_summary(
        f"unlearn-{train_dataset}",
        f"Unlearning ({method}) from {model_dir}",
        lake,
        [run_id],
        {"unlearned model": out},
    )
    return {"run_id": run_id, "model": out}
