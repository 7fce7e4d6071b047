"""Dask over the lake: complete runs' Parquet files as dask dataframes, partitions written back as a
run's shards, a client for an existing cluster or a LocalCluster, and the larger-than-memory test.

- `--dask tcp://HOST:8786` (or `ASSAY_DASK_ADDRESS`) connects to an existing cluster; `--dask local`
  (or Dask chosen because the data is larger than memory) starts a LocalCluster of processes.
- Workers read and write the lake's files directly: a remote cluster needs the lake on a shared
  filesystem at the same path.
- Dask's nanny sets OMP_NUM_THREADS=1 in its workers, which leaves torch with one thread whatever the
  worker's share of the machine: tasks that run torch call `set_torch_threads()` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from storage.errors import UserError
from storage.lake import Lake, Run, to_table
from storage.schemas import TABLES

LOCAL = "local"
# Parquet on disk to pandas in memory: compression, object strings and copies during a stage.
EXPANSION = 8.0


def dask_address(address: str | None = None) -> str | None:
    """The cluster to use: the option, else ASSAY_DASK_ADDRESS, else None (no cluster asked for)."""
    value = address or os.environ.get("ASSAY_DASK_ADDRESS") or None
    if value is not None and value != LOCAL and not re.match(r"^[a-z]+://[^\s/]+(:\d+)?/?$", value):
        raise UserError(f"--dask {value}: expected a scheduler address like tcp://HOST:8786, or 'local'")
    return value


def memory_budget() -> int:
    """Bytes a stage may hold in memory: ASSAY_MEMORY_BUDGET (e.g. 4GB), else half the available RAM."""
    text = os.environ.get("ASSAY_MEMORY_BUDGET")
    if text:
        from dask.utils import parse_bytes

        try:
            return int(parse_bytes(text))
        except ValueError:
            raise UserError(f"ASSAY_MEMORY_BUDGET={text}: expected a size such as 4GB") from None
    import psutil

    return int(psutil.virtual_memory().available // 2)


def table_files(lake: Lake, table: str, run_ids: Iterable[str] | None = None) -> list[Path]:
    """Parquet files of a table's complete runs (all of them, or those in `run_ids`)."""
    if table not in TABLES:
        raise UserError(f"unknown table {table!r}; tables: {', '.join(sorted(TABLES))}")
    complete = {r["run_id"] for r in lake.runs() if r["status"] == "complete"}
    wanted = complete if run_ids is None else complete & set(run_ids)
    return sorted(p for run_id in sorted(wanted) for p in lake.run_dir(table, run_id).glob("*.parquet"))


def table_bytes(lake: Lake, table: str, run_ids: Iterable[str] | None = None) -> int:
    return sum(p.stat().st_size for p in table_files(lake, table, run_ids))


def larger_than_memory(nbytes: int, budget: int | None = None) -> bool:
    return nbytes * EXPANSION > (memory_budget() if budget is None else budget)


def use_dask(nbytes: int, address: str | None = None) -> bool:
    """Run a stage on Dask? Yes when a cluster is asked for (option / ASSAY_DASK_ADDRESS) or
    ASSAY_DASK=1; no when ASSAY_DASK=0; otherwise when its input is larger than memory."""
    forced = os.environ.get("ASSAY_DASK", "auto").lower()
    if forced in ("0", "false", "no", "off", "never"):
        return False
    if dask_address(address) is not None or forced in ("1", "true", "yes", "on", "always"):
        return True
    return larger_than_memory(nbytes)


def read_table(
    lake: Lake,
    table: str,
    run_ids: Iterable[str] | None = None,
    columns: Sequence[str] | None = None,
    filters: list | None = None,
    blocksize: str | None = None,
) -> Any:
    """A dask dataframe over a table's complete runs (one partition per file; complete runs only, as the
    views show). `columns` default to the table's schema; `filters` are pyarrow row filters."""
    import dask.dataframe as dd

    files = table_files(lake, table, run_ids)
    schema = TABLES[table]
    columns = list(columns or schema.names)
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise UserError(f"table {table}: no column {unknown[0]!r}; columns: {', '.join(schema.names)}")
    if not files:
        empty = pa.Table.from_pylist([], schema=pa.schema([schema.field(c) for c in columns])).to_pandas()
        return dd.from_pandas(empty, npartitions=1)
    frame = dd.read_parquet([str(f) for f in files], columns=columns, filters=filters, blocksize=blocksize)
    if "run_id" in columns:  # the folder names make dask read run_id as a hive partition (a category)
        frame["run_id"] = frame["run_id"].astype(str)
    return frame


def _write_shard(lake_root: str, run_id: str, table: str, frame: pd.DataFrame, shard: int) -> str:
    # A worker writes through a Run handle of the open run (the writing process holds its lock).
    return str(Run(Lake(lake_root), run_id, complete=False).write(table, frame, shard=shard))


def write_partitions(run: Run, table: str, frame: Any, first_shard: int = 0) -> list[str]:
    """Write each partition of a dask dataframe as one shard of `run`, on the worker that holds it."""
    import dask

    to_table(table, frame._meta, run.run_id)  # the schema check, before any worker writes
    parts = frame.to_delayed()
    writes = [
        dask.delayed(_write_shard)(str(run.lake.root), run.run_id, table, part, first_shard + i)
        for i, part in enumerate(parts)
    ]
    return list(dask.compute(*writes))


def set_torch_threads(threads: int | None = None) -> int:
    """Give torch this worker's share of cores: ASSAY_TORCH_THREADS, else the Dask worker's thread
    count, else 1. Returns the number set."""
    import torch

    if threads is None:
        threads = int(os.environ.get("ASSAY_TORCH_THREADS") or 0)
    if not threads:
        try:
            from distributed import get_worker

            threads = get_worker().state.nthreads
        except (ImportError, ValueError):
            threads = 1
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


@contextmanager
def dask_client(
    address: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    resources: dict[str, float] | None = None,
) -> Iterator[Any]:
    """A distributed Client: on the cluster at `address` / ASSAY_DASK_ADDRESS, else on a LocalCluster of
    `n_workers` processes (default: ASSAY_DASK_WORKERS, else 2) that is closed afterwards."""
    from distributed import Client, LocalCluster

    address = dask_address(address)
    if address is not None and address != LOCAL:
        try:
            client = Client(address, timeout="20s")
        except OSError as exc:
            raise UserError(f"--dask {address}: no Dask scheduler answers there ({exc})") from None
        try:
            yield client
        finally:
            client.close()
        return
    workers = n_workers or int(os.environ.get("ASSAY_DASK_WORKERS") or 2)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            resources=resources,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
