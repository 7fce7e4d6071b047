"""Guardrails a user meets on the command line: `assay unlearn` never exits 0 as a silent no-op (a failed
calibration or an unmoved forget loss is exit 2 with one line saying why and what to try, and nothing is
written), unlearning reports its fine-tuning steps, and `assay attribute` warns when targets also sit in the
training set (exact copies and near ones), even with --quiet."""

from __future__ import annotations

import json
import logging

import pytest
from assay_testing import run_cli, tree_digest

from attribution.reference_model import reference_model
from attribution.stages import run_attribution, run_unlearning
from curation.corpus import math_problems, write_jsonl
from storage import Lake
from storage.ingest import ingest
from storage.progress import LOGGER


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("guardrails")
    records = math_problems(2, seed=0)  # 10 problems, two per level
    model = reference_model(records, root / "cache", epochs=2, max_length=96, vocab_size=400)
    lake = Lake(root / "lake")
    ingest(lake, write_jsonl(records, root / "train.jsonl"), "train")
    scores = run_attribution(lake, model, "train", "train", method="identity", max_length=96)
    return {"root": root, "records": records, "model": model, "lake": lake, "scores": scores}


def unlearn_cli(project: dict, out: str, *extra: str) -> tuple:
    root, lake = project["root"], project["lake"]
    forget = project["records"][-1]["id"]
    before = tree_digest(lake.root)
    done = run_cli(
        "unlearn",
        "--train",
        "train",
        "--model",
        str(project["model"]),
        "--out",
        str(root / out),
        "--forget-ids",
        forget,
        "--no-retrain",
        *extra,
        "--lake",
        str(lake.root),
        cwd=root,
    )
    return done, before


def test_a_zero_datamodel_scale_exits_2_with_one_line_and_keeps_nothing(project: dict) -> None:
    done, _ = unlearn_cli(project, "scale0", "--scores", project["scores"], "--scale", "0")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "error: unlearn: the datamodel scale is 0: DMM's targets equal the model's own"
    )
    assert "pass --scale (e.g. 'analytic')" in lines[0]
    assert not (project["root"] / "scale0").exists()  # no model folder
    lake = project["lake"]
    failed = [r for r in lake.runs() if r["kind"] == "unlearn" and r["status"] == "failed"]
    assert failed and "the datamodel scale is 0" in failed[-1]["error"]
    assert lake.table("metrics", "run_id = ?", [failed[-1]["run_id"]]).empty  # no view shows its rows


def test_a_forget_loss_that_does_not_move_exits_2(project: dict) -> None:
    done, _ = unlearn_cli(project, "still", "--method", "ga", "--lr", "1e-12", "--epochs", "1")
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip()
    assert line.startswith("error: unlearn: the forget loss did not move (") and "try a larger --lr" in line
    assert "\n" not in line and not (project["root"] / "still").exists()


def test_unlearning_that_moves_the_forget_loss_succeeds_and_logs_its_steps(project: dict) -> None:
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        run_id = run_unlearning(
            project["lake"],
            project["model"],
            "train",
            project["root"] / "ga",
            forget_ids=[project["records"][-1]["id"]],
            method="ga",
            lr=1e-2,
            epochs=3,
            batch_size=1,
            retrain=False,
        )
    finally:
        LOGGER.removeHandler(handler)
    metrics = project["lake"].table("metrics", "run_id = ?", [run_id])
    loss = dict(
        zip(
            metrics["key"][metrics["name"] == "forget_loss"],
            metrics["value"][metrics["name"] == "forget_loss"],
        )
    )
    assert loss["after"] > loss["before"] + 1e-3
    # one forget example, batch 1, 3 epochs: 3 optimiser steps, logged as they pass each tenth
    steps = [m for m in seen if m.startswith("unlearn (ga): fine-tuning:")]
    assert steps[-1].startswith("unlearn (ga): fine-tuning: 3/3 steps (100%)"), seen
    assert any("1/3 steps (33%)" in m and "ETA" in m for m in steps), steps


def test_attribute_warns_about_targets_that_sit_in_the_training_set(project: dict) -> None:
    root, lake, records = project["root"], project["lake"], project["records"]
    exact = [dict(r, id=f"copy{i}") for i, r in enumerate(records[:2])]
    reworded = dict(
        records[2], id="near0", prompt=records[2]["prompt"].upper().replace("?", " ?!"), response="7"
    )
    fresh = [dict(r, id=f"new{i}") for i, r in enumerate(math_problems(1, seed=9, prefix="fresh")[:2])]
    (root / "targets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*exact, reworded, *fresh]))
    assert (
        run_cli("--lake", str(lake.root), "ingest", "targets.jsonl", "-d", "targets", cwd=root).returncode
        == 0
    )
    args = ["attribute", "-d", "train", "--targets", "targets", "--model", str(project["model"])]
    args += ["--method", "identity", "--max-length", "96", "--lake", str(lake.root)]
    expected = (
        "warning: attribute: 2 target example(s) of targets also sit in train (same prompt and response); "
        "1 more target example(s) of targets share a prompt with train (ignoring case, spaces and "
        "punctuation): their scores measure memorisation, not transfer"
    )
    for quiet in ([], ["--quiet"]):
        done = run_cli(*quiet, *args, cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stderr.count(expected) == 1, done.stderr  # once, though the stage is planned twice
        assert "attribute run " in done.stdout
