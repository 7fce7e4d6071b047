"""HTML run reports: one self-contained static page per run (inline CSS, charts as inline PNG, no scripts).

    write_report(lake, run_id, out=None) -> Path      # default: $ASSAY_HOME/reports/<run_id>.html
    write_demo_report(lake, out_dir=None) -> Path     # every complete run: <out_dir>/<run_id>.html + index.html
    report_link_artifact(run_id, path)                # a Prefect markdown artifact linking the report (in flows)

Reports read lake views only (`runs`, `scores`, `samples`, `labels`, `weights`, `metrics`, ...), so they
work whatever stage wrote the rows. Which sections a run gets follows its kind (`attribute`, `curate`,
`unlearn`, `ingest`) and the tables it wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from flows.reports import attribution, curation, runinfo, unlearning
from flows.reports import html as h
from flows.reports.lakeview import LakeView
from storage import Lake

KIND_ORDER = ("ingest", "attribute", "unlearn", "curate", "export")
KIND_TITLES = {"attribute": "Attribution", "curate": "Curation", "unlearn": "Unlearning", "ingest": "Ingest"}


def default_report_dir() -> Path:
    from flows.runtime import state_dir

    return state_dir() / "reports"


def default_report_path(run_id: str) -> Path:
    return default_report_dir() / f"{run_id}.html"


def _module_for(record: dict, counts: dict[str, int]):
    kind = record["kind"]
    if kind == "attribute" or (kind not in ("curate", "unlearn") and "scores" in counts):
        return attribution
    if kind == "unlearn":
        return unlearning
    if kind == "curate" or counts.keys() & {"samples", "weights", "labels", "mixture_schedule"}:
        return curation
    return None


def render_run(
    view: LakeView, run_id: str, link: Callable[[str], str | None] = lambda _: None
) -> h.RunReport:
    """The report of one run (UserError for an id the lake does not know)."""
    record = view.run(run_id)
    counts = view.counts(run_id)
    sections = [runinfo.overview(view, record, counts, link)]
    module = _module_for(record, counts)
    if record["kind"] == "ingest":
        sections += runinfo.ingest_sections(view, record)
        summary = f"Ingest of a dataset version: {counts.get('examples', 0)} examples."
    elif module is not None:
        sections += module.sections(view, record)
        summary = module.summary(view, record, counts)
    else:
        summary = f"{record['kind']} run of {record['method']}."
    metrics = runinfo.metrics_section(view, run_id, "All metrics of this run")
    if metrics is not None:
        sections.append(metrics)
    title = f"{KIND_TITLES.get(record['kind'], record['kind'].title())}: {record['method']}"
    return h.RunReport(run_id, f"{title} ({run_id})", summary, sections)


def report_html(lake: Lake, run_id: str, link: Callable[[str], str | None] = lambda _: None) -> str:
    with LakeView(lake) as view:
        report = render_run(view, run_id, link)
    return h.page(f"assay report: {run_id}", f"lake {lake.root}", report.html())


def write_report(lake: Lake, run_id: str, out: str | Path | None = None) -> Path:
    """Render one run's report and write it atomically; returns the file's path.

    Runs it read (its lineage) link to their reports when those sit beside it in the same folder."""
    out = Path(out) if out is not None else default_report_path(run_id)
    with LakeView(lake) as view:
        report = render_run(
            view, run_id, lambda r: f"{r}.html" if (out.parent / f"{r}.html").exists() else None
        )
    text = h.page(f"assay report: {run_id}", f"lake {lake.root}", report.html())
    path = h.write_atomic(out, text).absolute()
    report_link_artifact(run_id, path, summary=report.summary)
    return path


def _ordered_runs(view: LakeView) -> pd.DataFrame:
    runs = view.runs()
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    runs["_rank"] = runs["kind"].map(lambda k: rank.get(k, len(rank)))
    return runs.sort_values(["_rank", "started_at", "run_id"], kind="stable")


def write_demo_report(lake: Lake, out_dir: str | Path | None = None) -> Path:
    """A report of every complete run: `<out_dir>/<run_id>.html` each, and `index.html` holding all of them
    (overview, links, and every run's sections on one page). Returns the index's path."""
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir()
    with LakeView(lake) as view:
        runs = _ordered_runs(view)
        ids = set(runs["run_id"])
        reports = [
            render_run(view, run_id, link=lambda r: f"#{h.anchor(r)}" if r in ids else None)
            for run_id in runs["run_id"]
        ]
        counts = {r: view.counts(r) for r in runs["run_id"]}
    for report in reports:
        standalone = h.page(
            f"assay report: {report.run_id}",
            f"lake {lake.root}",
            report.html().replace('href="#run-', 'href="index.html#run-'),
        )
        report_link_artifact(report.run_id, h.write_atomic(out_dir / f"{report.run_id}.html", standalone))
    rows = []
    for record, report in zip(runs.to_dict("records"), reports, strict=True):
        seconds = (pd.Timestamp(record["finished_at"]) - pd.Timestamp(record["started_at"])).total_seconds()
        rows.append(
            f'<tr><td><a href="#{h.esc(h.anchor(report.run_id))}" class="mono">{h.esc(report.run_id)}</a>'
            f"</td><td>{h.esc(record['kind'])}</td><td>{h.esc(record['method'])}</td>"
            f'<td class="num">{seconds:.1f}</td>'
            f"<td>{h.esc(', '.join(f'{t} {n}' for t, n in sorted(counts[report.run_id].items())))}</td>"
            f'<td><a href="{h.esc(report.run_id)}.html">own page</a></td></tr>'
        )
    overview = (
        '<section class="run"><h2>Runs in this lake</h2>'
        + h.note(
            "Every complete run, in pipeline order. Each run's report follows below and is also "
            "written as its own page beside this one."
        )
        + "<table><thead><tr><th>run</th><th>kind</th><th>method</th><th>seconds</th>"
        "<th>rows written</th><th>page</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + "</section>"
    )
    body = overview + "\n".join(r.html(heading_link=f"{r.run_id}.html") for r in reports)
    if not reports:
        body = h.note(f"The lake at {lake.root} has no complete runs yet.")
    index = h.page("assay report: every run", f"lake {lake.root} · {len(reports)} runs", body)
    path = h.write_atomic(out_dir / "index.html", index).absolute()
    report_link_artifact("index", path, title="assay report of every run in the lake")
    return path


def report_link_artifact(
    run_id: str, path: str | Path, title: str | None = None, summary: str | None = None
) -> str | None:
    """Inside a Prefect flow or task run: a markdown artifact (key `report-<run id>`) linking the run's
    report; elsewhere nothing. `write_report` and `write_demo_report` call it for every page they write.

    Returns the artifact's id, or None outside Prefect runs."""
    import sys

    if "prefect" not in sys.modules:  # not inside a flow: don't import Prefect to find out
        return None
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    path = Path(path).absolute()
    key = re.sub(r"[^a-z0-9-]+", "-", f"report-{run_id}".lower()).strip("-")
    title = title or f"assay report of run {run_id}"
    markdown = f"[{title}]({path.as_uri()})\n\nFile: `{path}`"
    if summary:
        markdown += f"\n\n{summary}"
    artifact = create_markdown_artifact(markdown=markdown, key=key, description=title)
    return str(artifact)
