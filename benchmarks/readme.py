"""Regenerate the README's performance and reliability sections from the latest results files.

The README holds `<!-- BEGIN name -->` / `<!-- END name -->` markers; the text between them is
replaced, never typed by hand: `python -m benchmarks.readme` (also run by `python -m benchmarks`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import available, skip_reason

README = Path(__file__).resolve().parents[1] / "README.md"


def performance_section() -> str:
    parts = [
        (
            "Generated from `benchmarks/results/*.json` by `python -m benchmarks`; full tables with the "
            "machine beside every figure: [benchmarks/results/README.md](benchmarks/results/README.md)."
        ),
        "",
    ]
    for path in sorted(harness.RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        machine = result["machine"]
        mode = "quick" if result["quick"] else "full"
        parts.append(
            f"**{result['name']}** ({mode}, {result['finished_at'][:10]}, {machine['cores']} cores, "
            f"{machine['device']})"
        )
        if result.get("error"):
            parts += ["", "failed: see the results file", ""]
            continue
        for table in result.get("tables", []):
            parts += [
                "",
                f"*{table['title']}*",
                "",
                "| " + " | ".join(map(str, table["columns"])) + " |",
                "|" + "---|" * len(table["columns"]),
            ]
            parts += [
                "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
                for row in table["rows"]
            ]
        parts.append("")
    measured = {p.stem for p in harness.RESULTS.glob("*.json")}
    for name in available():
        if name not in measured:
            reason = skip_reason(name)
            parts += [f"**{name}**: no results yet" + (f"; skipped here: {reason}." if reason else "."), ""]
    return "\n".join(parts)


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
