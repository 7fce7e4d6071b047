"""The LM unlearning path's costs on the quick demo's corpus and reference model, each optimised part timed
against its unoptimised peer in the same process (issue 23's unlearning bullet):

- kronfluence's per-phase release_memory with gc.collect (its own) against ours, which skips the
  collection on CPU (attribution/ekfac.py), over an EK-FAC fit and scoring;
- DMM's fine-tuning and the evaluation passes in sub-batches of similar length (length_buckets) against
  one padded batch per step (the same losses and gradients up to rounding: tests/attribution/
  test_unlearn_buckets.py);
- scoring the fine-tuning points with the attribution run's kept EK-FAC factors against fitting them
  again (the same scores: tests/attribution/test_unlearn_factor_reuse.py).

Each pair runs alternately, `repeats` times, and the table shows each side's median; the end-to-end
demo is timed outside the harness (the issue's report gives both numbers).
"""

from __future__ import annotations

import copy
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flows.demo import SIZES


def _alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run in turns (a, b, a, b, ...) so machine load hits both alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


class _QuickDemo:
    """The quick demo's training set, reference model, and DMM fine-tuning set (forget: the hardest code)."""

    def __init__(self, folder: Path):
        from attribution.reference_model import reference_model
        from attribution.stages.unlearn_work import load_model
        from attribution.unlearning.dmm import finetune_points
        from curation.corpus import demo_corpus

        corpus = demo_corpus(**SIZES[True]["corpus"])
        self.train = [{**r, "example_id": r["id"]} for r in corpus["train"]]
        model_dir = reference_model(corpus["train"], folder, **SIZES[True]["model"])
        self.model, self.tokenizer = load_model(model_dir, torch.device("cpu"))
        forget = np.array(
            [i for i, r in enumerate(self.train) if r["domain"] == "code" and r["difficulty"] >= 5]
        )
        retain = np.setdiff1d(np.arange(len(self.train)), forget)
        sequence, points = finetune_points(forget, retain)
        local = {int(p): k for k, p in enumerate(points)}
        self.points = [self.train[p] for p in points] + list(corpus["targets"])
        self.sequence = np.concatenate(
            [[local[int(i)] for i in sequence], np.arange(len(points), len(self.points))]
        ).astype(np.int64)
        self.n_forget = len(forget)


