"""`--out` as a user types it, through the `assay` command line: export and sql refuse every path that
would replace or sit inside the lake, the project's state folder, the project folder or a folder assay
did not write, with exit 2, one line, and nothing written anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from assay_testing import run_cli, stage, tree_digest
from flows_testlake import TRAIN, make_lake

from storage.stage import StageContext


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("project")
    lake, _ = make_lake(root / "lake")
    run_id = stage("mix")(StageContext(lake, [TRAIN], quiet=True), {"epochs": 2})
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("the user's own folder")
    return root, run_id


REFUSED = [
    ("lake", "the lake"),
    ("lake/tables", "inside the lake"),
    (".", "contains"),
    ("..", "contains"),
    (".assay", "state"),
    ("mine", "assay did not write that folder"),
]


@pytest.mark.parametrize(("out", "why"), REFUSED)
def test_export_out_that_would_replace_what_it_should_not_is_refused(
    project: tuple[Path, str], out: str, why: str
) -> None:
    root, run_id = project
    (root / ".assay").mkdir(exist_ok=True)
    before = tree_digest(root.parent)
    result = run_cli("--lake", "lake", "export", run_id, "--out", out, "--force", cwd=root)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0], result.stderr
    assert tree_digest(root.parent) == before


def test_sql_out_into_the_lake_is_refused(project: tuple[Path, str]) -> None:
    root, _ = project
    before = tree_digest(root)
    result = run_cli("--lake", "lake", "sql", "SELECT 1 AS x", "--out", "lake/x.parquet", "--force", cwd=root)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert tree_digest(root) == before


def test_export_writes_a_new_folder_and_replaces_only_its_own(project: tuple[Path, str]) -> None:
    root, run_id = project
    first = run_cli("--lake", "lake", "export", run_id, "--out", "exports/mix", cwd=root)
    assert first.returncode == 0, first.stderr
    assert (root / "exports" / "mix" / "data" / "train.jsonl").is_file()
    again = run_cli("--lake", "lake", "export", run_id, "--out", "exports/mix", cwd=root)
    assert again.returncode == 2 and "--force" in again.stderr
    forced = run_cli("--lake", "lake", "export", run_id, "--out", "exports/mix", "--force", cwd=root)
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in (root / "exports").iterdir()) == ["mix"]  # nothing left beside it
