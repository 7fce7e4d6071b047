"""End to end on a real local Prefect server: `scripts/orchestrator up` (server, work pool, deployments,
worker), schedules visible, deploying twice updates in place, `prefect deployment run 'pipeline/demo'
--watch` completes, its outputs answer `assay sql`, and `down` stops every process it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from assay_testing import REPO, run_cli
from flows_testlake import records, tiny_model

from storage import Lake
from storage.ingest import ColumnMap, ingest_records, normalize

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(")")[-1].split()[0] == "Z")


def test_orchestrator_runs_the_demo_deployment(tmp_path: Path) -> None:
    state, lake_dir = tmp_path / ".assay", tmp_path / "lake"
    env = {**os.environ, "ASSAY_HOME": str(state), "ASSAY_LAKE": str(lake_dir), "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    lake = Lake(lake_dir)
    train, targets = records(24, "t", 0), records(6, "q", 1)
    ingest_records(lake, normalize(train, "demo_train", ColumnMap(), "t"), "demo_train", ColumnMap(), "t")
    ingest_records(
        lake, normalize(targets, "demo_targets", ColumnMap(), "q"), "demo_targets", ColumnMap(), "q"
    )
    model = tiny_model(tmp_path / "model", [f"{r['prompt']}\n{r['response']}" for r in train])
    script = str(REPO / "scripts" / "orchestrator")

    def prefect(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            cwd=REPO,
            env=run_env,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    up = subprocess.run(
        [script, "up"], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=300
    )
    pids = {
        name: int((state / "orchestrator" / f"{name}.pid").read_text())
        for name in ("server", "worker")
        if (state / "orchestrator" / f"{name}.pid").exists()
    }
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert set(pids) == {"server", "worker"} and all(alive(p) for p in pids.values())
        url = (state / "orchestrator" / "api_url").read_text().strip()
        assert url.startswith("http://127.0.0.1:")
        assert (state / "prefect" / "server.db").exists()  # the SQLite database is in the state dir
        run_env = {**env, "PREFECT_API_URL": url, "PREFECT_HOME": str(state / "prefect")}

        listed = prefect("deployment", "ls")
        for name in ("pipeline/demo", "attribute/nightly", "curate/nightly", "export/default"):
            assert name in listed.stdout, listed.stdout
        nightly = prefect("deployment", "inspect", "attribute/nightly")
        assert "0 2 * * *" in nightly.stdout and "UTC" in nightly.stdout
        assert "30 3 * * *" in prefect("deployment", "inspect", "curate/nightly").stdout
        before = prefect("deployment", "inspect", "pipeline/demo").stdout
        again = prefect("--no-prompt", "deploy", "--all")  # a second deploy updates in place
        assert again.returncode == 0, again.stdout + again.stderr
        after = prefect("deployment", "inspect", "pipeline/demo").stdout
        ident = next(line for line in before.splitlines() if "'id'" in line)
        assert ident in after
        assert prefect("deployment", "ls").stdout.count("pipeline/") == 2

        export = tmp_path / "exported"
        run = prefect(
            "deployment",
            "run",
            "pipeline/demo",
            "--watch",
            "--param",
            f"model_dir={model}",
            "--param",
            f"export_out={export}",
            "--param",
            'attribution_options={"shard_size": 8}',
            timeout=420,
        )
        assert run.returncode == 0, (
            run.stdout[-3000:] + (state / "orchestrator" / "worker.log").read_text()[-5000:]
        )
        assert "Completed" in run.stdout

        answer = run_cli(
            "--lake",
            str(lake_dir),
            "sql",
            "SELECT kind, method, status FROM runs "
            "WHERE kind IN ('attribute', 'curate') ORDER BY kind, method",
            "--format",
            "json",
            cwd=tmp_path,
        )
        rows = [json.loads(line) for line in answer.stdout.splitlines()]
        assert {(r["kind"], r["method"]) for r in rows} >= {
            ("attribute", "ekfac"),
            ("curate", "mix"),
            ("curate", "influence_reweight"),
        }
        assert all(r["status"] == "complete" for r in rows)
        weights = run_cli(
            "--lake",
            str(lake_dir),
            "sql",
            "SELECT count(*) AS n FROM weights w JOIN runs r USING (run_id) WHERE r.method = 'mix'",
            "--format",
            "csv",
            cwd=tmp_path,
        )
        assert weights.stdout.split() == ["n", "24"]
        assert (export / "data" / "train.jsonl").exists()
    finally:
        down = subprocess.run(
            [script, "down"], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert not any(alive(p) for p in pids.values())
    status = subprocess.run(
        [script, "status"], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 3 and "server: stopped" in status.stdout
