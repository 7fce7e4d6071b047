"""Regenerate the README's performance and reliability sections from the latest results files.

The README holds `<!-- BEGIN name -->` / `<!-- END name -->` markers; the text between them is
replaced, never typed by hand: `python -m benchmarks.readme` (also run by `python -m benchmarks`).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import available, skip_reason

README = Path(__file__).resolve().parents[1] / "README.md"


def headline(name: str, result: dict) -> str:
    """A benchmark's one-line result for the README: its module's `headline(tables) -> str` when it has one,
    else the title of its first table."""
    tables = result.get("tables") or []
    try:
        module = importlib.import_module(f"benchmarks.{name}.bench")
    except ImportError:
        module = None
    summarise = getattr(module, "headline", None)
    if summarise is not None and tables:
        return summarise(tables)
    return tables[0]["title"] if tables else ""


def performance_section() -> str:
    """A short summary table (one row per benchmark); the full tables live in benchmarks/results/README.md
    (harness.write_index), with the machine beside every figure."""
    parts = [
        (
            "Generated from `benchmarks/results/*.json` by `python -m benchmarks`. Every figure is a ratio "
            "against a peer measured in the same run; the full tables, with the machine beside each, are in "
            "[benchmarks/results/README.md](benchmarks/results/README.md)."
        ),
        "",
        "| benchmark | result | measured |",
        "|---|---|---|",
    ]
    measured = set()
    for path in sorted(harness.RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        name = result["name"]
        measured.add(path.stem)
        link = f"[{name}](benchmarks/results/README.md#{name})"
        if result.get("error"):
            parts.append(f"| {link} | failed: see the results file | {result.get('finished_at', '')[:10]} |")
            continue
        machine = result["machine"]
        when = (
            f"{result['finished_at'][:10]}, {'quick' if result['quick'] else 'full'}, "
            f"{machine['cores']} cores, {machine['device']}"
        )
        parts.append(f"| {link} | {_cell(headline(name, result))} | {when} |")
    for name in available():
        if name not in measured:
            reason = skip_reason(name)
            parts.append(
                f"| {name} | no results yet" + (f"; skipped here: {reason}" if reason else "") + " | |"
            )
    return "\n".join(parts)


def _cell(text: str) -> str:
    """Text inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def reliability_section() -> str:
    path = harness.RESULTS / "reliability.md"
    if not path.exists():
        return "No figures yet: run `scripts/reliability_figures`."
    return "Latest output of `scripts/reliability_figures`:\n\n" + path.read_text().strip()


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README.md has no <!-- BEGIN {name} --> ... <!-- END {name} --> markers")
    return pattern.sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(2), text)


def update_readme(path: Path = README) -> Path:
    text = path.read_text()
    text = replace_section(text, "performance", performance_section())
    text = replace_section(text, "reliability", reliability_section())
    path.write_text(text)
    return path


if __name__ == "__main__":
    print(f"updated {update_readme()}")
