"""SIGKILL `assay curate` and `assay export` at many points: the lake and the export folder stay
consistent, and the rerun gives exactly the result of an uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from assay_crash import finish, kill_points
from assay_figures import record
from flows_testlake import make_lake, recipe

from storage import Lake

POINTS = 5


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A lake with a training set and a sharded attribution run, plus a two-stage recipe."""
    folder = tmp_path_factory.mktemp("curate-base")
    make_lake(folder / "lake", n_train=400, n_targets=20)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe()))
    return folder


def prepare_from(base: Path):
    def prepare(folder: Path) -> None:
        shutil.copytree(base / "lake", folder / "lake")
        shutil.copy(base / "recipe.yaml", folder / "recipe.yaml")

    return prepare


def curated(lake: Lake) -> pd.DataFrame:
    return lake.query(
        "SELECT run_id, dataset, example_id, copies, round(loss_weight, 9) AS loss_weight FROM weights "
        "ORDER BY run_id, example_id"
    )


def test_crash_curate(base: Path, tmp_path: Path) -> None:
    held = kill_points(["curate", "recipe.yaml"], prepare_from(base), curated, tmp_path, POINTS)
    record("kill points", POINTS, held, "assay curate")
    assert held == POINTS


def test_crash_export(base: Path, tmp_path: Path) -> None:
    finish(["curate", "recipe.yaml"], base)  # the curated run to export
    mix_run = Lake(base / "lake").query("SELECT run_id FROM runs WHERE method = 'mix'")["run_id"][0]

    def exported(lake: Lake) -> pd.DataFrame:
        folder = lake.root.parent / "out"
        assert (folder / "README.md").exists()  # the folder appears whole or not at all
        return pd.read_json(folder / "data" / "train.jsonl", lines=True).drop(
            columns=["messages"], errors="ignore"
        )

    def prepare(folder: Path) -> None:
        shutil.copytree(base / "lake", folder / "lake")

    args = ["export", mix_run, "--format", "jsonl", "--out", "out", "--force"]
    held = kill_points(args, prepare, exported, tmp_path, POINTS)
    record("kill points", POINTS, held, "assay export")
    assert held == POINTS
