"""The self-contained report page: inline CSS, charts as inline PNG from matplotlib, no scripts, no network.

Every piece of lake text goes through `esc` before it reaches the page. Figures are built with
`matplotlib.figure.Figure` (no pyplot), so rendering a report never touches global plotting state.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure

# Diverging: red = harmful (negative influence), blue = helpful (positive). assay's sign convention.
INFLUENCE_CMAP = "RdBu"
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header.page{background:#1d3557;color:#fff;padding:18px 28px}
header.page h1{margin:0;font-size:1.5em} header.page p{margin:4px 0 0;opacity:.85}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
section.run{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:22px 0;padding:6px 20px 18px}
h2{font-size:1.3em;border-bottom:2px solid #1d3557;padding-bottom:4px}
h3{font-size:1.08em;margin:22px 0 8px;color:#1d3557}
table{border-collapse:collapse;margin:8px 0;font-size:.86em}
th,td{border:1px solid #d5d9de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
pre.text{white-space:pre-wrap;word-break:break-word;max-height:18em;overflow:auto;margin:2px 0;
 background:#f8f9fb;padding:4px 6px;border-radius:3px}
figure{margin:10px 0} figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:.84em;color:#4a5562}
p.note{color:#4a5562;font-size:.9em}
details{margin:6px 0;border:1px solid #e3e6ea;border-radius:4px;padding:4px 8px;background:#fcfcfd}
summary{cursor:pointer;font-weight:600}
.tokens{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.84em;white-space:pre-wrap;
 word-break:break-word;line-height:1.75;border:1px solid #e3e6ea;padding:6px 8px;background:#fff}
.tokens span{border-radius:2px}
.kv td:first-child{font-weight:600;white-space:nowrap}
nav.toc ul{columns:2;font-size:.9em} nav.toc li{margin:2px 0}
.pill{display:inline-block;padding:0 7px;border-radius:9px;background:#e4e9f2;font-size:.8em;margin-left:6px}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def anchor(run_id: str) -> str:
    return "run-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in run_id)


@dataclass
class Section:
    """One titled block of a run's report: an html fragment built from escaped pieces."""

    title: str
    parts: list[str] = field(default_factory=list)

    def add(self, *fragments: str) -> Section:
        self.parts.extend(fragments)
        return self

    def html(self) -> str:
        return f"<h3>{esc(self.title)}</h3>\n" + "\n".join(self.parts)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def text_block(text: Any, limit: int = 1500) -> str:
    value = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    if len(value) > limit:
        value = value[:limit] + f"\n... ({len(value) - limit} more characters)"
    return f'<pre class="text">{esc(value)}</pre>'


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return ""
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(value)


def table(
    frame: pd.DataFrame, max_rows: int = 50, text_columns: Sequence[str] = (), text_limit: int = 600
) -> str:
    """An html table of a frame; `text_columns` become wrapped text blocks, everything is escaped."""
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = []
    for record in frame.head(max_rows).itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            if column in text_columns:
                cells.append(f"<td>{text_block(value, text_limit)}</td>")
            elif isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
                cells.append(f'<td class="num">{esc(fmt(value))}</td>')
            else:
                cells.append(f"<td>{esc(fmt(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        note(f"{len(frame) - max_rows} more rows not shown (query the lake for all of them).")
        if len(frame) > max_rows
        else ""
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def json_block(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            return text_block(value)
    return f'<pre class="text">{esc(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>'


# ---------------------------------------------------------------------------------------- figures
def figure(width: float = 9.0, height: float = 4.0) -> Figure:
    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def figure_html(fig: Figure, caption: str, alt: str | None = None) -> str:
    """The figure as an inline PNG (data URI) with its caption."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{esc(alt or caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def diverging_limit(values: np.ndarray, quantile: float = 0.98) -> float:
    """A symmetric colour limit: a high quantile of |values|, so one extreme value does not wash out the rest."""
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return 1.0
    limit = float(np.quantile(finite, quantile))
    return limit if limit > 0 else (float(finite.max()) or 1.0)


def token_heatmap(
    tokens: Sequence[str], scores: Sequence[float], limit: float | None = None, cmap: str = INFLUENCE_CMAP
) -> str:
    """Text with each token's background coloured by its score (escaped; the score is in the tooltip)."""
    values = np.asarray(scores, dtype=np.float64)
    limit = limit or diverging_limit(values)
    colours = colormaps[cmap](Normalize(-limit, limit, clip=True)(values))
    spans = []
    for token, value, rgba in zip(tokens, values, colours, strict=True):
        luminance = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
        ink = "#000" if luminance > 0.5 else "#fff"
        spans.append(
            f'<span style="background:{to_hex(rgba)};color:{ink}" title="{esc(fmt(value))}">'
            f"{esc(token)}</span>"
        )
    return f'<div class="tokens">{"".join(spans)}</div>'


def colour_scale(limit: float, label: str, cmap: str = INFLUENCE_CMAP) -> str:
    """A matplotlib colour bar for the token heatmaps of one section."""
    fig = figure(6.0, 0.9)
    ax = fig.add_subplot()
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(Normalize(-limit, limit), colormaps[cmap]), cax=ax, orientation="horizontal")
    ax.set_xlabel(label)
    return figure_html(fig, f"colour scale: {label} (red harmful, blue helpful; clipped at ±{fmt(limit)})")


# ---------------------------------------------------------------------------------------- pages
@dataclass
class RunReport:
    """The rendered report of one run: its heading and sections."""

    run_id: str
    title: str
    summary: str
    sections: list[Section]

    def html(self, heading_link: str | None = None) -> str:
        link = f' <a class="pill" href="{esc(heading_link)}">own page</a>' if heading_link else ""
        body = "\n".join(s.html() for s in self.sections)
        return (
            f'<section class="run" id="{esc(anchor(self.run_id))}"><h2>{esc(self.title)}{link}</h2>'
            f"{note(self.summary)}\n{body}</section>"
        )


def page(title: str, subtitle: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Nothing is fetched: no scripts, styles inline, images are data URIs.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header class="page"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>'
        f"<main>{body}</main></body></html>\n"
    )


def write_atomic(path: Path, text: str) -> Path:
    """Write text beside its destination and rename it into place: readers never see half a page."""
    from storage.outputs import write_file_atomically

    write_file_atomically(path, text.encode("utf-8"))
    return Path(path)
