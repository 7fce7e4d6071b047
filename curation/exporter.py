"""Writing a curation run as a fine-tuning dataset folder: `export_run(lake, run_id, out, ...)`.

The folder receives the records (`data/train.jsonl` / `data/train.parquet`, or a `datasets` DatasetDict
saved with `save_to_disk` for `hf`), per-phase files of a materialised scheduled mix (`data/phase_0.*`, ...:
the same rows split where the temperature changes), `mixture_schedule.csv` when the run has a schedule,
and README.md (the dataset card, whose front matter lets `datasets.load_dataset(folder)` read every
format). Where it may write is storage/outputs.py's policy (never the lake, the state folder, a home or a
folder holding one; an existing non-empty folder only with `force` and only if assay wrote it); the folder
is written aside and renamed into place, missing parents created then. The records and the card come from
curation/export.py (pure).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from curation import curated, mixing
from curation import export as records_mod
from curation.stages import load_examples
from curation.stages.mix import example_groups
from storage import Lake, UserError
from storage.outputs import default_protected, prepare_output, staged_output

FORMATS = ("jsonl", "parquet", "hf")
EXPORT_WRITER = "assay export"  # the output marker's writer: `force` may replace such a folder
SCHEDULE_FILE = "mixture_schedule.csv"
MAX_PHASE_FILES = 8  # a gradual schedule (one phase per step) gets no per-phase files
LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?|code|multilingual")  # what the Hub takes


@dataclass
class ExportResult:
    path: Path
    rows: int
    files: list[str]
    summary: pd.DataFrame
    order: str  # how the rows are ordered, in words


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
            if key in ("datasets", "pool", "sources") and isinstance(value, dict):
                todo += [ingest_of[(d, v)] for d, v in value.items() if (d, v) in ingest_of]
            elif isinstance(value, str) and lake.run_record(value) is not None:
                todo.append(value)
            elif isinstance(value, list):
                todo += [v for v in value if isinstance(v, str) and lake.run_record(v) is not None]
    return sorted(seen.values(), key=lambda r: r["started_at"])


@dataclass
class _RunData:
    """What an export reads from the lake: the set's examples and rows, its groups, schedule and draws."""

    examples: pd.DataFrame
    weights: pd.DataFrame  # aligned with examples
    groups: pd.Series  # aligned with examples
    versions: dict[str, str]
    schedule: pd.DataFrame
    draws: pd.DataFrame


def order_run(lake: Lake, run_id: str, weights: pd.DataFrame) -> str:
    """The run whose draws (training order) and schedule the export of `run_id` follows: itself when it
    drew, else, through the runs whose weights it built on, the mix it took its copies from unchanged (a
    loss-weight stage after a Cooldown mix keeps the mix's order). A run that changed any copies has no
    order but its own."""
    copies = weights.set_index(curated.KEY)["copies"].sort_index()
    current = run_id
    for _ in range(100):  # a chain of stages; runs never form a cycle (inputs are earlier runs)
        if len(lake.query("SELECT 1 FROM mixture_draws WHERE run_id = ? LIMIT 1", [current])):
            return current
        inputs = json.loads(lake.require_run(current).get("inputs") or "{}")
        prior = inputs.get("weights") if isinstance(inputs, dict) else None
        if not isinstance(prior, str):
            break
        before = curated.read_weights(lake, prior).set_index(curated.KEY)["copies"].sort_index()
        if not before.index.equals(copies.index) or not before.equals(copies):
            break
        current = prior
    return run_id


def _read_run(lake: Lake, run_id: str) -> _RunData:
    lake.require_run(run_id)  # an unknown run id is the user's error, named as such
    weights = curated.read_weights(lake, run_id)
    if weights.empty:
        raise UserError(f"run {run_id!r} wrote no weights; export takes a curation run (e.g. stage mix)")
    if weights["loss_weight"].isna().all():
        raise UserError(
            f"run {run_id!r} was written by an older assay (weights without loss_weight); rerun it"
        )
    versions = curated.weights_versions(lake, run_id)
    examples = load_examples(lake, versions)
    named = examples[curated.KEY].merge(weights, on=curated.KEY, how="left")
    examples = examples[named["copies"].notna().to_numpy()].reset_index(drop=True)
    ordered_by = order_run(lake, run_id, weights)
    weights = examples[curated.KEY].merge(weights, on=curated.KEY, how="left")
    record = lake.require_run(ordered_by)
    params = json.loads(record.get("params") or "{}")
    inputs = json.loads(record.get("inputs") or "{}")
    if record["method"] == "mix" and isinstance(params, dict) and "by" in params:
        groups = example_groups(lake, examples, params["by"], inputs.get("labels"))
    else:
        groups = example_groups(lake, examples, "domain", None)
    schedule = lake.table("mixture_schedule", "run_id = ?", [ordered_by])
    schedule = (
        schedule.drop(columns=["run_id"])
        .rename(columns={"group_name": "group"})
        .sort_values(["step", "group"], kind="stable")
        .reset_index(drop=True)
    )
    draws = lake.query(
        "SELECT step, slot, dataset, example_id FROM mixture_draws WHERE run_id = ? ORDER BY step, slot",
        [ordered_by],
    )
    return _RunData(examples, weights, groups, versions, schedule, draws)


