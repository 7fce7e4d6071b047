"""Flows under Prefect's test harness: curation as tasks with artifacts, retries of transient errors
only, failure mid-pipeline (run failed, nothing partial visible, the rerun resumes), cached exports."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from flows_testlake import TRAIN, make_lake, recipe
from prefect.testing.utilities import prefect_test_harness

from flows.curate import curate_flow
from flows.export import export_step
from flows.tasks import is_transient
from storage import Lake, UserError
from storage.lake import Run
from storage.params import Params
from storage.stage import STAGES, RunSpec, Stage, StageContext


@pytest.fixture(scope="module", autouse=True)
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


class Flaky:
    """The state of a test stage that writes shard 0, then (while `fail` is set) raises `fail` before
    shard 1."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.fail_times = 0
        self.computed: list[int] = []
        self.attempts = 0


@dataclass
class FlakyParams(Params):
    """No parameters."""


def flaky_stage(state: Flaky) -> type[Stage]:
    class FlakyStage(Stage):
        """A test stage that fails on demand."""

        name = "flaky_test"
        Params = FlakyParams

        def plan(self, ctx: StageContext) -> RunSpec:
            state.attempts += 1
            return RunSpec("curate", "flaky", {}, {"previous": ctx.previous})

        def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
            for shard in (0, 1):
                if run.has_shard("labels", shard):
                    continue
                if shard == 1 and state.fail is not None and state.fail_times != 0:
                    state.fail_times -= 1
                    raise state.fail
                state.computed.append(shard)
                frame = pd.DataFrame(
                    {"dataset": TRAIN, "example_id": [f"x{shard}"], "name": "flaky", "value": [float(shard)]}
                )
                run.write("labels", frame, shard=shard)

    return FlakyStage


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    state = Flaky()
    flaky_stage(state)
    yield state
    STAGES.pop("flaky_test", None)


def flaky_recipe() -> dict:
    doc = recipe()
    doc["stages"].insert(1, {"stage": "flaky_test"})
    return doc


def test_curate_flow_runs_stages_as_tasks_and_publishes_a_summary(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    lake, _ = make_lake(tmp_path / "lake")
    result = curate_flow(recipe(), lake_root=str(lake.root), quiet=True)
    assert list(result["runs"]) == ["influence_reweight", "mix"]
    assert all(lake.run_record(r)["status"] == "complete" for r in result["runs"].values())
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["curate-tiny"]))
        )
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["curate-tiny-runs"]))
        )
    assert found and tables
    markdown = found[0].data
    assert result["runs"]["mix"] in markdown and "assay --lake" in markdown
    assert f"SELECT * FROM weights WHERE run_id = '{result['runs']['mix']}'" in markdown


def test_a_failure_mid_pipeline_is_recorded_hides_partial_rows_and_resumes(
    tmp_path: Path, flaky: Flaky
) -> None:
    lake, _ = make_lake(tmp_path / "lake")
    flaky.fail, flaky.fail_times = RuntimeError("boom"), 1
    with pytest.raises(RuntimeError, match="boom"):
        curate_flow(flaky_recipe(), lake_root=str(lake.root), quiet=True)
    records = {r["method"]: r for r in lake.runs() if r["kind"] == "curate"}
    assert records["influence_reweight"]["status"] == "complete"
    assert records["flaky"]["status"] == "failed" and "boom" in records["flaky"]["error"]
    assert "mix" not in records  # nothing after the failed stage ran
    flaky_run = records["flaky"]["run_id"]
    assert lake.run_dir("labels", flaky_run).is_dir()  # shard 0 is on disk ...
    assert lake.table("labels", "run_id = ?", [flaky_run]).empty  # ... but no view shows it
    assert flaky.attempts == 1  # a bug is not retried

    result = curate_flow(flaky_recipe(), lake_root=str(lake.root), quiet=True)
    assert result["runs"]["flaky_test"] == flaky_run  # the same run, resumed
    assert flaky.computed == [0, 1]  # shard 0 was not computed again
    assert lake.run_record(flaky_run)["status"] == "complete"
    assert sorted(lake.table("labels", "run_id = ?", [flaky_run])["example_id"]) == ["x0", "x1"]
    curate_runs = [r for r in lake.runs() if r["kind"] == "curate"]
    assert len(curate_runs) == 3  # influence_reweight was reused, not redone


def test_transient_errors_are_retried_and_user_errors_are_not(tmp_path: Path, flaky: Flaky) -> None:
    lake, _ = make_lake(tmp_path / "lake")
    flaky.fail, flaky.fail_times = OSError(errno.EIO, "flaky disk"), 1
    result = curate_flow(flaky_recipe(), lake_root=str(lake.root), quiet=True)
    assert flaky.attempts == 2 and lake.run_record(result["runs"]["flaky_test"])["status"] == "complete"

    lake2, _ = make_lake(tmp_path / "lake2")
    flaky.attempts, flaky.fail, flaky.fail_times = 0, UserError("bad option"), 3
    with pytest.raises(UserError, match="bad option"):
        curate_flow(flaky_recipe(), lake_root=str(lake2.root), quiet=True)
    assert flaky.attempts == 1


def test_transient_classification() -> None:
    assert is_transient(OSError(errno.EIO, "io")) and is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError("x")) and not is_transient(PermissionError())
    assert not is_transient(UserError("x")) and not is_transient(ValueError("x"))


def test_export_is_cached_while_the_folder_holds_it(tmp_path: Path) -> None:
    from prefect import flow

    lake, _ = make_lake(tmp_path / "lake")
    result = curate_flow(recipe(), lake_root=str(lake.root), quiet=True)
    out = tmp_path / "export"

    @flow
    def export_twice(run_id: str) -> list[dict]:
        first = export_step(str(lake.root), run_id, str(out))
        (out / "data" / "train.jsonl").write_text("sentinel")  # a cache hit leaves the folder alone
        second = export_step(str(lake.root), run_id, str(out))
        shutil.rmtree(out)  # a cached result that no longer holds is recomputed
        third = export_step(str(lake.root), run_id, str(out))
        return [first, second, third]

    first, second, third = export_twice(result["runs"]["mix"])
    assert first == second == third and first["rows"] > 0
    assert (out / "data" / "train.jsonl").read_text().count("\n") == first["rows"]
    assert Lake(lake.root).run_record(result["runs"]["mix"])["status"] == "complete"
