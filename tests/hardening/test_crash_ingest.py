"""SIGKILL `assay ingest` at many points: the lake stays consistent and the rerun matches."""

from __future__ import annotations

import json
from pathlib import Path

from assay_crash import kill_points
from assay_figures import record

from storage import Lake

POINTS = 6


def prepare(folder: Path) -> None:
    with open(folder / "data.jsonl", "w") as fh:
        fh.writelines(
            json.dumps(
                {
                    "id": i,
                    "prompt": f"q{i} " * 10,
                    "response": f"a{i} " * 20,
                    "domain": "math" if i % 3 else "code",
                    "difficulty": i % 5 + 1,
                }
            )
            + "\n"
            for i in range(20_000)
        )


def examples(lake: Lake):
    return lake.query("SELECT * EXCLUDE (messages) FROM examples ORDER BY example_id")


def test_crash_ingest(tmp_path: Path) -> None:
    held = kill_points(["ingest", "data.jsonl", "--dataset", "crash"], prepare, examples, tmp_path, POINTS)
    record("kill points", POINTS, held, "assay ingest")
    assert held == POINTS
