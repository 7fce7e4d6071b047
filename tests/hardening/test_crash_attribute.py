"""SIGKILL `assay attribute` at many points: shards already written survive, nothing partial is
visible, and the rerun ends with exactly the scores of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from assay_crash import kill_points
from assay_figures import record

from storage import Lake

POINTS = 5


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A lake with small train / target sets, and a tiny Qwen2 model directory."""
    from attribution.reference_model import build_model, build_tokenizer
    from curation.corpus import math_problems
    from storage.ingest import ingest

    folder = tmp_path_factory.mktemp("attr-base")
    problems = math_problems(4, seed=3)
    for name, rows in {"train": problems[:16], "targets": problems[16:]}.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ingest(Lake(folder / "lake"), folder / f"{name}.jsonl", name)
    tokenizer = build_tokenizer([p["prompt"] + p["response"] for p in problems], vocab_size=300)
    model = build_model(tokenizer, seed=0, hidden_size=32, intermediate_size=64)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder


def test_crash_attribute(base: Path, tmp_path: Path) -> None:
    def prepare(folder: Path) -> None:
        shutil.copytree(base / "lake", folder / "lake")
        shutil.copytree(base / "model", folder / "model")

    def scores(lake: Lake):
        return lake.query(
            "SELECT train_id, target_id, round(score, 6) AS score FROM scores ORDER BY train_id, target_id"
        )

    args = [
        "attribute",
        "--model",
        "model",
        "--train",
        "train",
        "--targets",
        "targets",
        "--method",
        "ekfac",
        "--level",
        "example",
        "--shard-size",
        "4",
    ]
    held = kill_points(args, prepare, scores, tmp_path, POINTS)
    record("kill points", POINTS, held, "assay attribute")
    assert held == POINTS
