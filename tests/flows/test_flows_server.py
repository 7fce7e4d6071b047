"""End to end on a real local Prefect server, driven through its HTTP API: `scripts/orchestrator up` (server
with the UI, work pool with a concurrency limit, deployments, worker) prints the UI address and sets the UI's
API URL to the server it started; a run of attribute/nightly triggers curate/nightly when it completes; flow
runs log stage names and progress and publish a `report-<run>` artifact per run; `pipeline/demo` runs the
whole chain; deploying twice updates in place; `down` stops every process it started.

Waits are decided by flow-run states read from the API; the deadlines are safety nets for a hung server,
generous enough for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from assay_testing import REPO, run_cli
from flows_testlake import records, tiny_model

from storage import Lake
from storage.ingest import ColumnMap, ingest_records, normalize

pytestmark = pytest.mark.slow

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_DEADLINE_S = 1800  # per flow run: only a hung server or worker gets near it


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(")")[-1].split()[0] == "Z")


class Server:
    """The orchestrator's server, through its REST API."""

    def __init__(self, api: str, worker_log: Path):
        self.api, self.worker_log = api, worker_log
        self.http = httpx.Client(base_url=api, timeout=60)

    def post(self, path: str, body: dict | None = None) -> object:
        answer = self.http.post(path, json=body or {})
        answer.raise_for_status()
        return answer.json()

    def deployment(self, flow: str, name: str) -> dict:
        answer = self.http.get(f"/deployments/name/{flow}/{name}")
        answer.raise_for_status()
        return answer.json()

    def deployment_names(self) -> set[str]:
        flows = {f["id"]: f["name"] for f in self.post("/flows/filter")}
        return {f"{flows[d['flow_id']]}/{d['name']}" for d in self.post("/deployments/filter")}

    def runs_of(self, deployment_id: str) -> list[dict]:
        body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
        return self.post("/flow_runs/filter", body)

    def wait_for_run(self, run_id: str) -> dict:
        """The flow run once it reaches a terminal state (decided by its state; the deadline is a net)."""
        deadline = time.monotonic() + RUN_DEADLINE_S
        while time.monotonic() < deadline:
            run = self.http.get(f"/flow_runs/{run_id}").json()
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(2)
        raise AssertionError(f"flow run {run_id} not finished after {RUN_DEADLINE_S} s; {self.tail()}")

    def wait_for_triggered_run(self, deployment_id: str, after: str) -> dict:
        """The first run of a deployment created after `after` (ISO time), once finished."""
        deadline = time.monotonic() + RUN_DEADLINE_S
        while time.monotonic() < deadline:
            runs = [r for r in self.runs_of(deployment_id) if r["created"] > after]
            if runs:
                return self.wait_for_run(runs[0]["id"])
            time.sleep(2)
        raise AssertionError(f"no run of deployment {deployment_id} was triggered; {self.tail()}")

    def logs(self, run_id: str) -> list[str]:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
        return [entry["message"] for entry in self.post("/logs/filter", body)]

    def artifact_keys(self, run_id: str) -> set[str]:
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        return {a["key"] for a in self.post("/artifacts/filter", body) if a.get("key")}

    def tail(self) -> str:
        return "worker log: " + (self.worker_log.read_text()[-4000:] if self.worker_log.exists() else "none")


def lake_with_demo_datasets(lake_dir: Path, tmp_path: Path) -> Path:
    lake = Lake(lake_dir)
    train, targets = records(24, "t", 0), records(6, "q", 1)
    ingest_records(lake, normalize(train, "demo_train", ColumnMap(), "t"), "demo_train", ColumnMap(), "t")
    ingest_records(
        lake, normalize(targets, "demo_targets", ColumnMap(), "q"), "demo_targets", ColumnMap(), "q"
    )
    return tiny_model(tmp_path / "model", [f"{r['prompt']}\n{r['response']}" for r in train])