def _release_rows(demo: _QuickDemo, repeats: int) -> list[list]:
    import kronfluence.computer.computer
    import kronfluence.score.dot_product

    from attribution import ekfac
    from attribution.lm_data import collate, encode_sft
    from attribution.tasks import CausalLMTask, select_modules

    items = [
        {k: v for k, v in encode_sft(demo.tokenizer, r, 384).items() if k != "offsets"} for r in demo.train
    ]
    modules = (kronfluence.computer.computer, kronfluence.score.dot_product)

    def fit_and_score(release: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            for module in modules:
                module.release_memory = release
            try:
                model = copy.deepcopy(demo.model)
                with tempfile.TemporaryDirectory() as tmp:
                    scorer = ekfac.InfluenceScorer(
                        model,
                        CausalLMTask(select_modules(model, "mlp")),
                        tmp,
                        ekfac.InfluenceConfig(),
                        torch.device("cpu"),
                        lambda b: collate(b, demo.tokenizer.pad_token_id),
                    )
                    scorer.fit(items)
                    scorer.score(items[:8], items)
            finally:
                for module in modules:
                    module.release_memory = ekfac.release_memory_unless_cpu

        return run

    counted = []
    real_collect = gc.collect
    gc.collect = lambda *a: counted.append(1) or real_collect(*a)
    try:
        fit_and_score(ekfac.kronfluence_release_memory)()
    finally:
        gc.collect = real_collect
    times = _alternate(
        {
            "kronfluence": fit_and_score(ekfac.kronfluence_release_memory),
            "ours": fit_and_score(ekfac.release_memory_unless_cpu),
        },
        repeats,
    )
    objects = len(gc.get_objects())
    return [
        [
            f"EK-FAC fit + scoring ({len(items)} examples, {len(counted)} phase releases, {objects / 1e6:.1f}M objects)",
            "release_memory without gc.collect on CPU",
            f"{times['ours']:.2f} s",
            f"{times['kronfluence']:.2f} s (with gc.collect)",
            f"{times['kronfluence'] / times['ours']:.2f}x",
        ]
    ]


def _bucket_rows(demo: _QuickDemo, repeats: int) -> list[list]:
    from attribution.unlearning import lm
    from attribution.unlearning.loop import OptimConfig, optimise

    data = lm.EncodedSet(demo.tokenizer, demo.points, 384)
    with torch.no_grad():
        base = lm.per_token_logprobs(demo.model, data)
    targets = [np.minimum(b - 0.1, 0.0) for b in base]
    config = OptimConfig(lr=1e-3, epochs=2, batch_size=32)  # the demo's DMM settings, 2 of its 10 epochs

    def finetune(ratio: float | None) -> Callable[[], None]:
        def run() -> None:
            model = copy.deepcopy(demo.model)
            optimise(
                model,
                len(demo.sequence),
                lambda idx: lm.matching_loss(model, data, targets, demo.sequence[idx], ratio),
                config,
            )

        return run

    def evaluate(ratio: float | None) -> Callable[[], None]:
        return lambda: lm.mean_losses(demo.model, data, ratio=ratio)

    lengths = data.lengths[demo.sequence]
    rng = np.random.default_rng(0)
    random_batches = [rng.permutation(len(lengths)) for _ in range(20)]
    padded = np.mean([lm.padded_tokens(lengths, order, 32) for order in random_batches])
    bucketed = np.mean(
        [
            sum(
                len(b) * lengths[order[s : s + 32]][b].max()
                for s in range(0, len(order), 32)
                for b in lm.length_buckets(lengths[order[s : s + 32]])
            )
            for order in random_batches
        ]
    )
    train = _alternate({"ours": finetune(lm.BUCKET_RATIO), "plain": finetune(None)}, repeats)
    passes = _alternate({"ours": evaluate(lm.BUCKET_RATIO), "plain": evaluate(None)}, repeats)
    real = int(lengths.sum())
    return [
        [
            f"DMM fine-tuning, 2 epochs of {len(demo.sequence)} items in batches of 32 (|F| = {demo.n_forget})",
            f"sub-batches of similar length ({bucketed / real:.2f}x the real tokens)",
            f"{train['ours']:.2f} s",
            f"{train['plain']:.2f} s (one padded batch, {padded / real:.2f}x)",
            f"{train['plain'] / train['ours']:.2f}x",
        ],
        [
            f"loss pass over the {len(data)} fine-tuning points, batches of 16",
            "length-sorted batches",
            f"{passes['ours']:.2f} s",
            f"{passes['plain']:.2f} s (in record order)",
            f"{passes['plain'] / passes['ours']:.2f}x",
        ],
    ]


def _factor_rows(demo: _QuickDemo, repeats: int) -> list[list]:
    import shutil

    from attribution.api import attribute

    distinct = demo.points

    def score(work: Path | None) -> Callable[[], None]:
        def run() -> None:
            if work is None:
                attribute(
                    demo.model, demo.train, distinct, tokenizer=demo.tokenizer, method="ekfac", max_length=384
                )
                return
            with tempfile.TemporaryDirectory() as tmp:  # a fresh copy each time, as unlearn makes it
                shutil.copytree(work / "kronfluence", Path(tmp) / "kronfluence", ignore=_targets)
                attribute(
                    demo.model,
                    demo.train,
                    distinct,
                    tokenizer=demo.tokenizer,
                    method="ekfac",
                    max_length=384,
                    work_dir=tmp,
                )

        return run

    with tempfile.TemporaryDirectory() as kept:  # the attribution run's factors
        attribute(
            demo.model,
            demo.train,
            distinct[:2],
            tokenizer=demo.tokenizer,
            method="ekfac",
            max_length=384,
            work_dir=kept,
        )
        times = _alternate({"ours": score(Path(kept)), "refit": score(None)}, repeats)
    return [
        [
            f"EK-FAC scores of {len(demo.train)} training examples on {len(distinct)} fine-tuning points",
            "the attribution run's factors (copied)",
            f"{times['ours']:.2f} s",
            f"{times['refit']:.2f} s (factors fitted again)",
            f"{times['refit'] / times['ours']:.2f}x",
        ]
    ]


def _targets(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("targets_")]  # the kept factors hold no target gradients


def speed_tables(quick: bool = True) -> list[dict]:
    torch.set_num_threads(1)
    repeats = 2 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        demo = _QuickDemo(Path(tmp))
        rows = _bucket_rows(demo, repeats) + _factor_rows(demo, repeats) + _release_rows(demo, repeats)
    return [
        {
            "title": "LM unlearning on the quick demo: each optimisation against the unoptimised path, same run",
            "columns": ["work", "ours", "time", "peer time", "peer / ours"],
            "rows": rows,
            "notes": (
                f"Quick demo corpus ({len(demo.train)} training examples) and reference model, one thread, "
                f"medians of {repeats} alternating runs. Sub-batches: each optimiser step's batch is cut "
                "where lengths drop by 25%; the steps, their examples and the gradients are the same "
                "(length-grouped batch order is off below 8 batches an epoch, as here). A full collection "
                "walks every object the collector tracks in the process (the count in the gc row: this "
                "benchmark's own), so its cost grows with the process's heap, not with the model."
            ),
        }
    ]


if __name__ == "__main__":  # this table alone: python -m benchmarks.unlearning.speed
    from datetime import UTC, datetime

    from benchmarks.harness import machine, markdown

    started = time.perf_counter()
    tables = speed_tables(quick=True)
    result = {
        "quick": True,
        "machine": machine(),
        "tables": tables,
        "seconds": time.perf_counter() - started,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(markdown("unlearning (speed section)", result))
