"""The ingest job: one file into the lake as a dataset version."""

from __future__ import annotations

from dataclasses import asdict

from flows.runtime import flow
from flows.tasks import publish_summary
from storage import Lake
from storage.ingest import ColumnMap, ingest


@flow(name="ingest", log_prints=True)
def ingest_flow(
    path: str,
    dataset: str,
    lake_root: str | None = None,
    columns: dict | None = None,
    fmt: str | None = None,
    split: str | None = None,
    dedupe: bool = False,
) -> dict:
    lake = Lake(lake_root)
    result = ingest(lake, path, dataset, ColumnMap(**(columns or {})), fmt=fmt, split=split, dedupe=dedupe)
    publish_summary(f"ingest-{dataset}", f"Ingest of {path} as {dataset}", lake, [result.run_id])
    return asdict(result)
