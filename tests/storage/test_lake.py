"""The lake contract: atomic partitions, complete runs only in views, crash safety, concurrency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from assay_testing import run_python

from storage import Lake, UserError
from storage.lake import run_id_for

REPO = Path(__file__).resolve().parents[2]


def scores_frame(n: int, offset: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "train_id": [f"t{i}" for i in range(n)],
            "target_id": ["q"] * n,
            "score": [i + offset for i in range(n)],
        }
    )


def test_complete_run_is_visible_and_rerun_is_a_no_op(lake_dir: Path) -> None:
    lake = Lake(lake_dir)
    with lake.run("attribute", "test", params={"a": 1}, inputs={"x": "v1"}) as run:
        assert not run.complete
        run.write("scores", scores_frame(5))
    assert lake.query("SELECT count(*) AS n FROM scores")["n"][0] == 5
    assert lake.run_record(run.run_id)["status"] == "complete"
    with lake.run("attribute", "test", params={"a": 1}, inputs={"x": "v1"}) as again:
        assert again.complete and again.run_id == run.run_id
    with lake.run("attribute", "test", params={"a": 2}, inputs={"x": "v1"}) as other:
        assert other.run_id != run.run_id
    assert (lake_dir / "catalog.duckdb").exists()


def test_failed_run_is_recorded_and_invisible(lake_dir: Path) -> None:
    lake = Lake(lake_dir)
    with pytest.raises(RuntimeError), lake.run("attribute", "test") as run:
        run.write("scores", scores_frame(3))
        raise RuntimeError("boom")
    record = lake.run_record(run.run_id)
    assert record["status"] == "failed" and "boom" in record["error"]
    assert lake.query("SELECT count(*) AS n FROM scores")["n"][0] == 0


def test_lake_is_not_created_by_reading(lake_dir: Path) -> None:
    lake = Lake(lake_dir)
    assert lake.query("SELECT count(*) AS n FROM examples")["n"][0] == 0
    with pytest.raises(UserError, match="unknown dataset"):
        lake.examples("nope")
    assert not lake_dir.exists()


def test_shards_survive_a_failed_attempt_and_parts_are_redone(lake_dir: Path) -> None:
    lake = Lake(lake_dir)
    with pytest.raises(KeyboardInterrupt), lake.run("attribute", "sharded") as run:
        run.write("scores", scores_frame(2), shard=0)
        run.write("metrics", pd.DataFrame({"name": ["m"], "key": ["k"], "value": [1.0]}))
        raise KeyboardInterrupt
    with lake.run("attribute", "sharded") as run:
        assert run.resumed and run.has_shard("scores", 0) and not run.has_shard("scores", 1)
        assert not list(lake.run_dir("metrics", run.run_id).glob("part-*"))  # redone, not duplicated
        run.write("scores", scores_frame(2, offset=10), shard=1)
        run.write("metrics", pd.DataFrame({"name": ["m"], "key": ["k"], "value": [2.0]}))
    assert sorted(lake.table("scores")["score"]) == [0, 1, 10, 11]
    assert lake.table("metrics")["value"].tolist() == [2.0]


WRITER = textwrap.dedent("""
    import sys, time, pandas as pd
    from storage import Lake
    lake = Lake(sys.argv[1]); tag = sys.argv[2]; pause = float(sys.argv[3])
    with lake.run("attribute", "proc", params={"tag": tag}) as run:
        for shard in range(4):
            if run.has_shard("scores", shard):
                continue
            frame = pd.DataFrame({"train_id": [f"{tag}-{shard}-{i}" for i in range(20000)],
                                  "target_id": "q", "score": [float(i) for i in range(20000)]})
            run.write("scores", frame, shard=shard)
            print("shard", shard, flush=True)
            time.sleep(pause)
    print("done", run.run_id, flush=True)
