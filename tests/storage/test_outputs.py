"""The output-path policy: no `--out` removes or replaces anything assay did not write, and a refusal
writes nothing (the lake byte-for-byte unchanged). Checked on `assay sql --out` and, for folder
outputs, on the policy itself."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pandas as pd
import pytest
from assay_testing import run_cli, tree_digest

from storage import Lake, UserError
from storage.outputs import MARKER, clean_leftovers, prepare_output, replace_atomically, staged_output


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: a lake with one run, the state folder, and some user files."""
    lake = Lake(tmp_path / "lake")
    with lake.run("attribute", "outputs") as run:
        run.write("scores", pd.DataFrame({"train_id": ["a"], "target_id": ["q"], "score": [1.0]}))
    (tmp_path / ".assay").mkdir()
    (tmp_path / "notes.csv").write_text("mine\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("do not lose\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.csv").symlink_to(tmp_path / "notes.csv")
    (tmp_path / "link-dir").symlink_to(tmp_path / "mine")
    return tmp_path


def protected(project: Path) -> list[Path]:
    return [project / "lake", project / ".assay"]


SQL_REFUSALS = {
    ".": "holds the lake",
    "..": "holds the lake",
    "lake": "holds the lake",
    "lake/scores.csv": "inside the lake",
    ".assay/x.csv": "inside the lake or the project's state folder",
    "fifo": "special file",
    "/dev/null": "special file",
    "link.csv": "symlink",
    "link-dir": "symlink",
    "notes.csv": "the file exists; pass --force",
    "mine": "is a folder",
    "~": "home folder",
    "/": "holds the lake|/ or a home folder",
}


@pytest.mark.parametrize("target", sorted(SQL_REFUSALS))
@pytest.mark.parametrize("force", [False, True])
def test_sql_out_refusals_exit_2_and_write_nothing(project: Path, target: str, force: bool) -> None:
    if force and target == "notes.csv":
        pytest.skip("--force replaces a regular file: that is what it is for")
    before = {p: tree_digest(project / p) for p in ("lake", ".assay", "mine")}
    notes = (project / "notes.csv").read_text()
    args = ["sql", "SELECT * FROM scores", "--out", target, "--format", "csv"] + (
        ["--force"] if force else []
    )
    result = run_cli(*args, cwd=project)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(SQL_REFUSALS[target], errors[0]), result.stderr
    assert "Traceback" not in result.stderr
    assert {p: tree_digest(project / p) for p in before} == before
    assert (project / "notes.csv").read_text() == notes and (project / "link.csv").is_symlink()
    assert (project / "fifo").exists() and not (project / "fifo").is_file()
    assert not list(project.glob(".*.tmp-*"))


def test_sql_out_writes_through_a_new_folder_and_replaces_a_file_with_force(project: Path) -> None:
    first = run_cli("sql", "SELECT score FROM scores", "--out", "results/deep/s.csv", cwd=project)
    assert first.returncode == 0, first.stderr
    assert (project / "results/deep/s.csv").read_text() == "score\n1.0\n"
    again = run_cli(
        "sql", "SELECT score + 1 AS score FROM scores", "--out", "results/deep/s.csv", "--force", cwd=project
    )
    assert again.returncode == 0 and (project / "results/deep/s.csv").read_text() == "score\n2.0\n"


def test_sql_out_of_a_refused_query_creates_no_folder(project: Path) -> None:
    result = run_cli("sql", "COPY scores TO 'x.csv'", "--out", "new/deep/q.csv", cwd=project)
    assert result.returncode == 2 and not (project / "new").exists()


# ------------------------------------------------------------------------------- folders
FOLDER_REFUSALS = {
    ".": "holds the lake",
    "..": "holds the lake",
    "lake": "holds the lake",
    "lake/export": "inside the lake",
    ".assay": "holds the lake or the project's state folder",
    "fifo": "special file",
    "link-dir": "symlink",
    "notes.csv": "is a file, not a folder",
    "mine": "not empty; pass --force",
}


@pytest.mark.parametrize("target", sorted(FOLDER_REFUSALS))
def test_folder_outputs_are_refused_without_force(project: Path, target: str, monkeypatch) -> None:
    monkeypatch.chdir(project)
    before = tree_digest(project / "lake")
    with pytest.raises(UserError, match=FOLDER_REFUSALS[target]):
        prepare_output(target, kind="folder", force=False, protected=protected(project))
    assert tree_digest(project / "lake") == before


@pytest.mark.parametrize("target", [".", "..", "lake", "mine", "link-dir", "fifo", "notes.csv", "/", "~"])
def test_force_replaces_only_folders_assay_wrote(project: Path, target: str, monkeypatch) -> None:
    monkeypatch.chdir(project)
    before = tree_digest(project)
    with pytest.raises(UserError):
        prepare_output(target, kind="folder", force=True, protected=protected(project))
    assert tree_digest(project) == before


def test_a_folder_assay_wrote_is_replaced_whole(project: Path, monkeypatch) -> None:
    monkeypatch.chdir(project)
    dest = prepare_output("exports/run1", kind="folder", force=False, protected=protected(project))
    assert not (project / "exports").exists()  # checking creates nothing
    with staged_output(dest, kind="folder", writer="assay export") as tmp:
        (tmp / "train.jsonl").write_text("1\n")
    assert json.loads((dest / MARKER).read_text())["writer"] == "assay export"
    with pytest.raises(UserError, match="not empty; pass --force"):
        prepare_output("exports/run1", kind="folder", force=False, protected=protected(project))
    again = prepare_output("exports/run1", kind="folder", force=True, protected=protected(project))
    with staged_output(again, kind="folder", writer="assay export") as tmp:
        (tmp / "train.jsonl").write_text("2\n")
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "train.jsonl"]
    assert (dest / "train.jsonl").read_text() == "2\n"
    assert sorted(p.name for p in (project / "exports").iterdir()) == ["run1"]  # no leftovers
    (dest / MARKER).unlink()  # a folder without the marker is the user's
    with pytest.raises(UserError, match="assay did not write that folder"):
        prepare_output("exports/run1", kind="folder", force=True, protected=protected(project))


