"""A crash harness: SIGKILL a CLI command at many points of its run, check the lake, rerun, compare.

After each kill: every Parquet file in the lake is whole, no view shows rows of an unfinished run,
and the registry does not claim the run finished. The rerun must end with exactly the rows that an
uninterrupted run gives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from storage import Lake

REPO = Path(__file__).resolve().parents[1]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "ASSAY_PREFECT": "0", "ASSAY_HOME": str(cwd / ".assay"), "ASSAY_QUIET": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(args: list[str], cwd: Path, timeout: float = 900) -> float:
    began = time.perf_counter()
    proc = start(args, cwd)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return time.perf_counter() - began


def check_no_leftovers(folder: Path) -> None:
    """Nothing a killed writer left behind remains under `folder` (lake staging files, `.NAME.tmp-*` /
    `.NAME.old-*` beside an output) once a later write has run."""
    import socket

    host = socket.gethostname()
    for path in folder.rglob("*"):
        name = path.name
        tagged = f"-{host}-" in name and (
            ".tmp-" in name or ".old-" in name or path.parent.name == ".staging"
        )
        if not tagged:
            continue
        pid = int(name.split(f"-{host}-", 1)[1].split("-", 1)[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise AssertionError(f"leftover of a killed writer: {path}") from None


def check_consistent(lake: Lake) -> None:
    for path in lake.root.rglob("*.parquet"):
        if ".staging" not in path.parts:
            pq.read_metadata(path)  # a torn file would not parse
    unfinished = {r["run_id"] for r in lake.runs() if r["status"] != "complete"}
    for table in (
        "examples_all",
        "scores",
        "segment_scores",
        "token_scores",
        "samples",
        "labels",
        "weights",
        "metrics",
    ):
        visible = set(lake.query(f"SELECT DISTINCT run_id FROM {table}")["run_id"])
        assert not visible & unfinished, f"{table} shows rows of unfinished runs {visible & unfinished}"


def kill_points(
    args: list[str],
    prepare: Callable[[Path], None],
    result: Callable[[Lake], pd.DataFrame],
    workdir: Path,
    points: int,
) -> int:
    """Run `args` once to completion as the reference, then kill it at `points` moments spread over
    its duration and rerun each time. Returns how many kill points held."""
    reference_dir = workdir / "reference"
    reference_dir.mkdir()
    prepare(reference_dir)
    duration = finish(args, reference_dir)
    expected = result(Lake(reference_dir / "lake"))
    held = 0
    for i in range(points):
        crash_dir = workdir / f"crash-{i}"  # every kill point starts from the prepared state
        crash_dir.mkdir()
        prepare(crash_dir)
        delay = duration * (i + 0.5) / points
        proc = start(args, crash_dir)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        lake = Lake(crash_dir / "lake")
        check_consistent(lake)
        finish(args, crash_dir)
        assert not lake.catalog_is_stale(), "catalog.duckdb older than the registry after the rerun"
        check_no_leftovers(lake.root)
        got = result(lake)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
        held += 1
        shutil.rmtree(crash_dir, ignore_errors=True)
    return held
