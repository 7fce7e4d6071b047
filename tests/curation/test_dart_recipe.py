"""A curation recipe with DART (replay and transformers backends), the difficulty flip and influence
reweighting, run through `assay curate`, writing samples and weights, and exporting the curated set."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer
import yaml
from typer.testing import CliRunner

from curation.corpus import humaneval_records, math_problems
from curation.dart.replay import write_demo_replay
from flows.commands.curate import register
from storage import Lake
from storage.ingest import ColumnMap, ingest_records, normalize


def test_a_recipe_with_dart_flip_and_reweighting_runs_from_the_cli_and_exports(
    dart_tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    rows = math_problems(2, seed=3) + humaneval_records()[:3]
    lake = Lake(tmp_path / "lake")
    ingest_records(lake, normalize(rows, "toy", ColumnMap(), "toy.jsonl"), "toy", ColumnMap(), "toy.jsonl")
    pool = math_problems(2, seed=4, prefix="pool", exclude={r["prompt"] for r in rows})
    ingest_records(lake, normalize(pool, "toy_pool", ColumnMap(), "pool.jsonl"), "toy_pool", ColumnMap(), "p")
    replay = write_demo_replay(lake.examples("toy"), tmp_path / "replay.jsonl", per_query=5, seed=2)
    ids = [r["id"] for r in rows]
    with lake.run(kind="attribute", method="test-scores", params={"for": "recipe"}) as scores:
        scores.write(
            "scores",
            pd.DataFrame(
                {
                    "train_id": [i for i in ids for _ in ids[:3]],
                    "target_id": ids[:3] * len(ids),
                    "score": [float(k % 7) - 3.0 for k in range(3 * len(ids))],
                }
            ),
        )
    recipe = {
        "name": "dart-recipe",
        "datasets": ["toy"],
        "stages": [
            {
                "stage": "dart",
                "name": "dart_replay",
                "params": {
                    "strategy": "prop2diff",
                    "replay": str(replay),
                    "k_p": 3,
                    "n_d": 2,
                    "n_max": 5,
                    "batch": 2,
                },
            },
            {
                "stage": "dart",
                "name": "dart_model",
                "params": {
                    "strategy": "vrt",
                    "n_per_query": 1,
                    "generator": "transformers",
                    "model": str(dart_tiny_model_dir),
                    "max_new_tokens": 6,
                    "domains": ["math"],
                    "limit": 2,
                },
            },
            # Replacements from a pool of new problems (2 per level: 4 hard ones for the 2 easy math examples
            # that half of the 4 easy ones are); built on the training set, not on DART's weights.
            {
                "stage": "difficulty_flip",
                "params": {
                    "pool": "toy_pool",
                    "directions": {"math": "hard", "code": "none"},
                    "fraction": 0.5,
                    "weights_from": "none",
                },
            },
            {
                "stage": "influence_reweight",
                "params": {"scores_run": "latest", "clip_min": 0.5, "clip_max": 2.0},
            },
        ],
        "export": {"out": str(tmp_path / "export"), "format": "jsonl", "run": "dart_replay"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("ASSAY_PREFECT", "0")
    monkeypatch.setenv("ASSAY_HOME", str(tmp_path / "home"))
    app = typer.Typer()
    app.callback()(lambda: None)  # a command group, as in `assay`, not a single-command app
    register(app)
    done = CliRunner().invoke(app, ["curate", str(path), "--lake", str(lake.root)])
    assert done.exit_code == 0, f"{done.output}\n{done.exception!r}"
    complete = [r for r in lake.runs() if r["status"] == "complete"]
    assert {"dart", "difficulty_flip", "influence_reweight"} <= {r["method"] for r in complete}
    model_run = next(r for r in complete if r["method"] == "dart" and r["model"])
    assert len(lake.table("samples", "run_id = ?", [model_run["run_id"]])) == 2
    for method in ("difficulty_flip", "influence_reweight"):
        run_id = next(r["run_id"] for r in complete if r["method"] == method)
        weights = lake.table("weights", "run_id = ?", [run_id])
        assert weights["copies"].sum() == len(weights) == len(rows)  # sizes kept, nothing repeated
    flip = next(r["run_id"] for r in complete if r["method"] == "difficulty_flip")
    assert (lake.table("weights", "run_id = ?", [flip])["dataset"] == "toy_pool").sum() == 2
    exported = (tmp_path / "export" / "data" / "train.jsonl").read_text().splitlines()
    assert exported and all(json.loads(line)["dataset"].startswith("toy-dart-") for line in exported)