""")


def start_writer(lake_dir: Path, tag: str, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(lake_dir), tag, str(pause)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_writer_leaves_nothing_visible_and_rerun_matches(lake_dir: Path) -> None:
    proc = start_writer(lake_dir, "k", pause=30)
    assert proc.stdout.readline().startswith("shard 0")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lake = Lake(lake_dir)
    assert lake.query("SELECT count(*) AS n FROM scores")["n"][0] == 0
    run_id = run_id_for("attribute", "proc", {"tag": "k"}, {}, None)
    assert lake.run_record(run_id)["status"] == "running"  # the registry says it never finished
    rerun = start_writer(lake_dir, "k", pause=0)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert "shard 0" not in out  # resumed after the complete shard
    rows = lake.query("SELECT train_id, score FROM scores ORDER BY train_id")
    assert len(rows) == 4 * 20000 and rows["train_id"].is_unique


def test_two_processes_write_different_runs_at_once(lake_dir: Path) -> None:
    procs = [start_writer(lake_dir, tag, pause=0.2) for tag in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    counts = Lake(lake_dir).query("SELECT run_id, count(*) AS n FROM scores GROUP BY 1")
    assert sorted(counts["n"]) == [80000, 80000]


def test_second_writer_of_the_same_run_is_refused(lake_dir: Path) -> None:
    first = start_writer(lake_dir, "same", pause=3)
    assert first.stdout.readline().startswith("shard 0")
    second = start_writer(lake_dir, "same", pause=0)
    _, err = second.communicate(timeout=60)
    assert second.returncode != 0 and "being written by another process" in err
    first.communicate(timeout=120)
    assert first.returncode == 0


def test_readers_during_a_write_see_old_or_new_state(lake_dir: Path) -> None:
    lake = Lake(lake_dir)
    with lake.run("attribute", "base") as run:
        run.write("scores", scores_frame(10))
    writer = start_writer(lake_dir, "r", pause=0.3)
    seen = set()
    deadline = time.time() + 60
    while writer.poll() is None and time.time() < deadline:
        seen.add(int(lake.query("SELECT count(*) AS n FROM scores")["n"][0]))
    writer.communicate(timeout=60)
    seen.add(int(lake.query("SELECT count(*) AS n FROM scores")["n"][0]))
    assert seen <= {10, 10 + 80000} and 10 + 80000 in seen


KILLED_BEFORE_CATALOG = textwrap.dedent("""
    import os, sys, pandas as pd
    from storage import Lake
    lake = Lake(sys.argv[1])
    Lake.refresh_catalog = lambda self: os._exit(9)  # killed between registry complete and catalog refresh
    with lake.run("attribute", "first-metrics") as run:
        run.write("metrics", pd.DataFrame({"name": ["m"], "key": ["k"], "value": [1.0]}))
