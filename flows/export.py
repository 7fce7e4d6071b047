"""The export job: a curation run (one that wrote `weights`) as a fine-tuning dataset folder.

The writing itself is `curation.exporter.export_run` (records, schedule, dataset card, all
written aside and renamed into place). A folder that holds an earlier assay export (its output marker
says `assay export`) is replaced, so a recipe can be rerun; any other non-empty folder is refused.
"""

from __future__ import annotations

from pathlib import Path

from flows.runtime import flow, step
from flows.tasks import cached, publish_summary
from storage import Lake

EXPORT_MARK = "Exported by assay from run `"


def is_assay_export(out: str | Path) -> bool:
    from curation.exporter import EXPORT_WRITER
    from storage.outputs import marker_writer

    return marker_writer(Path(out)) == EXPORT_WRITER


def export_holds(result: dict) -> bool:
    """Does the folder still hold the export of this run (a cached result is only good then)?"""
    card = Path(result["path"]) / "README.md"
    return card.is_file() and f"{EXPORT_MARK}{result['run_id']}`" in card.read_text(
        encoding="utf-8", errors="replace"
    )


# A complete run never changes, so the same export of the same run is safe to reuse from the cache.
@step(name="export-run", task_run_name="export-{run_id}", retry=True, cache=True)
def export_run_step(
    lake_root: str,
    run_id: str,
    out: str,
    fmt: str = "jsonl",
    style: str = "chat",
    materialise: bool = False,
    force: bool = False,
    seed: int = 0,
    languages: list[str] | None = None,
) -> dict:
    from curation.exporter import export_run

    result = export_run(
        Lake(lake_root),
        run_id,
        Path(out),
        fmt=fmt,
        style=style,
        materialise=materialise,
        force=force or is_assay_export(out),
        seed=seed,
        languages=languages,
    )
    return {
        "run_id": run_id,
        "path": str(result.path),
        "rows": int(result.rows),
        "format": fmt,
        "files": list(result.files),
        "order": result.order,
    }


def export_step(
    lake_root: str,
    run_id: str,
    out: str,
    fmt: str = "jsonl",
    style: str = "chat",
    materialise: bool = False,
    force: bool = False,
    seed: int = 0,
    languages: list[str] | None = None,
) -> dict:
    """Export, reusing a cached export only while the folder still holds it (the exporter creates missing
    parent folders)."""
    out = str(Path(out).expanduser().absolute())
    return cached(
        export_run_step,
        str(Lake(lake_root).root),
        run_id,
        out,
        fmt,
        style,
        materialise,
        force,
        seed,
        languages,
        valid=export_holds,
    )


@flow(name="export", log_prints=False)
def export_flow(
    run_id: str,
    out: str,
    fmt: str = "jsonl",
    lake_root: str | None = None,
    style: str = "chat",
    materialise: bool = False,
    force: bool = False,
    seed: int = 0,
    languages: list[str] | None = None,
) -> dict:
    lake = Lake(lake_root)
    result = export_step(str(lake.root), run_id, out, fmt, style, materialise, force, seed, languages)
    publish_summary(
        f"export-{run_id}",
        f"Export of {run_id}",
        lake,
        [run_id],
        {"folder": result["path"], "rows": result["rows"], "format": fmt},
    )
    return result