def test_a_failed_write_leaves_the_old_output(project: Path, monkeypatch) -> None:
    monkeypatch.chdir(project)
    dest = prepare_output("out", kind="folder", force=False, protected=protected(project))
    with staged_output(dest, kind="folder", writer="assay export") as tmp:
        (tmp / "a").write_text("old\n")
    with pytest.raises(RuntimeError), staged_output(dest, kind="folder", writer="assay export") as tmp:
        (tmp / "a").write_text("new\n")
        raise RuntimeError("disk full")
    assert (dest / "a").read_text() == "old\n" and [p.name for p in project.glob(".out.*")] == []


def test_leftovers_of_killed_writes_are_cleaned_and_an_old_copy_put_back(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above pid_max on common kernels: no such process
    host = socket.gethostname()
    dest = tmp_path / "exp"
    (tmp_path / f".exp.tmp-{host}-{dead}-aaaa").mkdir()
    old = tmp_path / f".exp.old-{host}-{dead}-bbbb"
    old.mkdir()
    (old / "train.jsonl").write_text("kept\n")
    (tmp_path / f".exp.tmp-otherhost-{dead}-cccc").mkdir()  # another machine's writer: not ours to judge
    (tmp_path / f".exp.tmp-{host}-{os.getpid()}-dddd").mkdir()  # a live writer: kept
    clean_leftovers(dest)
    assert (dest / "train.jsonl").read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["exp", f".exp.tmp-otherhost-{dead}-cccc", f".exp.tmp-{host}-{os.getpid()}-dddd"]
    )


def test_replace_refuses_a_destination_that_became_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "dest").symlink_to(tmp_path / "target")
    tmp = tmp_path / ".dest.tmp"
    tmp.write_text("x")
    with pytest.raises(UserError, match="became a symlink"):
        replace_atomically(tmp, tmp_path / "dest")
    assert (tmp_path / "dest").is_symlink()


def test_symlinked_parent_folders_are_checked_where_they_lead(project: Path, monkeypatch) -> None:
    """A parent that is a symlink into the lake does not smuggle an output into it."""
    monkeypatch.chdir(project)
    (project / "sneaky").symlink_to(project / "lake")
    with pytest.raises(UserError, match="inside the lake"):
        prepare_output("sneaky/scores", kind="folder", force=True, protected=protected(project))
    (project / "elsewhere").symlink_to(project / "mine")
    assert (
        prepare_output("elsewhere/new", kind="folder", protected=protected(project))
        == project / "mine" / "new"
    )
