"""Report of an `unlearn` run from its `metrics` rows: KLoM per split beside the floor and the ceiling,
and forget / retain loss before and after unlearning (beside a retrained model when there is one).

Rows are read by what their name and key say, so the report does not depend on one spelling: the
split is whichever of forget / retain / val(idation) / test appears in name or key, and the series
is the rest (e.g. name `klom95`, key `forget`: series `klom95`, split forget; name `loss`, key
`forget/after`: series `after`, split forget). KLoM rows carry `klom` in their name; loss rows `loss`.
Floor rows mention floor / oracle; ceiling rows ceiling / do_nothing.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib import colormaps

from flows.reports import html as h
from flows.reports.lakeview import LakeView

SPLITS = {
    "forget": "forget",
    "retain": "retain",
    "val": "validation",
    "validation": "validation",
    "valid": "validation",
    "test": "test",
}
SPLIT_ORDER = ["forget", "retain", "validation", "test"]
STAGE_ORDER = ["before", "after", "retrained", "oracle"]


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def parse(metrics: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of one kind ('klom' or 'loss') as (split, series, value); rows naming no split are left out."""
    rows = []
    for name, key, value in metrics[["name", "key", "value"]].itertuples(index=False):
        words = _tokens(f"{name} {key}")
        if not any(kind in w for w in words):
            continue
        split = next((SPLITS[w] for w in words if w in SPLITS), None)
        if split is None:
            continue
        series = [w for w in words if w not in SPLITS and (kind not in w or kind == "klom")]
        rows.append({"split": split, "series": "_".join(series) or kind, "value": float(value)})
    return pd.DataFrame(rows, columns=["split", "series", "value"])


def _role(series: str) -> str:
    words = set(series.split("_"))
    if words & {"floor", "oracle"}:
        return "floor"
    if words & {"ceiling", "nothing", "donothing"}:
        return "ceiling"
    return "run"


def _grouped_bars(ax, frame: pd.DataFrame, series_order: list[str], colour_of) -> None:
    splits = [s for s in SPLIT_ORDER if s in set(frame["split"])]
    width = 0.8 / max(1, len(series_order))
    for i, series in enumerate(series_order):
        own = frame[frame["series"] == series].groupby("split")["value"].mean().reindex(splits)
        x = np.arange(len(splits)) + (i - (len(series_order) - 1) / 2) * width
        bars = ax.bar(x, own.to_numpy(), width, color=colour_of(series, i), label=series.replace("_", " "))
        ax.bar_label(bars, [h.fmt(v) for v in own.to_numpy()], fontsize=7)
    ax.set_xticks(np.arange(len(splits)), splits)
    ax.legend(fontsize=8)


def klom(metrics: pd.DataFrame) -> h.Section | None:
    frame = parse(metrics, "klom")
    if frame.empty:
        return None
    order = sorted(
        frame["series"].unique(), key=lambda s: ({"floor": 0, "run": 1, "ceiling": 2}[_role(s)], s)
    )
    palette = {"floor": "#7fb77e", "ceiling": "#c0392b"}
    runs = [s for s in order if _role(s) == "run"]

    def colour(series: str, _: int) -> str:
        role = _role(series)
        if role in palette:
            return palette[role]
        return colormaps["Blues"](0.5 + 0.4 * runs.index(series) / max(1, len(runs)))

    return _bars_section(
        frame,
        order,
        colour,
        "KLoM (lower is closer to retraining)",
        "KLoM per split, beside the floor and the ceiling",
        "KL divergence of margins between unlearned models and oracles retrained "
        "without the forget set. Floor: oracle vs oracle; ceiling: doing nothing.",
    )


def _bars_section(
    frame: pd.DataFrame, order: list[str], colour, ylabel: str, title: str, caption: str
) -> h.Section:
    """Grouped bars of value per (series, split), with the same numbers as a table below."""
    fig = h.figure(9, 3.8)
    ax = fig.add_subplot()
    _grouped_bars(ax, frame, order, colour)
    ax.set_ylabel(ylabel)
    section = h.Section(title)
    section.add(h.figure_html(fig, caption))
    section.add(h.table(frame.pivot_table(index="series", columns="split", values="value").reset_index()))
    return section


def losses(metrics: pd.DataFrame) -> h.Section | None:
    frame = parse(metrics, "loss")
    if frame.empty:
        return None
    order = sorted(
        frame["series"].unique(),
        key=lambda s: (next((i for i, w in enumerate(STAGE_ORDER) if w in s.split("_")), 9), s),
    )
    colours = {"before": "#9aa7b8", "after": "#1d6fb8", "retrained": "#7fb77e", "oracle": "#7fb77e"}

    def colour(series: str, i: int) -> str:
        word = next((w for w in STAGE_ORDER if w in series.split("_")), None)
        return colours.get(word, colormaps["tab10"](i % 10))

    return _bars_section(
        frame,
        order,
        colour,
        "mean loss",
        "Forget and retain loss, before and after unlearning",
        "Unlearning should move the forget loss toward the retrained model's while the retain loss holds",
    )


def sections(view: LakeView, record: dict) -> list[h.Section]:
    metrics = view.metrics(record["run_id"])
    found = [klom(metrics), losses(metrics)]
    out = [s for s in found if s is not None]
    if not out:
        out.append(
            h.Section("Unlearning").add(
                h.note(
                    "This run wrote no KLoM or loss metrics naming a split (forget / retain / validation)."
                )
            )
        )
    return out


def summary(view: LakeView, record: dict, counts: dict[str, int]) -> str:
    return f"Unlearning with {record['method']}: {counts.get('metrics', 0)} metric rows."
