"""`python -m benchmarks [NAME ...] [--quick|--full]`: run benchmarks, write benchmarks/results/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import available, run_benchmark, write_index
from benchmarks.readme import update_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(available())})"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True, help="minutes on 2 cores (default)")
    mode.add_argument("--full", action="store_true", help="the full-size runs")
    parser.add_argument(
        "--results",
        type=Path,
        help="write results to this folder instead of benchmarks/results/ (the README is then left as it is)",
    )
    args = parser.parse_args(argv)
    if args.results:
        harness.RESULTS = args.results.resolve()
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(
            f"error: unknown benchmark {', '.join(unknown)}; have {', '.join(available())}", file=sys.stderr
        )
        return 2
    failed = 0
    for name in names:
        print(f"running {name} ({'full' if args.full else 'quick'}) ...", flush=True)
        result = run_benchmark(name, quick=not args.full)
        if result.get("skipped"):
            print(f"  {name}: skipped: {result['skipped']}", flush=True)
            continue
        failed += bool(result.get("error"))
        print(
            f"  {name}: {'FAILED' if result.get('error') else 'ok'} in {result['seconds']:.0f} s", flush=True
        )
    index = write_index()
    print(f"wrote {index}; " + ("README left as it is" if args.results else f"updated {update_readme()}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
