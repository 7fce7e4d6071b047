"""Stage `unlearn`: remove a forget set from a causal LM fine-tuned on the stage's dataset (Python:
`run_unlearning(lake, model_dir, train_dataset, out_dir, ...)`).

Unlearns a forget set F (example ids, or a SQL predicate over the `examples` view) from a model fine-tuned
on `train_dataset`, writes the unlearned model as a Hugging Face directory (built aside, renamed into
place), and registers an `unlearn` run whose inputs are the scores run, the dataset version and the
model fingerprint. Its `metrics` rows: forget / retain loss (mean response NLL) before and after, and of
a model retrained without F when the model records how it was built (`reference_model`'s
assay_reference.json); `labels` rows mark the forgotten examples (name 'forget').

Methods: dmm (Datamodel Matching, see attribution/unlearning/), oracle (Oracle Matching toward the
retrained model), ga (gradient ascent on F), gd (descent on the retain set), ga+gd (both).

DMM's datamodel comes from the scores run (`attribute` on this model and this dataset version). The
fine-tuning points F and the retain sample are *training* examples: when the run scored the training
set against itself their scores are read from it; otherwise they are computed here with the run's own
method and settings. The run's target examples (held-out points whose predicted outputs it holds) join
the fine-tuning set once each (`anchor_targets`, our addition to the recipe).

Metrics `seconds.unlearn` is the whole unlearning step (for DMM: scoring the fine-tuning points when
the run did not, the scale's calibration retrains, and the fine-tuning); `seconds.retrain` the comparison
model's training. Scoring the fine-tuning points here loads the scores run's EK-FAC / K-FAC factors when
the attribute stage kept them for this model (`factors_dir`; metric `factors_reused` 1, else 0 and a
fresh fit, which gives the same scores).

Every check happens before the run opens: bad input raises UserError and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from attribution.stages.unlearn_work import (
    METHODS,
    REFERENCE_FILE,
    Plan,
    reference_settings,
    unlearn,
    write_model_dir,
)
from attribution.unlearning.health import unlearning_problem
from storage import Lake, Run, UserError
from storage.fingerprint import model_reference
from storage.outputs import default_protected, prepare_output
from storage.params import (
    REQUIRED,
    RUN_ID,
    SEED,
    Choice,
    Flag,
    Items,
    OneOf,
    ParamError,
    Params,
    Text,
    integer,
    number,
    optional,
    param,
)
from storage.stage import RunSpec, Stage, StageContext

PATH = Text("a path", max_length=4096)


@dataclass
class UnlearnParams(Params):
    """Every knob. Optimiser defaults are the DMM authors' (Adam, lr 1e-4, 4 epochs, batch 512, x0.95 per
    epoch)."""

    model: str = param(REQUIRED, "Hugging Face directory of the fine-tuned model", PATH)
    out: str = param(REQUIRED, "folder to write the unlearned model to", PATH)
    forget: str | None = param(
        None, "file of example ids to forget (one per line, JSON list or JSONL)", optional(PATH)
    )
    forget_ids: list | None = param(
        None, "example ids to forget", optional(Items(Text("an example id"), 0, 10**7))
    )
    forget_where: str | None = param(
        None,
        "SQL predicate over the examples view, e.g. \"domain = 'code'\"",
        optional(Text("a SQL predicate")),
    )
    scores: str | None = param(
        None, "attribute run on this model and dataset (needed by dmm)", optional(RUN_ID)
    )
    method: str = param("dmm", "dmm | oracle | ga | gd | ga+gd", Choice(METHODS))
    lr: float = param(1e-4, "learning rate", number(0, 10, "right"))
    epochs: int = param(4, "passes over the fine-tuning set", integer(1, 100_000))
    batch_size: int = param(512, "examples per step", integer(1, 1_000_000))
    lr_decay: float = param(0.95, "learning rate factor after each epoch", number(0, 10, "right"))
    l2_to_init: float = param(0.0, "weight of the L2 pull toward the original weights", number(0, 1e12))
    optimizer: str = param("adam", "adam | sgd", Choice(("adam", "sgd")))
    forget_repeats: int = param(5, "copies of each forget example (dmm, oracle)", integer(1, 10_000))
    retain_multiple: int = param(20, "retain sample size as a multiple of |F|", integer(0, 100_000))
    scale: Any = param(
        "auto",
        "scores -> leave-one-out units: auto (fitted on retrains when the model records its recipe, else "
        "analytic), analytic (1/n for influence, 1 for TRAK) or a number",
        OneOf((Choice(("auto", "analytic")), number(0, 1e12))),
    )
    calibration_retrains: int = param(3, "retrains that fit the auto scale", integer(1, 1000))
    calibration_fraction: float = param(
        0.1, "share of the training set each calibration retrain drops", number(0, 1, "neither")
    )
    anchor_targets: bool = param(True, "add the scores run's targets to the fine-tuning set", Flag())
    ascent_weight: float = param(1.0, "ga+gd: weight of the forget batch's loss", number(0, 1e6))
    max_length: int | None = param(
        None, "token limit (default: the scores run's, else 512)", optional(integer(2, 10_000_000))
    )
    seed: int = param(0, "retain sample and batch order", SEED)
    retrain: bool = param(True, "also retrain without the forget set, for comparison", Flag())
    force: bool = param(False, "replace an existing non-empty --out", Flag())

    def validate(self) -> None:
        given = [n for n in ("forget", "forget_ids", "forget_where") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ParamError(
                "forget", "give the forget set one way: forget (a file), forget_ids or forget_where"
            )
        if self.method == "dmm" and not self.scores:
            raise ParamError(
                "scores", "method dmm needs scores: RUN_ID (an attribute run on this model and dataset)"
            )

    def optim(self) -> Any:
        from attribution.unlearning.loop import OptimConfig

        return OptimConfig(
            lr=self.lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr_decay=self.lr_decay,
            optimizer=self.optimizer,
            l2_to_init=self.l2_to_init,
            seed=self.seed,
        )


# ------------------------------------------------------------------------------------------ inputs
def read_forget_file(path: str | Path) -> list[str]:
    """Forget ids from a file: one id per line, a JSON list (of ids or objects with example_id / id), or
    JSONL objects with example_id / id."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--forget {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--forget {path}: cannot read ({exc})") from None
    stripped = text.strip()
    values: list[Any]
    if path.suffix == ".json" or stripped.startswith("["):
        try:
            values = json.loads(stripped or "[]")
        except json.JSONDecodeError as exc:
            raise UserError(f"--forget {path}: malformed JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(values, list):
            raise UserError(f"--forget {path}: expected a JSON list of example ids")
    elif path.suffix in (".jsonl", ".ndjson"):
        values = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    values.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"--forget {path}: line {number}: malformed JSON ({exc.msg})") from None
    else:
        values = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    ids = []
    for number, value in enumerate(values, start=1):
        if isinstance(value, dict):
            value = value.get("example_id", value.get("id"))
        if value is None or isinstance(value, (dict, list, bool)):
            raise UserError(f"--forget {path}: entry {number} holds no example id")
        ids.append(str(value))
    return list(dict.fromkeys(ids))


