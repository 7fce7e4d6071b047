"""Sections every run's report has (what ran, lineage, rows written, metrics) and the ingest report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps

from flows.reports import html as h
from flows.reports.lakeview import LakeView, input_runs, input_versions

Linker = Callable[[str], str | None]  # run id -> href of its report, or None


def _when(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value):
        return ""
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def overview(view: LakeView, record: dict, counts: dict[str, int], link: Linker) -> h.Section:
    started, finished = record.get("started_at"), record.get("finished_at")
    seconds = (
        (pd.Timestamp(finished) - pd.Timestamp(started)).total_seconds()
        if started is not None and not pd.isna(finished)
        else None
    )
    pairs = [
        ("run", f'<span class="mono">{h.esc(record["run_id"])}</span>'),
        ("kind / method", h.esc(f"{record['kind']} / {record['method']}")),
        ("status", h.esc(record["status"])),
        (
            "started / finished",
            h.esc(f"{_when(started)} / {_when(finished)}")
            + (h.esc(f" ({seconds:.1f} s)") if seconds is not None else ""),
        ),
        ("model", h.esc(record.get("model") or "none")),
        ("code version", h.esc(record.get("version") or "")),
    ]
    if record.get("error"):
        pairs.append(("error", h.text_block(record["error"])))
    versions = input_versions(record.get("inputs"))
    if versions:
        pairs.append(("datasets read", h.esc(", ".join(f"{k} ({v})" for k, v in versions.items()))))
    known = set(view.runs(status=None)["run_id"])
    parents = input_runs(record.get("inputs"), known - {record["run_id"]})
    if parents:
        items = []
        for run_id in parents:
            href = link(run_id)
            label = f'<span class="mono">{h.esc(run_id)}</span>'
            items.append(f'<a href="{h.esc(href)}">{label}</a>' if href else label)
        pairs.append(("runs read (lineage)", ", ".join(items)))
    written = ", ".join(f"{t} ({n})" for t, n in sorted(counts.items())) or "nothing (yet)"
    pairs.append(("rows written", h.esc(written)))
    section = h.Section("What ran").add(h.key_values(pairs))
    section.add(
        h.details("parameters", h.json_block(record.get("params"))),
        h.details("inputs", h.json_block(record.get("inputs"))),
    )
    if record["status"] != "complete":
        section.add(
            h.note(
                f"This run is {record['status']}: the lake's views show complete runs only, "
                "so its rows are not shown below."
            )
        )
    return section


def metrics_section(view: LakeView, run_id: str, title: str = "Metrics") -> h.Section | None:
    metrics = view.metrics(run_id)
    if metrics.empty:
        return None
    return h.Section(title).add(h.table(metrics, max_rows=200))


def ingest_sections(view: LakeView, record: dict) -> list[h.Section]:
    """An ingested dataset version: examples per domain and difficulty, and a few examples."""
    examples = view.rows(
        "examples", record["run_id"], "dataset, example_id, domain, difficulty, prompt, response"
    )
    if examples.empty:
        return []
    dataset = ", ".join(sorted(examples["dataset"].unique()))
    section = h.Section(f"Examples of {dataset}")
    domains = examples["domain"].fillna("(none)")
    levels = examples["difficulty"].map(lambda v: "(none)" if pd.isna(v) else f"{v:g}")
    counts = pd.crosstab(domains, levels)
    fig = h.figure(9, 3.6)
    ax = fig.add_subplot()
    bottom = np.zeros(len(counts))
    colours = colormaps["viridis"](np.linspace(0.1, 0.9, max(1, counts.shape[1])))
    for colour, level in zip(colours, counts.columns, strict=True):
        ax.barh(counts.index, counts[level], left=bottom, color=colour, label=f"difficulty {level}")
        bottom += counts[level].to_numpy()
    ax.set_xlabel("examples")
    ax.legend(
        fontsize=8,
        ncols=min(6, counts.shape[1]),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        frameon=False,
    )
    section.add(h.figure_html(fig, f"{len(examples)} examples of {dataset} by domain and difficulty"))
    section.add(
        h.table(
            examples.groupby(domains)
            .size()
            .rename("examples")
            .reset_index()
            .rename(columns={"index": "domain"})
        )
    )
    sample = examples.groupby(domains, group_keys=False).head(2)[
        ["example_id", "domain", "difficulty", "prompt", "response"]
    ]
    section.add(h.details("a few examples", h.table(sample, text_columns=("prompt", "response"))))
    return [section]
