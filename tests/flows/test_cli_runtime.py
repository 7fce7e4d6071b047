"""How the CLI runs jobs: plain calls by default (Prefect never imported, no Prefect home), Prefect when the
user has a server or asks, the same result either way; a user's error is one line under Prefect too; help
is whole at any width; every stage has its command; one --device option."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from assay_testing import REPO, run_cli, run_python

from flows.runtime import UserErrorRecords, use_prefect
from storage import Lake, UserError

# Runs the CLI in this process, then says whether Prefect was imported on the way.
PROBE = """
import sys
from flows.cli import run
code = run(sys.argv[1:])
print("PREFECT_IMPORTED", "prefect" in sys.modules)
sys.exit(code)
"""


def probe(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ASSAY_"))}
    full_env.update(ASSAY_HOME=str(cwd / ".assay"), PYTHONPATH=str(REPO), **(env or {}))
    return run_python(PROBE, *args, cwd=cwd, env=full_env, timeout=600)


@pytest.fixture
def one_row(tmp_path: Path) -> Path:
    row = {"prompt": "What is 2 + 2?", "response": "2 + 2 = 4", "answer": "4", "domain": "math"}
    (tmp_path / "one.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path


def test_default_ingest_runs_plain_without_importing_prefect(one_row: Path) -> None:
    done = probe("ingest", "one.jsonl", "--dataset", "tiny", cwd=one_row)
    assert done.returncode == 0, done.stderr
    assert "PREFECT_IMPORTED False" in done.stdout
    assert done.stderr == ""  # no "Failed to create the Prefect home" warning, nothing else either
    assert not (one_row / ".assay" / "prefect").exists()
    assert len(Lake(one_row / "lake").examples("tiny")) == 1


def test_no_flow_module_imports_prefect_until_a_flow_runs_under_it(tmp_path: Path) -> None:
    modules = sorted(p.stem for p in (REPO / "flows").glob("*.py") if p.stem not in ("__init__", "cli"))
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module('flows.' + name)\n"
        "from flows.curate import curate_flow\n"
        "print(type(curate_flow).__name__, 'prefect' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ASSAY_"))}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["LazyFlow", "False"]
    assert {"ingest", "curate", "stages", "attribute", "demo"} <= set(modules)


def test_prefect_when_the_user_has_a_server_or_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASSAY_PREFECT", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert not use_prefect()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert use_prefect()
    monkeypatch.setenv("ASSAY_PREFECT", "0")  # --no-prefect wins over a server
    assert not use_prefect()
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("ASSAY_PREFECT", "1")  # --prefect without a server: embedded
    assert use_prefect()


def test_a_user_error_in_a_run_log_is_one_line_without_a_traceback() -> None:
    try:
        raise UserError("--dataset 'bad name!': use letters")
    except UserError:
        record = logging.LogRecord(
            "prefect.flow_runs",
            logging.ERROR,
            __file__,
            1,
            "Encountered exception: %r",
            ("x",),
            sys.exc_info(),
        )
    assert UserErrorRecords().filter(record)
    formatted = logging.Formatter().format(record)
    assert formatted == "user error: --dataset 'bad name!': use letters"
    try:
        raise ValueError("a bug")
    except ValueError:
        bug = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    UserErrorRecords().filter(bug)
    assert "Traceback" in logging.Formatter().format(bug)  # a bug keeps its traceback


@pytest.mark.slow
def test_prefect_on_asks_runs_a_flow_and_a_user_error_stays_one_line(one_row: Path) -> None:
    done = probe("--prefect", "ingest", "one.jsonl", "--dataset", "tiny", cwd=one_row)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PREFECT_IMPORTED True" in done.stdout and "tiny" in done.stdout
    assert (one_row / ".assay" / "prefect").is_dir()
    bad = probe("--prefect", "ingest", "one.jsonl", "--dataset", "bad name!", cwd=one_row)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.count("bad name!") <= 2  # our line, and at most one line in Prefect's log
    assert "error: --dataset 'bad name!'" in bad.stderr


def test_help_is_whole_at_any_width_outside_a_terminal(tmp_path: Path) -> None:
    for columns in ("40", "80", "200"):
        top = run_cli("--help", cwd=tmp_path, env={"COLUMNS": columns})
        assert top.returncode == 0
        shown = top.stdout.replace("[ARGS]...", "").replace("runs, ...", "")  # the text's own dots
        assert "…" not in shown and "..." not in shown
        flat = " ".join(top.stdout.split())
        # every command with its whole first line, and the short names of the generated stage commands
        assert "influence-reweight, reweight Infra's influence reweighting: weight examples by their" in flat
        assert "difficulty-flip, flip" in flat and "\n  mix " in top.stdout
        attribute = run_cli("attribute", "--help", cwd=tmp_path, env={"COLUMNS": columns})
        flat = " ".join(attribute.stdout.split())
        assert "-d, --train, --dataset" in flat and "the training dataset whose examples are scored" in flat


@pytest.mark.parametrize("command", ["mix", "reweight", "flip", "influence-reweight", "difficulty-flip"])
def test_every_stage_short_command_exists(tmp_path: Path, command: str) -> None:
    done = run_cli(command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--dataset" in done.stdout and "--device" in done.stdout


def test_device_is_one_option_with_one_default(tmp_path: Path) -> None:
    helps = {c: run_cli(c, "--help", cwd=tmp_path).stdout for c in ("attribute", "unlearn", "ppp", "curate")}
    for command, text in helps.items():
        assert "(default: cuda when present, else cpu)" in " ".join(text.split()), command
    for command in ("attribute", "curate"):
        args = ["recipes/demo.yaml"] if command == "curate" else ["-d", "x"]
        bad = run_cli(command, *args, "--device", "gpu", cwd=tmp_path)
        assert bad.returncode == 2 and bad.stderr.strip() == (
            "error: --device 'gpu': expected cpu, cuda or cuda:N"
        )
