"""Dask over the lake: a two-worker LocalCluster reads a partitioned table, writes partitions back as
shards, and runs the Dask variants of curation stages with the in-memory stages' results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from assay_testing import stage
from flows_testlake import POOL, TARGETS, TRAIN, add_pool, make_lake

from flows.registry import build_stage
from flows.stages import run_stage
from storage import UserError
from storage.dask_io import dask_address, read_table, table_files, use_dask, write_partitions
from storage.stage import StageContext


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        Client(lc) as client,
    ):
        client.wait_for_workers(2)
        yield lc.scheduler_address


def frame_of(lake, table: str, run_id: str) -> pd.DataFrame:
    frame = lake.table(table, "run_id = ?", [run_id]).drop(columns=["run_id"])
    return frame.sort_values(list(frame.columns[:3])).reset_index(drop=True)


def test_read_table_sees_complete_runs_one_partition_per_file(tmp_path: Path, cluster: str) -> None:
    lake, scores_run = make_lake(tmp_path / "lake", shards=4)
    with lake.run("attribute", "unfinished") as run:  # an open run: its files are not part of the table
        run.write("scores", pd.DataFrame({"train_id": ["z"], "target_id": ["z"], "score": [1.0]}), shard=0)
        frame = read_table(lake, "scores")
        assert frame.npartitions == 4 and len(table_files(lake, "scores")) == 4
        got = frame.compute().sort_values(["train_id", "target_id"]).reset_index(drop=True)
        want = lake.table("scores").sort_values(["train_id", "target_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        got[want.columns].astype({"run_id": object, "train_id": object, "target_id": object}),
        want.astype({"run_id": object, "train_id": object, "target_id": object}),
        check_dtype=False,
    )
    assert set(got["run_id"]) == {scores_run}
    with pytest.raises(UserError, match="no column 'nope'"):
        read_table(lake, "scores", columns=["nope"])


def test_partitions_are_written_as_shards_by_the_workers(tmp_path: Path, cluster: str) -> None:
    from distributed import Client

    lake, scores_run = make_lake(tmp_path / "lake", shards=3)
    with Client(cluster):
        scores = read_table(lake, "scores", [scores_run], columns=["train_id", "target_id", "score"])
        doubled = scores.assign(score=scores["score"] * 2)
        with lake.run("curate", "doubled", inputs={"scores": scores_run}) as run:
            paths = write_partitions(run, "scores", doubled)
    assert len(paths) == 3 and all(Path(p).name.startswith("shard-") for p in paths)
    got = frame_of(lake, "scores", run.run_id)
    want = frame_of(lake, "scores", scores_run).assign(score=lambda f: f["score"] * 2)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


@pytest.mark.parametrize("stage_name", ["influence_reweight", "mix"])
def test_dask_variant_matches_the_in_memory_stage(tmp_path: Path, cluster: str, stage_name: str) -> None:
    memory_lake, _ = make_lake(tmp_path / "memory", shards=4)
    dask_lake, _ = make_lake(tmp_path / "dask", shards=4)
    params = {
        "influence_reweight": {"scores_run": "latest", "temperature": 0.5},
        "mix": {"by": "domain", "schedule": "cooldown", "batch_size": 4, "weights_from": "none"},
    }[stage_name]
    ctx = StageContext(memory_lake, [TRAIN, TARGETS], quiet=True)
    dask_ctx = StageContext(dask_lake, [TRAIN, TARGETS], dask=cluster)
    chosen = build_stage(stage_name, params)
    assert chosen.executor_for(dask_ctx, chosen.plan(dask_ctx)).__name__ == "execute_dask"
    want = stage(stage_name)(ctx, params)
    got = run_stage(str(dask_lake.root), stage_name, params, [TRAIN, TARGETS], {}, dask=cluster, quiet=True)
    assert got == want  # the same run: same parameters and inputs
    for table in ("weights", "labels", "metrics", "mixture_schedule", "mixture_draws"):
        a, b = frame_of(memory_lake, table, want), frame_of(dask_lake, table, got)
        assert len(a) == len(b), table
        pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9)
    assert len(frame_of(dask_lake, "weights", got)) == 72


def test_mix_variant_builds_on_earlier_weights_like_the_stage(tmp_path: Path, cluster: str) -> None:
    results = {}
    for name in ("memory", "dask"):
        lake, _ = make_lake(tmp_path / name, shards=2)
        add_pool(lake)
        first = stage("difficulty_flip")(
            StageContext(lake, [TRAIN], quiet=True), {"fraction": 0.5, "pool": POOL}
        )
        params = {"by": "label:difficulty_band", "batch_size": 4, "weights_from": "auto"}
        previous = {"difficulty_flip": first}
        if name == "memory":
            run_id = stage("mix")(StageContext(lake, [TRAIN], previous, quiet=True), params)
        else:
            run_id = run_stage(str(lake.root), "mix", params, [TRAIN], previous, dask=cluster, quiet=True)
        results[name] = (run_id, frame_of(lake, "weights", run_id))
    assert results["memory"][0] == results["dask"][0]
    pd.testing.assert_frame_equal(results["memory"][1], results["dask"][1], check_dtype=False)


def test_when_dask_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASSAY_DASK_ADDRESS", raising=False)
    monkeypatch.delenv("ASSAY_DASK", raising=False)
    monkeypatch.setenv("ASSAY_MEMORY_BUDGET", "1GB")
    assert not use_dask(1000)
    assert use_dask(1 << 30)  # larger than memory
    assert use_dask(1000, "tcp://127.0.0.1:8786") and use_dask(1000, "local")
    monkeypatch.setenv("ASSAY_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert use_dask(1000) and dask_address() == "tcp://10.0.0.5:8786"
    monkeypatch.setenv("ASSAY_DASK", "0")
    assert not use_dask(1 << 40)
    with pytest.raises(UserError, match="expected a scheduler address"):
        dask_address("not an address")


@pytest.mark.slow
def test_attribution_shards_fan_out_over_workers_with_the_one_process_result(
    tmp_path: Path, cluster: str
) -> None:
    from flows_testlake import records, tiny_model

    from attribution.stages import run_attribution
    from storage import Lake
    from storage.ingest import ColumnMap, ingest_records, normalize

    train, targets = records(12, "t", 0), records(4, "q", 1)
    model = tiny_model(tmp_path / "model", [f"{r['prompt']}\n{r['response']}" for r in train])
    lakes = []
    for name in ("one", "sharded"):
        lake = Lake(tmp_path / name)
        ingest_records(lake, normalize(train, "tr", ColumnMap(), "t"), "tr", ColumnMap(), "t")
        ingest_records(lake, normalize(targets, "tg", ColumnMap(), "q"), "tg", ColumnMap(), "q")
        lakes.append(lake)
    want = run_attribution(lakes[0], model, "tr", "tg", "ekfac", shard_size=4)
    got = run_attribution(lakes[1], model, "tr", "tg", "ekfac", shard_size=4, dask=cluster, workers=2)
    assert got == want
    assert sorted(p.name for p in lakes[1].run_dir("scores", got).glob("*")) == [
        f"shard-{k:06d}.parquet" for k in range(3)
    ]
    pd.testing.assert_frame_equal(
        frame_of(lakes[0], "scores", want), frame_of(lakes[1], "scores", got), check_dtype=False, rtol=1e-5
    )
    assert not (lakes[1].root / ".work" / "attribution" / got).exists()  # the combine step cleaned up
