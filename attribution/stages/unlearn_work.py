"""The work of the `unlearn` stage (attribution/stages/unlearn.py) on a causal LM: the DMM targets from a
scores run, the calibration of their scale on retrains, Oracle Matching's retrained model, the gradient
baselines, and the before / after metrics. Inputs are validated by the stage before any of this runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storage import Lake, UserError
from storage.outputs import staged_output
from storage.progress import Progress, progress, say

METHODS = ("dmm", "oracle", "ga", "gd", "ga+gd")
REFERENCE_FILE = "assay_reference.json"
PROVENANCE_FILE = "assay_unlearning.json"


def _records(frame: pd.DataFrame) -> list[dict]:
    keep = [c for c in ("example_id", "domain", "difficulty", "prompt", "response", "messages") if c in frame]
    return frame[keep].to_dict("records")


def load_model(model_dir: Path, device: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a Hugging Face directory (`attribution.api.load_causal_lm`)."""
    from attribution.api import load_causal_lm

    return load_causal_lm(model_dir, device)


def reference_settings(model_dir: Path) -> dict | None:
    path = model_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("settings")


# ------------------------------------------------------------------------------------------ the work
@dataclass
class Plan:
    """Everything validated: what `unlearn` needs."""

    model_dir: Path
    out: Path
    method: str
    train: pd.DataFrame
    forget_ids: list[str]
    settings: Any  # UnlearnParams
    scores_record: dict | None
    reference: dict | None
    max_length: int
    device: str | None
    model_ref: str = ""  # storage.fingerprint.model_reference of model_dir


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


def reusable_factors(lake: Lake, record: dict, model_ref: str, max_length: int) -> Path | None:
    """The scores run's fitted kronfluence factors (kept by the attribute stage in `factors_dir`) when they
    were fitted for this model (the run's model fingerprint is model_ref's) on examples cut at this
    max_length, and are whole (their completion marker exists); else None. They were fitted on the
    dataset version and with the settings the run records, which `check_scores` and
    `_scores_datamodel_inputs` hold the scoring here to."""
    from attribution.ekfac import STRATEGIES
    from attribution.stages.attribute import factors_dir

    method = str(record.get("method"))
    fingerprint = str(record.get("model") or "").rsplit("@", 1)[-1]
    if method not in STRATEGIES or not fingerprint or fingerprint != model_ref.rsplit("@", 1)[-1]:
        return None
    if json.loads(record.get("params") or "{}").get("max_length") != max_length:
        return None
    folder = factors_dir(lake, str(record["run_id"]))
    return folder if (folder / f"factors_{method}.done").is_file() else None


@contextmanager
def scoring_work_dir(factors: Path | None) -> Iterator[Path | None]:
    """A temporary work folder for `attribution.api.attribute` holding a copy of these factors where its
    kronfluence scorer looks for them (its `kronfluence` folder, attribution/ekfac.py), so it loads them
    instead of fitting; None (attribute's own folder, a fresh fit) without factors."""
    if factors is None:
        yield None
        return
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="assay-unlearn-") as tmp:
        shutil.copytree(factors, Path(tmp) / "kronfluence")
        yield Path(tmp)


def _score_points(
    lake: Lake,
    plan: Plan,
    run: tuple[str, dict, dict],
    model: Any,
    tokenizer: Any,
    records: list[dict],
    points: list[dict],
    device: str,
) -> tuple[pd.DataFrame, float]:
    """Scores of the training set on the fine-tuning points, as the scores run (its method, method
    params and other settings) would have computed them (with this model only: a TRAK run's extra
    checkpoints are not reused), and 1.0 when the run's kept factors were used (0.0: fitted again)."""
    from attribution.api import attribute

    method, config, run_settings = run
    factors = reusable_factors(lake, plan.scores_record, plan.model_ref, plan.max_length)
    how = "the attribution run's factors" if factors is not None else "factors fitted here"
    say(f"unlearn: scoring the {len(points)} fine-tuning points with {method} ({how})")
    with scoring_work_dir(factors) as work_dir:
        scores = attribute(
            model,
            records,
            points,
            tokenizer=tokenizer,
            method=method,
            method_params=config,
            modules=run_settings["modules"],
            max_length=plan.max_length,
            device=device,
            seed=run_settings["seed"],
            work_dir=work_dir,
        ).scores
    return scores, float(factors is not None)


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
    from attribution.unlearning.datamodels import Datamodel, auto_scale
    from attribution.unlearning.lm import EncodedSet, dmm_token_targets, per_token_logprobs

    method, config, run_settings, scores, targets = _scores_datamodel_inputs(lake, plan)
    train_ids = [r["example_id"] for r in records]
    point_ids = [train_ids[p] for p in points]
    ft_records = [records[p] for p in points]
    facts: dict[str, float] = {}
    if targets is None and Datamodel.from_scores(scores).covers(point_ids):
        point_scores = scores
    else:  # the run scored other targets: score the fine-tuning points here, as the run would have
        point_scores, facts["factors_reused"] = _score_points(
            lake, plan, (method, config, run_settings), model, tokenizer, records, ft_records, device
        )
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
    if plan.settings.scale == "auto" and plan.reference is not None:
        scale, calibration = _calibrated_scale(plan, tokenizer, records, ft_records, raw, base, kind, device)
        facts.update(calibration)
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
    for _ in progress(range(s.calibration_retrains), "unlearn: calibration retrains", unit="retrains"):
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
    """The model trained from scratch on `retain_records` with the reference recipe: `finetune_causal_lm`'s
    loop (`train_module`, the same batches, optimiser and clipping) with each batch run as sub-batches
    of similar length (attribution/unlearning/lm.py: the same losses and steps up to rounding, a
    fraction of the padding)."""
    from attribution.lm_data import pad_id
    from attribution.reference_model import build_model
    from attribution.training import encode_records, train_module
    from attribution.unlearning.lm import bucketed_collate, bucketed_example_loss

    ref = plan.reference
    model = build_model(tokenizer, seed=ref["seed"], **ref.get("config", {}))
    return train_module(
        model,
        bucketed_example_loss,
        encode_records(tokenizer, retain_records, ref["max_length"]),
        collate_fn=bucketed_collate(pad_id(tokenizer)),
        epochs=ref["epochs"],
        lr=ref["lr"],
        batch_size=ref["batch_size"],
        seed=ref["seed"],
        device=device,
    )