def resolve_forget(
    lake: Lake,
    train_dataset: str,
    train_ids: list[str],
    forget_ids: list[str] | None,
    forget_where: str | None,
) -> list[str]:
    """The forget ids, checked against the training set (UserError when empty, unknown or everything)."""
    from storage.catalog import quote
    from storage.gate import select_where

    if (forget_ids is None) == (forget_where is None):
        raise UserError(
            "give the forget set as ids (--forget FILE) or as a SQL predicate (--forget-where), one of them"
        )
    if forget_where is not None:
        table = select_where(
            lake.root,
            "examples",
            f"dataset = {quote(train_dataset)} AND ({forget_where})",
            columns="example_id",
        )
        forget_ids = [str(v) for v in table.column("example_id").to_pylist()]
        if not forget_ids:
            raise UserError(f"--forget-where {forget_where!r} matches no example of {train_dataset}")
    forget_ids = list(dict.fromkeys(str(i) for i in forget_ids or []))
    if not forget_ids:
        raise UserError("the forget set is empty")
    known = set(train_ids)
    unknown = [i for i in forget_ids if i not in known]
    if unknown:
        raise UserError(
            f"{len(unknown)} forget ids are not in {train_dataset}: {', '.join(unknown[:5])}"
            + (" ..." if len(unknown) > 5 else "")
        )
    if len(forget_ids) == len(known):
        raise UserError(f"the forget set is all of {train_dataset}: nothing would remain to retain")
    return forget_ids


def check_scores(lake: Lake, run_id: str, model_ref: str, train_dataset: str, train_version: str) -> dict:
    """The scores run's registry record, refused when it is for another model or dataset version."""
    record = lake.require_run(run_id, kind="attribute")
    fingerprint = model_ref.rsplit("@", 1)[-1]
    run_fp = str(record.get("model") or "").rsplit("@", 1)[-1]
    if run_fp != fingerprint:
        raise UserError(
            f"--scores {run_id} was computed for model {record.get('model')}, not this --model "
            f"(fingerprint {fingerprint})"
        )
    inputs = json.loads(record.get("inputs") or "{}")
    datasets = inputs.get("datasets", {}) if isinstance(inputs, dict) else {}
    if train_dataset not in datasets:
        raise UserError(
            f"--scores {run_id} scored datasets {', '.join(datasets) or 'none'}, not --train {train_dataset}"
        )
    if datasets[train_dataset] != train_version:
        raise UserError(
            f"--scores {run_id} was computed on {train_dataset} version {datasets[train_dataset]}, "
            f"but the lake's {train_dataset} is now version {train_version}"
        )
    if lake.query("SELECT count(*) AS n FROM scores WHERE run_id = ?", [run_id])["n"].iloc[0] == 0:
        raise UserError(f"--scores {run_id} wrote no example-level scores")
    return record


# ------------------------------------------------------------------------------------------ the outcome
class UnlearningNoOp(UserError):
    """An unlearning run that would change nothing worth keeping; the message says why and what to try."""


