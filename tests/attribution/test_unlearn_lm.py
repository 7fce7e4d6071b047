"""The LM path end to end: a tiny reference model, a scores run from the attribution stage, DMM, and the
unlearned model's forget / retain losses beside a model retrained without the forget set."""

import json

import pytest
import torch
from tiny_lm import scored_lake

from attribution.stages import run_attribution, run_unlearning
from attribution.stages.unlearn_work import load_model
from attribution.unlearning.lm import EncodedSet, mean_losses
from curation.corpus import math_problems, write_jsonl
from storage.fingerprint import directory_fingerprint as model_fingerprint
from storage.ingest import ingest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlearn_lm")
    return (root, *scored_lake(root, epochs=8, targets=False))


def metric(lake, run_id, name, key=""):
    rows = lake.table("metrics", "run_id = ? AND name = ? AND key = ?", [run_id, name, key])
    return float(rows["value"].iloc[0])


def test_dmm_moves_forget_loss_toward_the_retrained_model_and_holds_retain_loss(setup):
    root, records, model_dir, lake, scores, forget = setup
    out = root / "unlearned"
    settings = {"lr": 1e-3, "epochs": 10, "batch_size": 16}
    run_id = run_unlearning(lake, model_dir, "train", out, forget_ids=forget, scores=scores, **settings)
    f_before, f_after, f_retrained = (
        metric(lake, run_id, "forget_loss", k) for k in ("before", "after", "retrained")
    )
    r_before, r_after = (
        metric(lake, run_id, "retain_loss", "before"),
        metric(lake, run_id, "retain_loss", "after"),
    )
    assert f_retrained > f_before + 0.2  # forgetting is visible: the retrained model finds F harder
    assert f_before + 0.05 < f_after < f_retrained + (f_retrained - f_before)  # toward it, not past it
    # retain loss holds: it moves by under a quarter of the forget loss's move (0.2 nats of 1.2 measured
    # for seeds 0-2; a fixed 0.2-nat bound held for seed 0 only)
    assert abs(r_after - r_before) < 0.25 * (f_after - f_before)
    assert 0 < metric(lake, run_id, "datamodel_scale") < 1

    # the model directory loads and scores exactly what the run recorded
    model, tokenizer = load_model(out, torch.device("cpu"))
    data = EncodedSet(tokenizer, [r for r in records if r["id"] in forget], 128)
    assert mean_losses(model, data).mean() == pytest.approx(f_after, rel=1e-4)
    provenance = json.loads((out / "assay_unlearning.json").read_text())
    assert provenance["run_id"] == run_id and provenance["n_forget"] == 2

    # the registry links the scores run, the dataset version and the model fingerprint
    record = lake.run_record(run_id)
    inputs = json.loads(record["inputs"])
    assert record["kind"] == "unlearn" and record["method"] == "dmm"
    assert inputs["scores"] == scores and inputs["datasets"] == {"train": lake.dataset_version("train")}
    assert record["model"].endswith(model_fingerprint(model_dir))
    labels = lake.table("labels", "run_id = ?", [run_id])
    assert sorted(labels["example_id"]) == sorted(forget) and set(labels["name"]) == {"forget"}
    assert not list(root.glob(".unlearned.tmp-*"))

    # the same call again: the finished run is found, nothing is recomputed
    assert (
        run_unlearning(
            lake,
            model_dir,
            "train",
            out,
            forget_ids=forget,
            scores=scores,
            **settings,
            force=True,
        )
        == run_id
    )


def test_gradient_ascent_raises_the_forget_loss(setup):
    root, _, model_dir, lake, _, _ = setup
    settings = {"lr": 1e-3, "epochs": 3, "batch_size": 2, "retrain": False}
    run_id = run_unlearning(
        lake,
        model_dir,
        "train",
        root / "ga",
        forget_where="difficulty = 5 AND row_index < 18",
        method="ga",
        **settings,
    )
    assert metric(lake, run_id, "forget_loss", "after") > metric(lake, run_id, "forget_loss", "before")
    assert metric(lake, run_id, "n_forget") == 2
    assert lake.table("metrics", "run_id = ? AND key = 'retrained'", [run_id]).empty


def test_scores_on_other_targets_are_completed_here_and_their_targets_join_the_finetuning_set(setup):
    root, _, model_dir, lake, _, forget = setup
    targets = math_problems(1, seed=7, prefix="target")
    ingest(lake, write_jsonl(targets, root / "targets.jsonl"), "targets")
    scores = run_attribution(lake, model_dir, "train", "targets", method="ekfac", max_length=128)
    settings = {"lr": 1e-3, "epochs": 2, "batch_size": 16, "scale": 1e-6, "retrain": False}
    run_id = run_unlearning(
        lake,
        model_dir,
        "train",
        root / "other_targets",
        forget_ids=forget,
        scores=scores,
        **settings,
    )
    # F x 5 + the 18 retain examples (fewer than 20 x |F|) + the run's 5 targets once each
    assert metric(lake, run_id, "finetune_examples") == 2 * 5 + 18 + 5
    assert metric(lake, run_id, "datamodel_scale") == pytest.approx(1e-6)
    assert metric(lake, run_id, "forget_loss", "after") != metric(lake, run_id, "forget_loss", "before")
    assert (root / "other_targets" / "config.json").is_file()