@dataclass
class Outcome:
    model: Any
    tokenizer: Any
    metrics: pd.DataFrame
    summary: dict


def finetune_steps(plan: Plan, n_items: int) -> int:
    """Optimiser steps of the unlearning fine-tune over `n_items` (attribution.unlearning.loop.optimise: one
    step per batch, every epoch)."""
    s = plan.settings
    return s.epochs * -(-n_items // s.batch_size)


@contextmanager
def counting_steps(desc: str, total: int, bar: bool) -> Iterator[Progress]:
    """Progress over the optimiser steps taken inside the block. The unlearning loop takes no callback, so
    this counts with torch's global optimiser-step hook, removed on the way out."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    with Progress(desc, total, "steps", bar=bar) as counter:
        handle = register_optimizer_step_post_hook(lambda *_: counter.update())
        try:
            yield counter
        finally:
            handle.remove()


def unlearn(lake: Lake, plan: Plan, show_progress: bool = True) -> Outcome:
    """Unlearn the plan's forget set; progress (phases, calibration retrains, fine-tuning steps with ETA) on
    the terminal when `show_progress`, and in run logs always (storage.progress)."""
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
        say("unlearn: retraining the model without the forget set (the comparison)")
        t0 = time.perf_counter()
        retrained = _retrain(plan, tokenizer, [records[i] for i in retain], device)
        retrain_seconds = time.perf_counter() - t0
    started = time.perf_counter()
    sequence, points = finetune_points(forget, retain, s.forget_repeats, s.retain_multiple, s.seed)
    n_finetune = len(sequence)
    facts: dict[str, float] = {}
    desc = f"unlearn ({plan.method}): fine-tuning"
    if plan.method == "dmm":
        ft_records, targets, facts = _dmm_targets(
            lake, plan, model, tokenizer, records, points, plan.forget_ids, device
        )
        local = {int(p): k for k, p in enumerate(points)}
        seq = np.concatenate([[local[int(i)] for i in sequence], np.arange(len(points), len(ft_records))])
        n_finetune = len(seq)
        with counting_steps(desc, finetune_steps(plan, n_finetune), show_progress):
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
        with counting_steps(desc, finetune_steps(plan, len(sequence)), show_progress):
            lm.match_token_logprobs(
                model, ft_data, targets, np.array([local[int(i)] for i in sequence]), s.optim()
            )
    else:
        n_finetune = len(forget) if plan.method == "ga" else len(retain)
        with counting_steps(desc, finetune_steps(plan, n_finetune), show_progress):
            if plan.method == "ga":
                lm.lm_gradient_ascent(model, data, forget, s.optim())
            elif plan.method == "gd":
                lm.lm_gradient_descent(model, data, retain, s.optim())
            else:
                lm.lm_ascent_descent(model, data, forget, retain, s.optim(), s.ascent_weight)
    seconds = time.perf_counter() - started
    after = lm.mean_losses(model, data)
    rows = [
        ("forget_loss", "before", before[forget].mean()),
        ("forget_loss", "after", after[forget].mean()),
        # the noise of the forget set's mean loss: the health check's unit for "did not move"
        (
            "forget_loss",
            "se",
            before[forget].std(ddof=1) / np.sqrt(len(forget)) if len(forget) > 1 else np.nan,
        ),
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
def write_model_dir(model: Any, tokenizer: Any, out: Path, provenance: dict) -> Path:
    """Save a Hugging Face directory aside and rename it into place (storage/outputs.py; `out` was
    checked with prepare_output when the run was planned)."""
    with staged_output(out, kind="folder", writer="assay unlearn") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, default=str))
    return out
