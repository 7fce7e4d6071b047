"""The command line's start-up cost: a 1-row `assay ingest` in a fresh process, as a user runs it.

Peers in the same run: the same ingest with `--no-prefect` (plain calls, the floor), with the default
settings (no `PREFECT_API_URL`: plain calls too, so the ratio should be about 1), and with `--prefect`
(an embedded Prefect server per process; what every command cost before Prefect became opt-in). Each
process gets a new dataset name, so every ingest writes a new version.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODES = {"plain (--no-prefect)": ["--no-prefect"], "default": [], "Prefect (--prefect)": ["--prefect"]}


def ingest_seconds(folder: Path, flags: list[str], name: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ASSAY_"))}
    env.update(ASSAY_HOME=str(folder / ".assay"), PYTHONPATH=str(REPO))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *flags, "ingest", "one.jsonl", "--dataset", name],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"assay {' '.join(flags)} ingest failed: {done.stderr[-2000:]}")
    return seconds


def run(quick: bool = True) -> list[dict]:
    repeats = {"plain (--no-prefect)": 5, "default": 5, "Prefect (--prefect)": 1 if quick else 3}
    if not quick:
        repeats = {k: v * 2 for k, v in repeats.items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        row = {"prompt": "What is 2 + 2?", "response": "2 + 2 = 4", "answer": "4"}
        (folder / "one.jsonl").write_text(json.dumps(row) + "\n")
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        order = [m for k in range(max(repeats.values())) for m in MODES if k < repeats[m]]
        for k, mode in enumerate(order):  # interleaved, so machine load hits every mode alike
            times[mode].append(ingest_seconds(folder, MODES[mode], f"bench_{k}"))
    floor = statistics.median(times["plain (--no-prefect)"])
    rows = [
        [mode, len(seconds), statistics.median(seconds), statistics.median(seconds) / floor]
        for mode, seconds in times.items()
    ]
    return [
        {
            "title": "A 1-row `assay ingest` in a fresh process (median seconds)",
            "columns": ["mode", "processes", "seconds", "vs plain"],
            "rows": rows,
            "notes": "Target: default <= 1.5x plain. Default is plain calls unless PREFECT_API_URL is set; "
            "--prefect starts an embedded Prefect server in the process.",
        }
    ]


def headline(tables: list[dict]) -> str:
    """The README's line: the default ingest against the plain path, and what Prefect costs."""
    ratio = {row[0]: row[3] for row in tables[0]["rows"]}
    return (
        f"1-row `assay ingest`: default {ratio['default']:.2f}x plain calls (target <= 1.5x); "
        f"with --prefect {ratio['Prefect (--prefect)']:.1f}x"
    )
