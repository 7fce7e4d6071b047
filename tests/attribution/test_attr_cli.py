"""`assay attribute` end to end on a tiny model, and its user errors (exit status 2, nothing written)."""

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from storage import Lake, UserError
from storage.ingest import ColumnMap, ingest_records, normalize

ROOT = Path(__file__).resolve().parents[2]


def _app():
    from flows import cli

    cli._register_command_modules()
    return cli.app


def _lake(tmp_path, records, targets):
    lake = Lake(tmp_path / "lake")
    for name, recs in (("train", records[:6]), ("targets", targets[:2])):
        rows = [{k: r[k] for k in ("example_id", "domain", "prompt", "response")} for r in recs]
        ingest_records(lake, normalize(rows, name, ColumnMap(), name), name, ColumnMap(), name)
    return lake


def test_attribute_token_level_writes_all_tables(tmp_path, trained_dir, records, targets):
    lake = _lake(tmp_path, records, targets)
    result = CliRunner().invoke(
        _app(),
        [
            "--quiet",
            "attribute",
            "--model",
            trained_dir,
            "--train",
            "train",
            "--targets",
            "targets",
            "--method",
            "ekfac",
            "--level",
            "token",
            "--lake",
            str(lake.root),
            "--max-length",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "12 scores" in result.output
    tokens = lake.query("SELECT token, sum(score) AS s FROM token_scores GROUP BY token ORDER BY s DESC")
    assert len(tokens) > 5
    assert lake.query("SELECT count(*) AS n FROM segment_scores")["n"][0] > 0


def test_attribute_user_errors(tmp_path, trained_dir, records, targets):
    lake = _lake(tmp_path, records, targets)
    before = len(lake.runs())
    base = [
        "attribute",
        "--model",
        trained_dir,
        "--train",
        "train",
        "--targets",
        "targets",
        "--lake",
        str(lake.root),
    ]
    for extra, message in (
        (["--method", "magic"], "--method"),
        (["--proj-dim", "8"], "--proj-dim"),
        (["--modules", "nothing_matches"], "--modules"),
        (["--segmenter", "("], "--segmenter"),
        (["--train", "nope"], "unknown dataset"),
    ):
        result = CliRunner().invoke(_app(), base + extra)
        assert isinstance(result.exception, UserError), (extra, result.output, result.exception)
        assert message in str(result.exception)
    assert len(lake.runs()) == before


def test_cli_exit_status_two_on_user_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "attribute",
            "--model",
            str(tmp_path),
            "--train",
            "a",
            "--targets",
            "b",
            "--lake",
            str(tmp_path / "none"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
