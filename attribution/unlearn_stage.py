"""The lake stage for unlearning a causal LM: `run_unlearning(lake, model_dir, train_dataset, ...)`.

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
model's training.

Every check happens before the run opens: bad input raises UserError and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storage import Lake, UserError

METHODS = ("dmm", "oracle", "ga", "gd", "ga+gd")
REFERENCE_FILE = "assay_reference.json"
PROVENANCE_FILE = "assay_unlearning.json"


@dataclass
class UnlearnSettings:
    """Every knob; defaults are the DMM authors' (Adam, lr 1e-4, 4 epochs, batch 512, x0.95 per epoch)."""

    lr: float = 1e-4
    epochs: int = 4
    batch_size: int = 512
    lr_decay: float = 0.95
    l2_to_init: float = 0.0
    optimizer: str = "adam"
    forget_repeats: int = 5
    retain_multiple: int = 20
    # scores -> leave-one-out units. "auto": fitted on retrains when the model records its recipe
    # (assay_reference.json), else "analytic" (1 / n_train for influence, 1 for TRAK); or a number.
    scale: float | str = "auto"
    calibration_retrains: int = 3
    calibration_fraction: float = 0.1
    anchor_targets: bool = True
    ascent_weight: float = 1.0
    max_length: int | None = None  # None: the scores run's (else 512)
    seed: int = 0
    retrain: bool = True  # compare with a model retrained without F (needs assay_reference.json)

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


def _records(frame: pd.DataFrame) -> list[dict]:
    keep = [c for c in ("example_id", "domain", "difficulty", "prompt", "response", "messages") if c in frame]
    return frame[keep].to_dict("records")