# Settings that do not change what is computed: recorded outside the run id.
NOT_IDENTITY = ("model", "forget", "forget_ids", "forget_where", "scores", "method", "force")


class Unlearn(Stage):
    """Unlearn a forget set from a fine-tuned model (Datamodel Matching by default); writes the model folder."""

    name = "unlearn"
    kind = "unlearn"
    Params = UnlearnParams
    reads = ("examples", "scores")
    writes = ("metrics", "labels")
    dataset_flags = ("--train", "--dataset", "-d")
    dataset_help = "the dataset the model was fine-tuned on"

    def plan(self, ctx: StageContext) -> RunSpec:
        p, lake = self.params, ctx.lake
        train_name, train_version = ctx.one_dataset(self.name)
        model_dir = Path(p.model).expanduser().absolute()
        if not (model_dir / "config.json").is_file():
            raise UserError(f"--model {model_dir}: not a Hugging Face model directory (no config.json)")
        # the output policy (storage/outputs.py), with the model itself protected like the lake
        out = prepare_output(
            p.out, kind="folder", force=p.force, protected=[lake.root, model_dir, *default_protected()]
        )
        train = lake.examples(train_name)
        forget_ids = read_forget_file(p.forget) if p.forget is not None else p.forget_ids
        forget = resolve_forget(
            lake, train_name, train["example_id"].astype(str).tolist(), forget_ids, p.forget_where
        )
        model_ref = model_reference(model_dir)
        record = (
            check_scores(lake, p.scores, model_ref, train_name, train_version) if p.method == "dmm" else None
        )
        reference = reference_settings(model_dir)
        if p.method == "oracle" and reference is None:
            raise UserError(
                f"--method oracle needs a model that records how it was trained ({REFERENCE_FILE}, "
                "written by reference_model), to retrain it without the forget set"
            )
        max_length = (
            p.max_length or (json.loads(record["params"]).get("max_length") if record else None) or 512
        )
        params = {
            **{k: v for k, v in p.to_dict().items() if k not in NOT_IDENTITY},
            "max_length": int(max_length),
            "out": str(out),
            "forget": {
                "n": len(forget),
                "sha256": hashlib.sha256("\n".join(sorted(forget)).encode()).hexdigest(),
            },
        }
        inputs: dict[str, Any] = {"datasets": {train_name: train_version}}
        if record is not None:
            inputs["scores"] = p.scores
        plan = Plan(
            model_dir,
            out,
            p.method,
            train,
            forget,
            p,
            record,
            reference,
            int(max_length),
            ctx.device,
            model_ref,
        )
        return RunSpec("unlearn", p.method, params, inputs, model_ref, context={"plan": plan})

    def run(self, ctx: StageContext) -> str:
        """As every stage, except that a finished run whose model folder was removed rebuilds the folder."""
        spec = self.plan(ctx)
        out = spec.context["plan"].out
        with ctx.lake.run(spec.kind, spec.method, spec.params, spec.inputs, spec.model) as run:
            if not run.complete or not (out / "config.json").is_file():
                self.execute(ctx, run, spec)
        return run.run_id

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        plan: Plan = spec.context["plan"]
        outcome = unlearn(ctx.lake, plan, show_progress=not ctx.quiet)
        problem = unlearning_problem(outcome.summary)
        problem = problem and f"unlearn: {problem}"  # before anything is written: a no-op keeps nothing
        if problem:
            raise UnlearningNoOp(problem)
        provenance = {
            "run_id": run.run_id,
            "method": plan.method,
            "source_model": spec.model,
            "inputs": spec.inputs,
            "n_forget": len(plan.forget_ids),
            "metrics": outcome.summary,
        }
        write_model_dir(outcome.model, outcome.tokenizer, plan.out, provenance)
        if not run.complete:  # a finished run whose model folder was removed: rebuild the folder only
            train_name = next(iter(spec.inputs["datasets"]))
            run.write("metrics", outcome.metrics)
            run.write(
                "labels",
                pd.DataFrame(
                    {"dataset": train_name, "example_id": plan.forget_ids, "name": "forget", "value": 1.0}
                ),
            )

    def report(self, ctx: StageContext, run_id: str) -> list[str]:
        metrics = ctx.lake.table("metrics", "run_id = ?", [run_id])
        out = json.loads(ctx.lake.run_record(run_id)["params"])["out"]
        lines = [f"unlearned model written to {out}"]
        lines += [f"  {r.name}{'.' + r.key if r.key else ''}: {r.value:.6g}" for r in metrics.itertuples()]
        return lines


def run_unlearning(
    lake: Lake,
    model_dir: str | Path,
    train_dataset: str,
    out_dir: str | Path,
    *,
    device: str | None = None,
    quiet: bool = True,
    **params: Any,
) -> str:
    """The `unlearn` stage from Python; returns the run id. `params`: more UnlearnParams fields (forget_ids
    or forget_where, scores, method, lr, ...)."""
    stage = Unlearn({"model": str(model_dir), "out": str(out_dir), **params})
    return stage.run(StageContext(lake, [train_dataset], device=device, quiet=quiet))
