"""`python -m benchmarks [NAME ...] [--quick|--full]`: run benchmarks, write benchmarks/results/."""

from __future__ import annotations

import argparse
import sys

from benchmarks.harness import available, run_benchmark, write_index
from benchmarks.readme import update_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(available())})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True, help="minutes on 2 cores (default)")
    mode.add_argument("--full", action="store_true", help="the full-size runs")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"error: unknown benchmark {', '.join(unknown)}; have {', '.join(available())}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"running {name} ({'full' if args.full else 'quick'}) ...", flush=True)
        result = run_benchmark(name, quick=not args.full)
        failed += bool(result.get("error"))
        print(f"  {name}: {'FAILED' if result.get('error') else 'ok'} in {result['seconds']:.0f} s", flush=True)
    print(f"wrote {write_index()}; updated {update_readme()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