""")


def test_a_catalog_older_than_the_registry_is_rebuilt_on_open(lake_dir: Path) -> None:
    import duckdb

    lake = Lake(lake_dir)
    with lake.run("attribute", "base") as run:
        run.write("scores", scores_frame(3))
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_CATALOG, str(lake_dir)], cwd=REPO, check=False
    )
    assert killed.returncode == 9 and lake.catalog_is_stale()

    def outside_client_sees() -> int:
        con = duckdb.connect(str(lake_dir / "catalog.duckdb"), read_only=True)
        try:
            return con.execute("SELECT count(*) FROM metrics").fetchall()[0][0]
        finally:
            con.close()

    assert outside_client_sees() == 0  # stale: the run completed after the catalog was built
    assert lake.refresh_catalog_if_stale() and not lake.catalog_is_stale()
    assert outside_client_sees() == 1
    assert not lake.refresh_catalog_if_stale()  # fresh: nothing to do (two stat calls)


def test_any_gated_query_rebuilds_a_stale_catalog(lake_dir: Path) -> None:
    from storage.gate import run_sql

    subprocess.run([sys.executable, "-c", KILLED_BEFORE_CATALOG, str(lake_dir)], cwd=REPO, check=False)
    lake = Lake(lake_dir)
    assert lake.catalog_is_stale()
    assert run_sql(lake_dir, "SELECT count(*) AS n FROM metrics").to_pylist() == [{"n": 1}]
    assert not lake.catalog_is_stale()


def test_leftovers_of_killed_writers_are_removed_on_the_next_write(lake_dir: Path) -> None:
    import socket

    lake = Lake(lake_dir)
    with lake.run("attribute", "first") as run:
        run.write("scores", scores_frame(1))
    staging = lake_dir / ".staging"
    host, dead = socket.gethostname(), 2**22 + 4321
    left = [
        staging / f"part-{host}-{dead}-0123456789ab.parquet",
        staging / f"catalog-{host}-{dead}-0123456789ab.duckdb",
        staging / f"ingest-{host}-{dead}-0123456789ab.arrows",
    ]
    (staging / f"sql-{host}-{dead}-0123456789ab").mkdir()
    for path in left:
        path.write_bytes(b"half a file")
    live = staging / f"part-{host}-{os.getpid()}-0123456789ab.parquet"
    remote = staging / f"part-otherhost-{dead}-0123456789ab.parquet"
    for path in (live, remote):
        path.write_bytes(b"someone else's")
    with lake.run("attribute", "second") as run:
        run.write("scores", scores_frame(1))
    assert sorted(p.name for p in staging.iterdir()) == sorted([live.name, remote.name])


def test_readers_never_see_a_resuming_runs_partitions(lake_dir: Path) -> None:
    """A run resumed after a failure redoes its whole-piece partitions; readers in the meantime read
    only complete runs' files (a listed file never disappears, no 'No files found')."""
    lake = Lake(lake_dir)
    with pytest.raises(RuntimeError), lake.run("attribute", "resumed") as run:
        run.write("metrics", pd.DataFrame({"name": ["m"], "key": ["k"], "value": [1.0]}))
        raise RuntimeError("first attempt fails")
    writer = subprocess.Popen(
        [sys.executable, "-c", RESUMER, str(lake_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    seen = set()
    from storage.gate import run_sql

    while writer.poll() is None:
        seen.add(run_sql(lake_dir, "SELECT count(*) AS n FROM metrics").to_pylist()[0]["n"])
    assert writer.returncode == 0
    seen.add(run_sql(lake_dir, "SELECT count(*) AS n FROM metrics").to_pylist()[0]["n"])
    assert seen <= {0, 200} and 200 in seen


def test_a_registry_file_replaced_while_it_is_read_is_read_again(lake_dir: Path, monkeypatch) -> None:
    """DuckDB opens a file more than once while reading it, so a registry file replaced in between
    (a run starting, completing or failing) reads as broken Parquet. The views list and read the
    registry again; a registry that stays unreadable is an error after REGISTRY_READS tries, not a hang."""
    import duckdb

    from storage import catalog

    lake = Lake(lake_dir)
    with lake.run("attribute", "test") as run:
        run.write("scores", scores_frame(3))
    good = catalog.registry_files(lake_dir)
    broken = lake_dir / "broken.parquet"
    broken.write_bytes(b"PAR1" + bytes(64) + b"PAR1")
    listed = []

    def first_read_broken(root: Path) -> list[str]:
        listed.append(root)
        return [str(broken)] if len(listed) == 1 else good

    monkeypatch.setattr(catalog, "registry_files", first_read_broken)
    con = duckdb.connect()
    views = catalog.LakeViews(con, lake_dir)
    views.define(["scores"])
    assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 3 and len(listed) == 2
    listed.clear()
    monkeypatch.setattr(catalog, "registry_files", lambda root: listed.append(root) or [str(broken)])
    with pytest.raises(duckdb.Error):
        catalog.LakeViews(duckdb.connect(), lake_dir)
    assert len(listed) == catalog.REGISTRY_READS


FORKER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from storage import Lake
    from storage.ingest import ingest
    root = Path(sys.argv[1])
    data = root / "x.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "a"}) + "\\n" for i in range(5)))
    ingest(Lake(root / "a"), data, "x")  # the catalog and content ids use the scratch database
    statuses = []
    for touches_duckdb in (True, False):
        pid = os.fork()
        if pid == 0:
            if touches_duckdb:
                ingest(Lake(root / "b"), data, "x")
            sys.exit(0)  # a normal exit runs destructors, unlike os._exit
        statuses.append(os.waitpid(pid, 0)[1])
    ingest(Lake(root / "c"), data, "x")
    print(statuses)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_ingests_and_exits_cleanly(tmp_path: Path) -> None:
    """A DuckDB database alive at a fork makes the child crash (SIGSEGV) as it exits, or hang: the
    scratch database is closed before every fork, so children of a process that ingested (a
    multiprocessing pool, a prefork server) ingest and exit normally, and the parent goes on."""
    out = run_python(FORKER, str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[0, 0]"


RESUMER = textwrap.dedent("""
    import sys, time, pandas as pd
    from storage import Lake
    lake = Lake(sys.argv[1])
    with lake.run("attribute", "resumed") as run:
        for part in range(20):
            run.write("metrics", pd.DataFrame({"name": ["m"] * 10, "key": [str(i) for i in range(10)],
                                               "value": [float(part)] * 10}))
            time.sleep(0.05)
""")


def test_removing_a_run_removes_its_rows_and_what_it_keeps_in_the_work_area(lake_dir: Path) -> None:
    from storage.lake import remove_run

    lake = Lake(lake_dir)
    runs = []
    for a in (1, 2):
        with lake.run("attribute", "test", params={"a": a}, inputs={}) as run:
            run.write("scores", scores_frame(3))
        kept = lake_dir / ".work" / "factors" / run.run_id
        kept.mkdir(parents=True)
        (kept / "factors.safetensors").write_bytes(b"x" * 10)
        runs.append(run.run_id)
    remove_run(lake, runs[0])
    assert lake.query("SELECT DISTINCT run_id FROM scores")["run_id"].tolist() == [runs[1]]
    assert not (lake_dir / ".work" / "factors" / runs[0]).exists()
    assert (lake_dir / ".work" / "factors" / runs[1] / "factors.safetensors").exists()


def runs_view(lake: Lake) -> pd.DataFrame:
    return lake.query("SELECT * FROM runs ORDER BY run_id")


def test_the_compacted_registry_gives_the_same_runs_as_every_file(lake_dir: Path, monkeypatch) -> None:
    """With the registry compacted, each run's row comes from the compacted file while its own file is
    unchanged, and from its file once replaced (a run re-run after failing), removed or added; a run
    file of an older schema (a column missing) reads as before; a damaged compacted file is ignored.
    Every time the runs view equals one read from the run files alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage import catalog

    monkeypatch.setattr(catalog, "COMPACT_AFTER", 10**6)  # compacted only where this test says
    lake = Lake(lake_dir)
    ids = []
    for i in range(6):
        with lake.run("attribute", "test", params={"i": i}) as run:
            run.write("scores", scores_frame(2, offset=i))
        ids.append(run.run_id)
    with pytest.raises(RuntimeError), lake.run("attribute", "test", params={"i": "flaky"}) as flaky:
        raise RuntimeError("first attempt fails")
    old_schema = lake_dir / "runs" / "old-run.parquet"
    row = pq.read_table(catalog.registry_files(lake_dir)[0]).to_pylist()[0]
    pq.write_table(pa.Table.from_pylist([{**row, "run_id": "old-run"}]).drop(["host"]), old_schema)

    def every_file() -> pd.DataFrame:
        con = __import__("duckdb").connect()
        files = catalog.registry_files(lake_dir)
        return con.execute(
            f"SELECT * FROM read_parquet({catalog._file_list(files)}, union_by_name=true) ORDER BY run_id"
        ).df()

    expected = runs_view(lake)
    assert catalog.compact_registry(lake_dir, lake.staging_path("registry"), after=0)
    assert (lake_dir / catalog.COMPACT_REGISTRY).exists() and not list((lake_dir / ".staging").iterdir())
    pd.testing.assert_frame_equal(runs_view(lake), expected)
    con = __import__("duckdb").connect()
    assert catalog._registry_table(con, lake_dir, "t") == 0  # every row from the compacted file

    with lake.run("attribute", "test", params={"i": "flaky"}) as run:  # replaces the failed run's file
        run.write("scores", scores_frame(1))
    with lake.run("attribute", "test", params={"i": 99}) as added:
        pass
    (lake_dir / "runs" / f"{ids[0]}.parquet").unlink()
    assert catalog._registry_table(con, lake_dir, "t") == 2  # the replaced file and the new one
    after = runs_view(lake)
    assert after.set_index("run_id").loc[flaky.run_id, "status"] == "complete"
    assert ids[0] not in set(after["run_id"]) and added.run_id in set(after["run_id"])
    pd.testing.assert_frame_equal(
        after.drop(columns=["params", "inputs"]), every_file().drop(columns=["params", "inputs"])
    )
    assert len(after) == len(expected) and after["host"].isna().sum() == 1  # one run added, one removed

    (lake_dir / catalog.COMPACT_REGISTRY).write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(runs_view(lake), after)
    assert lake.query("SELECT count(*) AS n FROM scores")["n"][0] == 2 * 5 + 1


def test_runs_refresh_the_compacted_registry_every_few_runs(lake_dir: Path, monkeypatch) -> None:
    """`refresh_catalog` (after every run) rewrites the compacted registry once COMPACT_AFTER run files
    are outside it, so a query reads at most that many run files one by one."""
    import duckdb

    from storage import catalog

    monkeypatch.setattr(catalog, "COMPACT_AFTER", 3)
    lake = Lake(lake_dir)
    outside = []
    for i in range(7):
        with lake.run("attribute", "test", params={"i": i}):
            pass
        outside.append(catalog._registry_table(duckdb.connect(), lake_dir, "t"))
    # a run's file is written twice (running, complete) and the catalog refreshed after the second
    assert outside == [1, 2, 0, 1, 2, 0, 1]
    assert len(runs_view(lake)) == 7


def test_the_runs_view_has_the_registry_schema_whatever_the_files_held(lake_dir: Path) -> None:
    """A run file with a column the registry does not have, or a timestamp in nanoseconds, or one
    missing a column: the runs view always has the RUNS columns, in order and type, also after such a
    file went into the compacted registry and was then removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage import catalog
    from storage.schemas import RUNS

    lake = Lake(lake_dir)
    for i in range(2):
        with lake.run("attribute", "test", params={"i": i}):
            pass
    row = pq.read_table(catalog.registry_files(lake_dir)[0])
    odd = row.set_column(0, "run_id", pa.array(["a-odd"])).append_column("foo", pa.array([1]))
    odd = odd.set_column(
        odd.schema.get_field_index("started_at"),
        "started_at",
        odd["started_at"].cast(pa.timestamp("ns", "UTC")),
    )
    pq.write_table(odd, lake_dir / "runs" / "a-odd.parquet")
    pq.write_table(
        row.set_column(0, "run_id", pa.array(["a-old"])).drop(["model"]), lake_dir / "runs" / "a-old.parquet"
    )

    def check(n: int) -> None:
        runs = runs_view(lake)
        assert list(runs.columns) == RUNS.names and len(runs) == n
        assert str(runs["started_at"].dtype).startswith("datetime64[us, ")

    check(4)
    assert catalog.compact_registry(lake_dir, lake.staging_path("registry"), after=0)
    check(4)
    (lake_dir / "runs" / "a-odd.parquet").unlink()
    (lake_dir / "runs" / "a-old.parquet").unlink()
    check(2)
    assert catalog.compact_registry(lake_dir, lake.staging_path("registry"), after=0)
    check(2)
    assert pq.read_schema(lake_dir / catalog.COMPACT_REGISTRY).names == RUNS.names + list(catalog._STAMP)
