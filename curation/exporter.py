"""Writing a curation run as a fine-tuning dataset folder: `export_run(lake, run_id, out, ...)`.

The folder receives the records (`data/train.jsonl` / `data/train.parquet`, or a `datasets` save_to_disk
directory for `hf`), `mixture_schedule.csv` when the run has a schedule, and README.md (the dataset card).
Everything is written to a temporary directory beside the folder and renamed into place; an existing
non-empty folder is kept unless `force`. The records and the card come from curation/export.py (pure).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from curation import export as records_mod
from curation.stages import load_examples
from curation.stages.mix import example_groups
from storage import Lake, UserError

FORMATS = ("jsonl", "parquet", "hf")
SCHEDULE_FILE = "mixture_schedule.csv"


@dataclass
class ExportResult:
    path: Path
    rows: int
    files: list[str]
    summary: pd.DataFrame


def _occupied(path: Path) -> bool:
    return path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))


def _dataset_versions(lake: Lake, record: dict, weights: pd.DataFrame) -> dict[str, str]:
    """The dataset versions the run read (its `datasets` input); the latest version of any other dataset
    its weights name (e.g. a dataset the run itself wrote, as DART does)."""
    inputs = json.loads(record.get("inputs") or "{}")
    versions = inputs.get("datasets") if isinstance(inputs, dict) else None
    found = {str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {}
    for name in sorted(weights["dataset"].astype(str).unique()):
        if name not in found:
            found[name] = lake.dataset_version(name)
    return found


def lineage(lake: Lake, run_id: str) -> list[dict[str, Any]]:
    """The run and every run it read, recursively (run ids among its inputs, and the ingest runs of the
    dataset versions it read), oldest first."""
    versions = lake.query("SELECT dataset, version, run_id FROM dataset_versions")
    ingest_of = {(r.dataset, r.version): r.run_id for r in versions.itertuples()}
    seen: dict[str, dict] = {}
    todo = [run_id]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        record = lake.run_record(current)
        if record is None:
            continue
        seen[current] = record
        inputs = json.loads(record.get("inputs") or "{}")
        for key, value in inputs.items() if isinstance(inputs, dict) else []:
            if key == "datasets" and isinstance(value, dict):
                todo += [ingest_of[(d, v)] for d, v in value.items() if (d, v) in ingest_of]
            elif isinstance(value, str) and lake.run_record(value) is not None:
                todo.append(value)
            elif isinstance(value, list):
                todo += [v for v in value if isinstance(v, str) and lake.run_record(v) is not None]
    return sorted(seen.values(), key=lambda r: r["started_at"])


def _write_data(records: pd.DataFrame, tmp: Path, fmt: str) -> list[str]:
    if fmt == "hf":
        from datasets import Dataset  # imported here: it costs seconds and only hf needs it

        Dataset.from_pandas(records, preserve_index=False).save_to_disk(str(tmp))
        return []
    (tmp / "data").mkdir()
    if fmt == "jsonl":
        name = "data/train.jsonl"
        records.to_json(tmp / name, orient="records", lines=True, force_ascii=False)
    else:
        name = "data/train.parquet"
        records.to_parquet(tmp / name, index=False)
    return [name]


def export_run(
    lake: Lake,
    run_id: str,
    out: Path,
    fmt: str = "jsonl",
    style: str = "chat",
    materialise: bool = False,
    force: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Write the export of one run; every check happens before anything is written."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if style not in records_mod.STYLES:
        raise UserError(f"record style {style!r}: use chat or prompt_response")
    out = Path(out).expanduser().absolute()
    if _occupied(out) and not force:
        raise UserError(f"--out {out} exists and is not empty; pass --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    record = lake.require_run(run_id)
    weights = lake.table("weights", "run_id = ?", [run_id])
    if weights.empty:
        raise UserError(f"run {run_id!r} wrote no weights; export takes a curation run (e.g. stage mix)")
    examples = load_examples(lake, _dataset_versions(lake, record, weights))
    examples = examples[examples["dataset"].isin(set(weights["dataset"]))].reset_index(drop=True)
    params = json.loads(record.get("params") or "{}")
    inputs = json.loads(record.get("inputs") or "{}")
    if record["method"] == "mix" and isinstance(params, dict) and "by" in params:
        groups = example_groups(lake, examples, params["by"], inputs.get("labels"))
    else:
        groups = example_groups(lake, examples, "domain", None)
    records = records_mod.build_records(
        examples, weights, groups, style=style, materialise=materialise, seed=seed
    )
    if records.empty:
        raise UserError(f"run {run_id!r} keeps no examples (every weight or copy count is 0)")
    schedule = lake.table("mixture_schedule", "run_id = ?", [run_id])
    schedule = (
        schedule.drop(columns=["run_id"])
        .rename(columns={"group_name": "group"})
        .sort_values(["step", "group"], kind="stable")
        .reset_index(drop=True)
    )
    summary = records_mod.group_summary(groups, records, materialise)

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = _write_data(records, tmp, fmt)
        if len(schedule):
            schedule.to_csv(tmp / SCHEDULE_FILE, index=False)
        card = records_mod.dataset_card(
            title=f"{out.name}: curated by assay",
            run_id=run_id,
            fmt=fmt,
            style=style,
            materialised=materialise,
            data_files=files,
            lineage=lineage(lake, run_id),
            summary=summary,
            schedule_file=SCHEDULE_FILE if len(schedule) else None,
            schedule=schedule,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, len(records), files, summary)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an old PATH is moved aside first and removed after."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
