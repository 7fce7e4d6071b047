"""Progress of long steps (storage.progress): the status line's count and ETA against hand computations, log
records at every tenth of the way, warnings once per process and even when quiet, and the DART stage's trial
progress against its budget."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from assay_testing import stage

from curation.corpus import math_problems
from curation.dart.replay import write_demo_replay
from storage import Lake
from storage import progress as progress_mod
from storage.ingest import ColumnMap, ingest_records, normalize
from storage.progress import LOGGER, Progress, duration, status_line
from storage.stage import StageContext


@pytest.fixture
def records() -> Iterator[list[str]]:
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    yield seen
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(level)


def test_status_line_counts_and_eta_by_hand() -> None:
    # 3 of 10 shards in 12 s: 4 s a shard, 7 to go: 28 s
    assert status_line("attribute", 3, 10, 12.0, "shards", False) == (
        "attribute: 3/10 shards (30%), 12s elapsed, ETA 28s"
    )
    assert status_line("dart", 50, 400, 100.0, "trials", True).endswith("ETA at most 11m40s")
    assert status_line("x", 10, 10, 61.0, "items", False) == "x: 10/10 items (100%), 1m01s elapsed"
    assert status_line("x", 7, None, 5.0, "items", False) == "x: 7 items, 5s elapsed"
    assert [duration(s) for s in (0.4, 59.6, 3599, 3600 * 2 + 125)] == ["0s", "1m00s", "59m59s", "2h02m"]


def test_a_record_at_every_tenth_and_one_at_a_short_stop(records: list[str]) -> None:
    with Progress("work", 20, "items") as bar:
        for _ in range(20):
            bar.update()
    counts = [line.split(": ")[1].split(" ")[0] for line in records]
    assert counts == [f"{k}/20" for k in range(2, 21, 2)]
    records.clear()
    with Progress("stopped", 100, "items") as bar:
        bar.set(5)  # fewer than a tenth: no mark passed, the close says where it stopped
    assert len(records) == 1 and records[0].startswith("stopped: 5/100 items (5%)")
    records.clear()
    assert list(progress_mod.progress(iter("abc"), "letters")) == ["a", "b", "c"]  # no length: a count
    assert records == [records[0]] and records[0].startswith("letters: 3 items")


def test_warnings_print_once_and_even_when_quiet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, records: list[str]
) -> None:
    monkeypatch.setenv("ASSAY_QUIET", "1")
    progress_mod.say("not shown")
    progress_mod.warn("targets overlap (test)")
    progress_mod.warn("targets overlap (test)")
    err = capsys.readouterr().err
    assert err == "warning: targets overlap (test)\n"
    assert records == ["not shown", "targets overlap (test)", "targets overlap (test)"]  # logs keep each


def test_dart_progress_counts_trials_against_its_budget(tmp_path: Path, records: list[str]) -> None:
    lake = Lake(tmp_path / "lake")
    rows = math_problems(1, seed=0)  # 5 queries
    ingest_records(lake, normalize(rows, "toy", ColumnMap(), "toy.jsonl"), "toy", ColumnMap(), "toy.jsonl")
    replay = write_demo_replay(lake.examples("toy"), tmp_path / "replay.jsonl", per_query=4, seed=1)
    params = {"strategy": "vrt", "n_per_query": 4, "replay": str(replay)}
    stage("dart")(StageContext(lake=lake, datasets=["toy"], quiet=True), params)
    lines = [r for r in records if r.startswith("dart (vrt): ")]
    # VRT samples every query once, 4 each: one round of 20 trials, the whole budget
    assert lines == [lines[0]] and lines[0].startswith("dart (vrt): 20/20 trials (100%)")