def test_orchestrator_serves_the_ui_and_runs_a_triggered_nightly_curation(tmp_path: Path) -> None:
    state, lake_dir = tmp_path / ".assay", tmp_path / "lake"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "ASSAY_HOME": str(state),
        "ASSAY_LAKE": str(lake_dir),
        "ASSAY_POOL_CONCURRENCY": "2",
        "ASSAY_PYTHON": sys.executable,
        "PREFECT_UI_ENABLED": "true",
    }
    model = lake_with_demo_datasets(lake_dir, tmp_path)
    script = str(REPO / "scripts" / "orchestrator")

    def orchestrator(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [script, command], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=900
        )

    up = orchestrator("up")
    pids = {
        name: int((state / "orchestrator" / f"{name}.pid").read_text())
        for name in ("server", "worker")
        if (state / "orchestrator" / f"{name}.pid").exists()
    }
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert set(pids) == {"server", "worker"} and all(alive(p) for p in pids.values())
        api = (state / "orchestrator" / "api_url").read_text().strip()
        ui = api.removesuffix("/api")
        assert api.startswith("http://127.0.0.1:") and f"ui: {ui}" in up.stdout
        assert (state / "prefect" / "server.db").exists()  # the SQLite database is in the state dir
        server = Server(api, state / "orchestrator" / "worker.log")

        # The UI asks the server it was started with for its API, and that API lists the deployments.
        assert httpx.get(f"{ui}/ui-settings", timeout=60).json()["api_url"] == api
        assert httpx.get(f"{ui}/", timeout=60).status_code == 200
        names = server.deployment_names()
        assert {
            "pipeline/demo",
            "attribute/nightly",
            "curate/nightly",
            "ingest/default",
            "export/default",
        } <= names
        assert server.http.get("/work_pools/assay-process").json()["concurrency_limit"] == 2
        attribute_nightly = server.deployment("attribute", "nightly")
        curate_nightly = server.deployment("curate", "nightly")
        assert attribute_nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        assert not curate_nightly["schedules"]  # it follows the attribution by a trigger, not the clock
        automations = server.post("/automations/filter")
        assert any(
            a["trigger"].get("expect") == ["prefect.flow-run.Completed"]
            and {"prefect.resource.role": "flow", "prefect.resource.name": "attribute"}
            in a["trigger"]["match_related"]
            for a in automations
        ), automations
        assert "ingest/default" in names and "lake_root" not in json.dumps(
            server.deployment("ingest", "default")["parameter_openapi_schema"].get("required", [])
        )
        status = orchestrator("status")
        assert status.returncode == 0 and f"ui: {ui}" in status.stdout

        # Deploying again updates every deployment in place.
        demo_id = server.deployment("pipeline", "demo")["id"]
        run_env = {**env, "PREFECT_API_URL": api, "PREFECT_HOME": str(state / "prefect")}
        again = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
            cwd=REPO,
            env=run_env,
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert server.deployment("pipeline", "demo")["id"] == demo_id
        assert server.deployment_names() == names

        # A run of the nightly attribution; its completion triggers the nightly curation.
        started = server.post(
            f"/deployments/{attribute_nightly['id']}/create_flow_run",
            {"parameters": {"model_dir": str(model), "options": {"shard_size": 8}}},
        )
        attribution = server.wait_for_run(started["id"])
        assert attribution["state_type"] == "COMPLETED", (attribution["state"], server.tail())
        curation = server.wait_for_triggered_run(curate_nightly["id"], attribution["created"])
        assert curation["state_type"] == "COMPLETED", (curation["state"], server.tail())

        # Stage names and progress are in the runs' logs; every run it made has a report artifact.
        logs = server.logs(attribution["id"])
        assert any(m.startswith("stage attribute: starting on demo_train") for m in logs), logs
        assert any("attribute (ekfac, example): 3/3 shards (100%)" in m for m in logs), logs
        curation_logs = server.logs(curation["id"])
        assert any(m.startswith("stage mix: run ") for m in curation_logs), curation_logs
        lake = Lake(lake_dir)
        attribute_run = lake.query("SELECT run_id FROM runs WHERE kind = 'attribute'")["run_id"].tolist()
        mix_run = lake.query("SELECT run_id FROM runs WHERE method = 'mix'")["run_id"].tolist()
        assert len(attribute_run) == 1 and len(mix_run) == 1
        assert f"report-{attribute_run[0]}" in server.artifact_keys(attribution["id"])
        assert f"report-{mix_run[0]}" in server.artifact_keys(curation["id"])
        weights = run_cli(
            "--lake",
            str(lake_dir),
            "sql",
            f"SELECT count(*) AS n FROM weights WHERE run_id = '{mix_run[0]}'",
            "--format",
            "csv",
            cwd=tmp_path,
        )
        assert weights.stdout.split() == ["n", "24"]

        # The whole chain as one deployment: its attribution is the nightly one, reused.
        export = tmp_path / "exported"
        demo = server.post(
            f"/deployments/{demo_id}/create_flow_run",
            {
                "parameters": {
                    "model_dir": str(model),
                    "export_out": str(export),
                    "overrides": {"attribute.shard_size": 8},
                }
            },
        )
        finished = server.wait_for_run(demo["id"])
        assert finished["state_type"] == "COMPLETED", (finished["state"], server.tail())
        assert lake.query("SELECT count(*) AS n FROM runs WHERE kind = 'attribute'")["n"].iloc[0] == 1
        assert (export / "data" / "train.jsonl").exists()
    finally:
        down = orchestrator("down")
    assert down.returncode == 0, down.stderr
    assert not any(alive(p) for p in pids.values())
    status = orchestrator("status")
    assert status.returncode == 3 and "server: stopped" in status.stdout
