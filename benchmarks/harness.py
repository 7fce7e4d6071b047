"""Runs benchmarks and writes their tables, with the machine recorded beside every figure.

A benchmark is a module `benchmarks/<name>/bench.py` with `run(quick: bool) -> list[dict]`, each dict a
table: {"title", "columns", "rows", "notes"}, and optionally `skip_reason() -> str | None`: a benchmark
that cannot run on this machine (the GPU section without CUDA) is skipped with that line and its
earlier results are kept. Results go to `benchmarks/results/<name>.json` and
`benchmarks/results/<name>.md`; `benchmarks/results/README.md` indexes the latest of each.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LIBRARIES = (
    "torch",
    "transformers",
    "kronfluence",
    "traker",
    "dattri",
    "duckdb",
    "pyarrow",
    "pandas",
    "polars",
    "scikit-learn",
    "dask",
    "prefect",
    "math-verify",
    "cvxpy",
    "statsmodels",
)


def peak_rss_mb() -> float:
    """This process's peak resident set size since it started (exec), MiB: VmHWM from /proc/self/status.
    Benchmarks that compare memory run each path in its own process and read this at its end.

    Not getrusage's ru_maxrss: Linux carries the parent's peak into a child through fork and exec, so a
    worker started by a process that once held 2 GB reports at least 2 GB. ru_maxrss (KiB on Linux)
    only where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(p.parent.name for p in here.glob("*/bench.py"))


def machine() -> dict:
    import psutil

    info = {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "libraries": {},
    }
    for name in LIBRARIES:
        try:
            info["libraries"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["device"] = "cpu"
    return info


def markdown(name: str, result: dict) -> str:
    lines = [
        f"## {name}",
        "",
        (
            f"Measured {result['finished_at']} in {result['seconds']:.0f} s "
            f"({'quick' if result['quick'] else 'full'}) on {result['machine']['cores']} cores, "
            f"{result['machine']['memory_gib']} GiB, device {result['machine']['device']}."
        ),
        "",
    ]
    if result.get("error"):
        lines += ["Failed:", "", "```", result["error"], "```", ""]
    for table in result.get("tables", []):
        lines += [
            f"### {table['title']}",
            "",
            "| " + " | ".join(map(str, table["columns"])) + " |",
            "|" + "---|" * len(table["columns"]),
        ]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
        if table.get("notes"):
            lines += ["", table["notes"]]
        lines.append("")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def skip_reason(name: str) -> str | None:
    """Why benchmark `name` cannot run on this machine, or None."""
    module = importlib.import_module(f"benchmarks.{name}.bench")
    check = getattr(module, "skip_reason", None)
    return check() if check else None


def run_benchmark(name: str, quick: bool) -> dict:
    started = time.perf_counter()
    reason = skip_reason(name)
    if reason:
        return {"name": name, "skipped": reason, "seconds": time.perf_counter() - started}
    result: dict = {"name": name, "quick": quick, "machine": machine()}
    try:
        module = importlib.import_module(f"benchmarks.{name}.bench")
        result["tables"] = module.run(quick=quick)
    except Exception:  # noqa: BLE001 - a failing benchmark is reported, the others still run
        result["error"] = traceback.format_exc(limit=8)
    result["seconds"] = time.perf_counter() - started
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(markdown(name, result))
    return result


def write_index() -> Path:
    parts = ["# Benchmark results", "", "Generated by `python -m benchmarks`; do not edit by hand.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        parts.append(markdown(result["name"], result))
    index = RESULTS / "README.md"
    index.write_text("\n".join(parts))
    return index
