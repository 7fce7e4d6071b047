"""The lake stage: rows, run registration, and resume after the process is killed mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from storage import Lake, UserError
from storage.ingest import ColumnMap, ingest_records, normalize

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import sys, time, torch
torch.set_num_threads(1)
from storage import Lake
import attribution.stages as stage
import attribution.engine as engine
delay = float(sys.argv[3])
if delay:  # slow each shard down so the parent can kill us between shards
    original = engine.shard_frames
    def slow(*a, **k):
        time.sleep(delay)
        return original(*a, **k)
    engine.shard_frames = slow
print(stage.run_attribution(Lake(sys.argv[1]), sys.argv[2], "train", "targets", "ekfac", "token",
                            shard_size=2, max_length=64), flush=True)
"""


def _ingest(lake, records, name):
    rows = [{k: r[k] for k in ("example_id", "domain", "difficulty", "prompt", "response")} for r in records]
    ingest_records(lake, normalize(rows, name, ColumnMap(), name), name, ColumnMap(), name)


def _lake(tmp_path, name, records, targets):
    lake = Lake(tmp_path / name)
    _ingest(lake, records[:10], "train")
    _ingest(lake, targets[:3], "targets")
    return lake


def _start(lake, model_dir, delay):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", RUN, str(lake.root), model_dir, str(delay)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(lake, table, run_id):
    frame = lake.table(table, where=f"run_id = '{run_id}'").drop(columns=["run_id"])
    return frame.sort_values(list(frame.columns[:-1])).reset_index(drop=True)


@pytest.mark.slow
def test_killed_run_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path, trained_dir, records, targets):
    import torch

    from attribution.stages import run_attribution

    torch.set_num_threads(1)  # as in the subprocesses: same float summation order, same bits
    whole = _lake(tmp_path, "whole", records, targets)
    run_id = run_attribution(
        whole, trained_dir, "train", "targets", "ekfac", "token", shard_size=2, max_length=64
    )

    killed = _lake(tmp_path, "killed", records, targets)
    proc = _start(killed, trained_dir, 0.5)
    shard_dir = killed.run_dir("scores", run_id)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(shard_dir.glob("shard-*.parquet"))) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = len(list(shard_dir.glob("shard-*.parquet")))
    assert 2 <= done < 5, done  # killed mid-run: some shards written, not all
    assert killed.run_record(run_id)["status"] == "running"
    assert killed.table("scores").empty  # views show complete runs only

    proc = _start(killed, trained_dir, 0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1] == run_id
    for table in ("scores", "segment_scores", "token_scores"):
        pd.testing.assert_frame_equal(_rows(killed, table, run_id), _rows(whole, table, run_id))
    assert len(_rows(whole, "scores", run_id)) == 10 * 3


def test_stage_registers_run_and_reuses_it(tmp_path, trained_dir, records, targets):
    from attribution.stages import run_attribution
    from storage.fingerprint import directory_fingerprint as model_fingerprint

    lake = _lake(tmp_path, "lake", records, targets)
    run_id = run_attribution(
        lake, trained_dir, "train", "targets", "identity", "segment", shard_size=4, max_length=64
    )
    record = lake.require_run(run_id, kind="attribute")
    params, inputs = json.loads(record["params"]), json.loads(record["inputs"])
    assert record["method"] == "identity" and params["level"] == "segment"
    assert params["config"]["strategy"] == "identity"
    assert set(inputs["datasets"]) == {"train", "targets"}
    assert record["model"].endswith(model_fingerprint(trained_dir))
    scores = lake.table("scores", where=f"run_id = '{run_id}'")
    assert len(scores) == 30
    segs = lake.table("segment_scores", where=f"run_id = '{run_id}'")
    assert set(segs.target_id) >= {"all"} and len(segs) > 0
    assert (
        run_attribution(
            lake, trained_dir, "train", "targets", "identity", "segment", shard_size=4, max_length=64
        )
        == run_id
    )


def test_stage_user_errors_before_any_run(tmp_path, trained_dir, records, targets):
    from attribution.stages import run_attribution

    lake = _lake(tmp_path, "lake", records, targets)
    before = len(lake.runs())
    with pytest.raises(UserError, match="method: expected one of ekfac"):
        run_attribution(lake, trained_dir, "train", "targets", "magic")
    with pytest.raises(UserError, match="per-token"):
        run_attribution(lake, trained_dir, "train", "targets", "trak", "token")
    with pytest.raises(UserError, match="unknown dataset"):
        run_attribution(lake, trained_dir, "nope", "targets")
    with pytest.raises(UserError, match="config.json"):
        run_attribution(lake, tmp_path, "train", "targets")
    with pytest.raises(UserError, match="damping_typo"):
        run_attribution(lake, trained_dir, "train", "targets", method_params={"damping_typo": 1})
    assert len(lake.runs()) == before