def _splits(rows: pd.DataFrame, materialise: bool) -> dict[str, pd.DataFrame]:
    """`train` (every row), and per phase of a materialised scheduled mix its rows (when there are 2 to
    MAX_PHASE_FILES phases)."""
    splits = {"train": rows}
    if materialise:
        phases = sorted(rows["phase"].unique())
        if 2 <= len(phases) <= MAX_PHASE_FILES:
            splits.update({f"phase_{k}": rows[rows["phase"] == k].reset_index(drop=True) for k in phases})
    return splits


def _write_data(splits: dict[str, pd.DataFrame], tmp: Path, fmt: str) -> list[str]:
    names = records_mod.data_file_names(fmt, splits)
    if fmt == "hf":
        from datasets import Dataset, DatasetDict  # imported here: it costs seconds and only hf needs it

        DatasetDict(
            {s: Dataset.from_pandas(frame, preserve_index=False) for s, frame in splits.items()}
        ).save_to_disk(str(tmp))
        return [f"{s}/" for s in splits]
    (tmp / "data").mkdir()
    for split, frame in splits.items():
        path = tmp / names[split][0]
        if fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(path, index=False)
    return [names[s][0] for s in splits]


def _order_text(materialise: bool, data: _RunData, splits: dict[str, pd.DataFrame]) -> str:
    if not materialise:
        return "one row per example (copies, loss_weight)"
    if len(data.draws):
        phases = [s for s in splits if s != "train"]
        extra = f"; per-phase files: {', '.join(phases)}" if phases else ""
        return f"training order of the mix ({int(data.draws['step'].max()) + 1} steps){extra}"
    return "a seeded shuffle of every example's copies (the run has no schedule)"


def export_run(
    lake: Lake,
    run_id: str,
    out: Path,
    fmt: str = "jsonl",
    style: str = "chat",
    materialise: bool = False,
    force: bool = False,
    seed: int = 0,
    languages: list[str] | None = None,
) -> ExportResult:
    """Write the export of one run; every check happens before anything is written."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    try:
        style = records_mod.style_name(style)
    except ValueError:
        raise UserError(f"record style {style!r}: use one of {', '.join(records_mod.STYLES)}") from None
    bad = [code for code in languages or [] if not LANGUAGE.fullmatch(code)]
    if bad:
        raise UserError(
            f"--language {bad[0][:40]!r}: use an ISO 639 code (en, fr, ...), code or multilingual"
        )
    out = prepare_output(out, kind="folder", force=force, protected=[lake.root, *default_protected()])
    data = _read_run(lake, run_id)
    try:
        records = records_mod.build_records(data.examples, data.weights, data.groups, style=style)
    except ValueError as exc:
        raise UserError(f"run {run_id!r}: {exc}") from None
    if records.empty:
        raise UserError(f"run {run_id!r} keeps no examples (every copy count is 0)")
    taus = data.schedule.drop_duplicates("step").sort_values("step")["tau"].to_numpy()
    rows = (
        records_mod.training_order(records, data.draws, mixing.schedule_phases(taus), seed=seed)
        if materialise
        else records
    )
    splits = _splits(rows, materialise)
    summary = records_mod.group_summary(data.groups, data.weights)

    with staged_output(out, kind="folder", writer=EXPORT_WRITER) as tmp:
        files = _write_data(splits, tmp, fmt)
        if len(data.schedule):
            data.schedule.to_csv(tmp / SCHEDULE_FILE, index=False)
        facts = records_mod.CardFacts(
            title=f"{out.name}: curated by assay",
            run_id=run_id,
            fmt=fmt,
            style=style,
            materialised=materialise,
            rows=len(rows),
            splits=records_mod.data_file_names(fmt, splits),
            summary=summary,
            lineage=lineage(lake, run_id),
            source_datasets=data.versions,
            schedule_file=SCHEDULE_FILE if len(data.schedule) else None,
            schedule=data.schedule,
            languages=list(languages or []),
        )
        (tmp / "README.md").write_text(records_mod.dataset_card(facts), encoding="utf-8")
    return ExportResult(out, len(rows), files, summary, _order_text(materialise, data, splits))