def load_model(model_dir: Path, device: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a Hugging Face directory (`attribution.api.load_causal_lm`)."""
    from attribution.api import load_causal_lm

    return load_causal_lm(model_dir, device)


def _reference_settings(model_dir: Path) -> dict | None:
    path = model_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("settings")


# ------------------------------------------------------------------------------------------ the work
@dataclass
class Plan:
    """Everything validated: what `_unlearn` needs."""

    model_dir: Path
    out: Path
    method: str
    train: pd.DataFrame
    forget_ids: list[str]
    settings: UnlearnSettings
    scores_record: dict | None
    reference: dict | None
    max_length: int
    device: str | None


def _scores_datamodel_inputs(
    lake: Lake, plan: Plan
) -> tuple[str, dict, dict, pd.DataFrame, pd.DataFrame | None]:
    """(method, method params, other settings of the run, its scores, its target examples or None when it
    scored the training set against itself)."""
    record = plan.scores_record
    params = json.loads(record.get("params") or "{}")
    config = dict(params.get("config") or {})
    config.pop("strategy", None)
    scores = lake.table("scores", "run_id = ?", [record["run_id"]])[["train_id", "target_id", "score"]]
    datasets = json.loads(record.get("inputs") or "{}").get("datasets", {})
    train_name = str(plan.train["dataset"].iloc[0])
    others = {k: v for k, v in datasets.items() if k != train_name}
    targets = None
    if others:
        name, version = next(iter(others.items()))
        targets = lake.query(
            "SELECT * FROM examples_all WHERE dataset = ? AND version = ? ORDER BY row_index", [name, version]
        )
        targets = targets[targets["example_id"].astype(str).isin(set(scores["target_id"].astype(str)))]
    settings = {"modules": params.get("modules", "mlp"), "seed": int(params.get("seed", 0))}
    return record["method"], config, settings, scores, targets


def _dmm_targets(
    lake: Lake,
    plan: Plan,
    model: Any,
    tokenizer: Any,
    records: list[dict],
    points: np.ndarray,
    forget_ids: list[str],
    device: str,
) -> tuple[list[dict], list[np.ndarray], dict[str, float]]:
    """(fine-tuning records, their per-token targets, facts for the metrics) for DMM."""
    from attribution.api import attribute
    from attribution.unlearning.datamodels import Datamodel, auto_scale
    from attribution.unlearning.lm import EncodedSet, dmm_token_targets, per_token_logprobs

    method, config, run_settings, scores, targets = _scores_datamodel_inputs(lake, plan)
    train_ids = [r["example_id"] for r in records]
    point_ids = [train_ids[p] for p in points]
    ft_records = [records[p] for p in points]
    if targets is None and Datamodel.from_scores(scores).covers(point_ids):
        point_scores = scores
    else:  # the run scored other targets: score the fine-tuning points here, as the run would have
        # (with this model only: a TRAK run's extra checkpoints are not reused)
        point_scores = attribute(
            model,
            records,
            ft_records,
            tokenizer=tokenizer,
            method=method,
            method_params=config,
            modules=run_settings["modules"],
            max_length=plan.max_length,
            device=device,
            seed=run_settings["seed"],
        ).scores
    raw = Datamodel.from_scores(point_scores, 1.0, train_ids=train_ids, target_ids=point_ids)
    if targets is not None and plan.settings.anchor_targets and len(targets):
        anchor_ids = targets["example_id"].astype(str).tolist()
        anchors = Datamodel.from_scores(scores, 1.0, train_ids=train_ids, target_ids=anchor_ids)
        raw = Datamodel(
            np.concatenate([raw.weights, anchors.weights], axis=1), train_ids, point_ids + anchor_ids
        )
        ft_records += _records(targets)
    kind = "margin" if method == "trak" else "mean"
    base = per_token_logprobs(model, EncodedSet(tokenizer, ft_records, plan.max_length))
    facts: dict[str, float] = {}
    if plan.settings.scale == "auto" and plan.reference is not None:
        scale, facts = _calibrated_scale(plan, tokenizer, records, ft_records, raw, base, kind, device)
    elif plan.settings.scale in ("auto", "analytic"):
        if method == "gradsim":
            raise UserError("gradient-similarity scores have no leave-one-out scale: pass --scale")
        scale = auto_scale(method, len(records))
    else:
        scale = float(plan.settings.scale)
    facts["datamodel_scale"] = scale
    effect = scale * raw.removal_effect(forget_ids, raw.target_ids)[:, 0]
    return ft_records, dmm_token_targets(base, effect, kind), facts


def _calibrated_scale(
    plan: Plan,
    tokenizer: Any,
    records: list[dict],
    ft_records: list[dict],
    raw: Any,
    base: list[np.ndarray],
    kind: str,
    device: str,
) -> tuple[float, dict[str, float]]:
    """One scalar that puts attribution scores in leave-one-out units, fitted on retrains.

    Influence scores of a small fine-tuned network can be off by orders of magnitude (the damped
    Hessian inverse), so with the model's own training recipe at hand we retrain it on
    `calibration_retrains` random subsets (each dropping `calibration_fraction` of the training set, none
    chosen with the forget set in mind) and fit s >= 0 by least squares in
    f_subset(x) - f(x) = -s * sum_{i dropped} score_i(x) * u(x), over the fine-tuning points, where f is
    the response's mean log-likelihood and u(x) the change in it per unit of removal effect. This is a
    one-parameter regression datamodel on top of the attribution scores.
    """
    from attribution.unlearning.lm import EncodedSet, per_token_logprobs, token_shifts

    s = plan.settings
    ft_data = EncodedSet(tokenizer, ft_records, plan.max_length)
    f0 = np.array([lp.mean() for lp in base])
    unit = np.array([shift.mean() for shift in token_shifts(base, np.ones(len(base)), kind)])
    rng = np.random.default_rng(s.seed + 1)
    n = len(records)
    drop_count = max(1, round(s.calibration_fraction * n))
    observed, predicted = [], []
    for _ in range(s.calibration_retrains):
        dropped = rng.choice(n, size=drop_count, replace=False)
        keep = np.setdiff1d(np.arange(n), dropped)
        retrained = _retrain(plan, tokenizer, [records[i] for i in keep], device)
        f_sub = np.array([lp.mean() for lp in per_token_logprobs(retrained, ft_data)])
        ids = [records[i]["example_id"] for i in dropped]
        observed.append(f_sub - f0)
        predicted.append(-raw.removal_effect(ids, raw.target_ids)[:, 0] * unit)
    y, x = np.concatenate(observed), np.concatenate(predicted)
    scale = max(0.0, float(x @ y / (x @ x))) if float(x @ x) > 0 else 0.0
    resid = y - scale * x
    r2 = 1.0 - float(resid @ resid) / max(float(((y - y.mean()) ** 2).sum()), 1e-12)
    return scale, {"calibration_r2": r2, "calibration_retrains": float(s.calibration_retrains)}


def _retrain(plan: Plan, tokenizer: Any, retain_records: list[dict], device: str) -> Any:
    from attribution.reference_model import build_model
    from attribution.training import finetune_causal_lm

    ref = plan.reference
    model = build_model(tokenizer, seed=ref["seed"], **ref.get("config", {}))
    return finetune_causal_lm(
        model,
        tokenizer,
        retain_records,
        epochs=ref["epochs"],
        lr=ref["lr"],
        batch_size=ref["batch_size"],
        max_length=ref["max_length"],
        seed=ref["seed"],
        device=device,
    )


@dataclass
class Outcome:
    model: Any
    tokenizer: Any
    metrics: pd.DataFrame
    summary: dict


def _unlearn(lake: Lake, plan: Plan) -> Outcome:
    import torch

    from attribution.training import pick_device
    from attribution.unlearning import lm
    from attribution.unlearning.dmm import finetune_points

    device = str(pick_device(plan.device))
    model, tokenizer = load_model(plan.model_dir, torch.device(device))
    records = _records(plan.train)
    ids = [r["example_id"] for r in records]
    position = {i: k for k, i in enumerate(ids)}
    forget = np.array([position[i] for i in plan.forget_ids], dtype=np.int64)
    retain = np.setdiff1d(np.arange(len(records)), forget)
    s = plan.settings
    data = lm.EncodedSet(tokenizer, records, plan.max_length)
    before = lm.mean_losses(model, data)
    retrained, retrain_seconds = None, None
    if plan.reference is not None and (s.retrain or plan.method == "oracle"):
        t0 = time.perf_counter()
        retrained = _retrain(plan, tokenizer, [records[i] for i in retain], device)
        retrain_seconds = time.perf_counter() - t0
    started = time.perf_counter()
    sequence, points = finetune_points(forget, retain, s.forget_repeats, s.retain_multiple, s.seed)
    n_finetune = len(sequence)
    facts: dict[str, float] = {}
    if plan.method == "dmm":
        ft_records, targets, facts = _dmm_targets(
            lake, plan, model, tokenizer, records, points, plan.forget_ids, device
        )
        local = {int(p): k for k, p in enumerate(points)}
        seq = np.concatenate([[local[int(i)] for i in sequence], np.arange(len(points), len(ft_records))])
        n_finetune = len(seq)
        lm.match_token_logprobs(
            model,
            lm.EncodedSet(tokenizer, ft_records, plan.max_length),
            targets,
            seq.astype(np.int64),
            s.optim(),
        )
    elif plan.method == "oracle":
        ft_records = [records[p] for p in points]
        ft_data = lm.EncodedSet(tokenizer, ft_records, plan.max_length)
        targets = lm.per_token_logprobs(retrained, ft_data)
        local = {int(p): k for k, p in enumerate(points)}
        lm.match_token_logprobs(
            model, ft_data, targets, np.array([local[int(i)] for i in sequence]), s.optim()
        )
    elif plan.method == "ga":
        n_finetune = len(forget)
        lm.lm_gradient_ascent(model, data, forget, s.optim())
    elif plan.method == "gd":
        n_finetune = len(retain)
        lm.lm_gradient_descent(model, data, retain, s.optim())
    else:
        n_finetune = len(retain)
        lm.lm_ascent_descent(model, data, forget, retain, s.optim(), s.ascent_weight)
    seconds = time.perf_counter() - started
    after = lm.mean_losses(model, data)
    rows = [
        ("forget_loss", "before", before[forget].mean()),
        ("forget_loss", "after", after[forget].mean()),
        ("retain_loss", "before", before[retain].mean()),
        ("retain_loss", "after", after[retain].mean()),
        ("n_forget", "", len(forget)),
        ("n_retain", "", len(retain)),
        ("finetune_examples", "", n_finetune),
        ("seconds", "unlearn", seconds),
        *[(name, "", value) for name, value in facts.items()],
    ]
    if retrained is not None:
        again = lm.mean_losses(retrained, data)
        rows += [
            ("forget_loss", "retrained", again[forget].mean()),
            ("retain_loss", "retrained", again[retain].mean()),
            ("seconds", "retrain", retrain_seconds),
        ]
        gap = again[forget].mean() - before[forget].mean()
        if abs(gap) > 1e-12:  # 1 = the forget loss moved all the way to the retrained model's
            rows.append(("forget_gap_closed", "", (after[forget].mean() - before[forget].mean()) / gap))
    metrics = pd.DataFrame(rows, columns=["name", "key", "value"]).astype({"value": float})
    summary = {r[0] + ("." + r[1] if r[1] else ""): float(r[2]) for r in rows}
    return Outcome(model, tokenizer, metrics, summary)


# ------------------------------------------------------------------------------------------ output
def _occupied(path: Path) -> bool:
    return path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))


def write_model_dir(model: Any, tokenizer: Any, out: Path, provenance: dict) -> Path:
    """Save a Hugging Face directory aside and rename it into place (an old `out` is moved away first)."""
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, default=str))
        old = None
        if out.exists() or out.is_symlink():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    return out


def run_unlearning(
    lake: Lake,
    model_dir: str | Path,
    train_dataset: str,
    out_dir: str | Path,
    *,
    forget_ids: list[str] | None = None,
    forget_where: str | None = None,
    scores_run_id: str | None = None,
    method: str = "dmm",
    settings: UnlearnSettings | None = None,
    device: str | None = None,
    force: bool = False,
) -> str:
    """Unlearn the forget set from the model; returns the `unlearn` run id (see the module docstring)."""
    from attribution.stage import model_fingerprint

    settings = settings or UnlearnSettings()
    if method not in METHODS:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    model_dir = Path(model_dir).expanduser().absolute()
    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model {model_dir}: not a Hugging Face model directory (no config.json)")
    out = Path(out_dir).expanduser().absolute()
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    if out == model_dir:
        raise UserError("--out must not be the --model directory")
    if _occupied(out) and not force:
        raise UserError(f"--out {out} exists and is not empty; pass --force to replace it")
    for name in ("lr", "epochs", "batch_size", "forget_repeats"):
        if getattr(settings, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if settings.retain_multiple < 0:
        raise UserError("--retain-multiple must not be negative")
    if settings.optimizer not in ("adam", "sgd"):
        raise UserError(f"--optimizer {settings.optimizer!r}: adam or sgd")
    if settings.lr_decay <= 0:
        raise UserError("--lr-decay must be positive")
    if settings.scale not in ("auto", "analytic"):
        try:
            float(settings.scale)
        except (TypeError, ValueError):
            raise UserError(f"--scale {settings.scale!r}: a number, 'auto' or 'analytic'") from None
    if settings.calibration_retrains < 1 or not 0 < settings.calibration_fraction < 1:
        raise UserError("--calibration-retrains must be >= 1 and --calibration-fraction in (0, 1)")
    train = lake.examples(train_dataset)
    train_version = lake.dataset_version(train_dataset)
    train_ids = train["example_id"].astype(str).tolist()
    forget = resolve_forget(lake, train_dataset, train_ids, forget_ids, forget_where)
    model_ref = f"{model_dir}@{model_fingerprint(model_dir)}"
    record = None
    if method == "dmm":
        if not scores_run_id:
            raise UserError("--method dmm needs --scores RUN_ID (an attribute run on this model and dataset)")
        record = check_scores(lake, scores_run_id, model_ref, train_dataset, train_version)
    reference = _reference_settings(model_dir)
    if method == "oracle" and reference is None:
        raise UserError(
            f"--method oracle needs a model that records how it was trained ({REFERENCE_FILE}, "
            "written by reference_model), to retrain it without the forget set"
        )
    max_length = (
        settings.max_length or (json.loads(record["params"]).get("max_length") if record else None) or 512
    )
    plan = Plan(model_dir, out, method, train, forget, settings, record, reference, int(max_length), device)

    params = {
        **asdict(settings),
        "max_length": plan.max_length,
        "out": str(out),
        "forget": {
            "n": len(forget),
            "sha256": hashlib.sha256("\n".join(sorted(forget)).encode()).hexdigest(),
        },
    }
    inputs = {"datasets": {train_dataset: train_version}}
    if record is not None:
        inputs["scores"] = scores_run_id
    with lake.run("unlearn", method, params=params, inputs=inputs, model=model_ref) as run:
        if run.complete and (out / "config.json").is_file():
            return run.run_id
        outcome = _unlearn(lake, plan)
        provenance = {
            "run_id": run.run_id,
            "method": method,
            "source_model": model_ref,
            "inputs": inputs,
            "n_forget": len(forget),
            "metrics": outcome.summary,
        }
        write_model_dir(outcome.model, outcome.tokenizer, out, provenance)
        if not run.complete:  # a finished run whose model folder was removed: rebuild the folder only
            run.write("metrics", outcome.metrics)
            run.write(
                "labels",
                pd.DataFrame(
                    {"dataset": train_dataset, "example_id": forget, "name": "forget", "value": 1.0}
                ),
            )
        run_id = run.run_id
    return run_id
