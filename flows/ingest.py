"""The ingest job: one file into the lake as a dataset version."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from storage import Lake
from storage.ingest import ColumnMap, ingest


@flow(name="ingest", log_prints=True)
def ingest_flow(
    path: str,
    dataset: str,
    lake_root: str,
    columns: dict | None = None,
    fmt: str | None = None,
    split: str | None = None,
    dedupe: bool = False,
) -> dict:
    result = ingest(
        Lake(lake_root), path, dataset, ColumnMap(**(columns or {})), fmt=fmt, split=split, dedupe=dedupe
    )
    return asdict(result)
