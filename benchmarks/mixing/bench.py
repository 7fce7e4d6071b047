"""Mixing benchmark: (a) the "Upsample or Upweight?" reproduction, (b) materialising at scale with Dask,
(c) the cost of applying `loss_weight` in training (curation/training.py's trainers against their bases).

(a) The reference model (`attribution.reference_model`: Qwen2 from a config, tokenizer trained locally)
    is fine-tuned on an imbalanced two-group mixture from the demo corpus (90% synthetic math, 10%
    HumanEval code) under
    proportional sampling, temperature sampling (tau = 5), scalarization (proportional draws, loss
    weights p(5)/p(1)) and Cooldown (tau 5 then 1 at the midpoint). Every arm runs the same number of
    optimizer steps from the same initial weights; held-out loss per group is measured along the way.
    The batches come from `curation.mixing.sample_steps` in step order: `finetune_causal_lm` shuffles
    its records uniformly, which would erase a schedule, so the loop here reuses its encoding and loss.
(b) Copies per example for a temperature mixture over a 10-million-row examples table (in both
    modes; about a minute), read from Parquet by dask.dataframe on a LocalCluster (2 workers, 2 GB each), written back as
    Parquet. Peer: the same computation in one pandas process. The two results are compared exactly
    (the rounding coin is a keyed hash of the example id, so chunking does not change the answer).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from curation import mixing

TAU = 5.0


# ============================================================================ (a) reproduction
def _corpus(math_per_level: int, test_per_level: int) -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """90% math / 10% code training records, and held-out records per group.

    The demo corpus's level-4 generator has only 84 distinct questions, so math per level stays below
    that (train + held out); code is HumanEval minus every 5th task, which is held out."""
    from curation.corpus import humaneval_records, math_problems

    code = humaneval_records()
    code_test = [r for i, r in enumerate(code) if i % 5 == 0]
    math_train = math_problems(math_per_level, seed=0)
    code_train = [r for i, r in enumerate(code) if i % 5 != 0][: round(len(math_train) / 9)]
    math_test = math_problems(
        test_per_level, seed=1000, prefix="math-test", exclude={r["prompt"] for r in math_train}
    )
    train = math_train + code_train
    return train, [r["domain"] for r in train], {"math": math_test, "code": code_test}


def _tokenizer_and_model(texts: list[str], hidden: int, layers: int, seed: int) -> tuple[Any, Any]:
    """The project's reference model (Qwen2 architecture from a config) and its locally trained tokenizer."""
    from attribution.reference_model import build_model, build_tokenizer

    tokenizer = build_tokenizer(texts, vocab_size=1024)
    model = build_model(
        tokenizer, seed=seed, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers
    )
    return tokenizer, model


def _on(model: Any, batch: dict) -> dict:
    from attribution.training import move_to_device

    return move_to_device(batch, model.device)


def _held_out_loss(model: Any, encoded: dict[str, list], pad: int) -> dict[str, float]:
    import torch

    from attribution.lm_data import collate
    from attribution.training import sft_loss

    loss_fn = sft_loss("mean")
    model.eval()
    out = {}
    with torch.no_grad():
        for group, items in encoded.items():
            losses = [
                loss_fn(model, _on(model, collate(items[i : i + 16], pad))) for i in range(0, len(items), 16)
            ]
            out[group] = float(torch.cat(losses).mean())
    model.train()
    return out


def _train_arm(
    init_state: dict,
    model: Any,
    train_items: list,
    test_items: dict[str, list],
    pad: int,
    sequence: pd.DataFrame,
    loss_weight: np.ndarray,
    lr: float,
    evals: list[int],
) -> list[dict[str, float]]:
    import torch

    from attribution.lm_data import collate
    from attribution.training import sft_loss

    model.load_state_dict(init_state)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = sft_loss("mean")
    curve = []
    for step, batch in sequence.groupby("step", sort=True):
        idx = batch["index"].to_numpy()
        w = torch.tensor(loss_weight[idx], dtype=torch.float32, device=model.device)
        loss = (loss_fn(model, _on(model, collate([train_items[i] for i in idx], pad))) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step + 1 in evals:
            curve.append({"step": step + 1, **_held_out_loss(model, test_items, pad)})
    return curve


REPRODUCTION_SIZES = {
    True: {
        "steps": 240,
        "batch": 8,
        "max_len": 160,
        "hidden": 64,
        "layers": 2,
        "seeds": (0, 1),
        "math_per_level": 60,
        "test_per_level": 4,
    },
    False: {
        "steps": 500,
        "batch": 16,
        "max_len": 256,
        "hidden": 128,
        "layers": 4,
        "seeds": (0, 1, 2),
        "math_per_level": 70,
        "test_per_level": 8,
    },
}


def reproduction(quick: bool, device: str = "cpu", size: dict | None = None) -> list[dict]:
    """The mixing arms trained on `device` (the GPU section runs the full size on CUDA)."""
    import torch

    from attribution.lm_data import pad_id
    from attribution.training import encode_records

    if device == "cpu":
        torch.set_num_threads(1 if quick else max(1, os.cpu_count() or 1))  # quick: a shared 2-core box
    size = size or REPRODUCTION_SIZES[quick]
    steps, batch, max_len = size["steps"], size["batch"], size["max_len"]
    hidden, layers, seeds = size["hidden"], size["layers"], tuple(size["seeds"])
    train, groups, tests = _corpus(size["math_per_level"], size["test_per_level"])
    n_math, n_code = groups.count("math"), groups.count("code")
    counts = mixing.group_counts(groups)
    arms = {
        "proportional (tau=1)": (mixing.tau_schedule(steps, "constant", tau_start=1.0), None),
        f"temperature (tau={TAU:g})": (mixing.tau_schedule(steps, "constant", tau_start=TAU), None),
        f"scalarization (tau={TAU:g})": (
            mixing.tau_schedule(steps, "constant", tau_start=1.0),
            mixing.example_weights(groups, TAU),
        ),
        f"cooldown (tau={TAU:g} -> 1 at 50%)": (mixing.tau_schedule(steps, "cooldown", tau_start=TAU), None),
    }
    evals = [steps // 4, steps // 2, 3 * steps // 4, steps]
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for seed in seeds:
        tokenizer, model = _tokenizer_and_model(
            [r["prompt"] + "\n" + r["response"] for r in train], hidden, layers, seed=seed
        )
        model = model.to(device)
        pad = pad_id(tokenizer)
        train_items = encode_records(tokenizer, train, max_len)
        test_items = {g: encode_records(tokenizer, recs, max_len) for g, recs in tests.items()}
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        for name, (taus, loss_weight) in arms.items():
            probs = mixing.schedule_probabilities(counts, taus)
            sequence = mixing.sample_steps(groups, probs, batch, seed=100 + seed, replace=False)
            weight = np.ones(len(train)) if loss_weight is None else loss_weight
            began = time.perf_counter()
            curve = _train_arm(init_state, model, train_items, test_items, pad, sequence, weight, 3e-3, evals)
            copies = mixing.copies_from_sequence(sequence["index"].to_numpy(), len(train))
            runs[name].append(
                {
                    "curve": curve,
                    "seconds": time.perf_counter() - began,
                    "epochs": mixing.effective_epochs(groups, copies)["effective_epochs"],
                }
            )

    def mean(values: list[float]) -> float:
        return round(float(np.mean(values)), 4)

    def spread(values: list[float]) -> str:
        return f"{mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    results, curves = [], []
    for name, seed_runs in runs.items():
        final_math = [r["curve"][-1]["math"] for r in seed_runs]
        final_code = [r["curve"][-1]["code"] for r in seed_runs]
        best_code = [min(c["code"] for c in r["curve"]) for r in seed_runs]
        results.append(
            [
                name,
                spread(final_math),
                spread(final_code),
                mean([(m + c) / 2 for m, c in zip(final_math, final_code, strict=True)]),
                mean(best_code),
                round(float(np.mean([r["epochs"]["code"] for r in seed_runs])), 2),
                round(float(np.mean([r["epochs"]["math"] for r in seed_runs])), 2),
                round(float(np.mean([r["seconds"] for r in seed_runs])), 1),
            ]
        )
        for k, step in enumerate(evals):
            curves.append(
                [
                    name,
                    step,
                    mean([r["curve"][k]["math"] for r in seed_runs]),
                    mean([r["curve"][k]["code"] for r in seed_runs]),
                ]
            )
    f_tau = mixing.variance_factor(counts, TAU)
    setup = (
        f"{n_math} math + {n_code} code training examples ({100 * n_code / (n_math + n_code):.0f}% code); "
        f"held-out {len(tests['math'])} math, {len(tests['code'])} code (HumanEval tasks never trained on). "
        f"reference model (Qwen2, {layers} layers x {hidden}, on {device}), BPE vocab 1024 trained on the training "
        f"texts, chat template, "
        f"{steps} AdamW steps of {batch}, lr 3e-3, max_length {max_len}; per seed every arm starts from the "
        f"same weights. Mean over seeds {list(seeds)} (min-max in brackets). "
        f"p_code(tau=1) = {mixing.temperature_probs(counts, 1.0)['code']:.3f}, "
        f"p_code(tau={TAU:g}) = {mixing.temperature_probs(counts, TAU)['code']:.3f}; F({TAU:g}) = {f_tau:.3f}."
    )
    return [
        {
            "title": "Mixing reproduction: held-out loss per group after training (lower is better)",
            "columns": [
                "arm",
                "math loss",
                "code loss",
                "mean of groups",
                "best code loss on the way",
                "code epochs",
                "math epochs",
                "train s / seed",
            ],
            "rows": results,
            "notes": setup,
        },
        {
            "title": "Mixing reproduction: held-out loss along training (mean over seeds)",
            "columns": ["arm", "step", "math loss", "code loss"],
            "rows": curves,
            "notes": "Evaluated at 25/50/75/100% of the steps; Cooldown switches to tau=1 at 50%.",
        },
    ]


# ============================================================================ (b) scale with Dask
def _write_examples(folder: Path, rows: int, files: int, groups: int, seed: int) -> dict[str, int]:
    """An examples-like Parquet table: dataset, example_id, domain (Zipf-sized groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    sizes = 1.0 / np.arange(1, groups + 1) ** 1.1
    names = np.array([f"domain{g:02d}" for g in range(groups)], dtype=object)
    folder.mkdir(parents=True)
    per_file = math.ceil(rows / files)
    counts: dict[str, int] = {}
    for f in range(files):
        start, stop = f * per_file, min(rows, (f + 1) * per_file)
        domain = names[rng.choice(groups, size=stop - start, p=sizes / sizes.sum())]
        for name, n in zip(*np.unique(domain, return_counts=True), strict=True):
            counts[name] = counts.get(name, 0) + int(n)
        table = pa.table(
            {
                "dataset": pa.array(["big"] * (stop - start)),
                "example_id": pa.array([f"ex{i:010d}" for i in range(start, stop)]),
                "domain": pa.array(domain.tolist()),
            }
        )
        pq.write_table(table, folder / f"part-{f:04d}.parquet")
    return counts


def _copies_partition(df: pd.DataFrame, expected_by_group: dict[str, float], seed: int) -> pd.DataFrame:
    expected = df["domain"].map(expected_by_group).to_numpy(dtype=np.float64)
    return df[["dataset", "example_id", "domain"]].assign(
        copies=mixing.round_copies(df["example_id"].to_numpy(), expected, seed)
    )


def _expected_by_group(counts: pd.Series, tau: float) -> dict[str, float]:
    probs = mixing.temperature_probs(counts, tau)
    total = int(counts.sum())  # one epoch's worth of draws
    return {str(g): float(probs[g] * total / counts[g]) for g in counts.index}


def _pandas_peer(src: str, dst: str, tau: float, seed: int, queue: Any) -> None:
    """The same materialisation in one process (run in a child so its peak memory is its own)."""
    began = time.perf_counter()
    frame = pd.read_parquet(src, columns=["dataset", "example_id", "domain"])
    counts = mixing.group_counts(frame["domain"])
    out = _copies_partition(frame, _expected_by_group(counts, tau), seed)
    out.to_parquet(dst, index=False)
    draws = out.groupby("domain")["copies"].sum()
    queue.put(
        {
            "seconds": time.perf_counter() - began,
            "peak_mb": _self_peak_mb(),
            "draws": draws.to_dict(),
            "drawn_examples": int((out["copies"] > 0).sum()),
        }
    )


def _self_peak_mb() -> float:
    from benchmarks.harness import peak_rss_mb

    return peak_rss_mb()  # from this child's start, not its parent's peak (see peak_rss_mb)


class _MemoryWatch:
    """Polls the RSS of this process's children (Dask nannies and workers) every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak_total = 0.0
        self.peak_child: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0.0  # children only: the client process holds whatever else the caller loaded
            try:
                for child in self.proc.children(recursive=True):
                    try:
                        rss = child.memory_info().rss
                    except psutil.Error:
                        continue
                    total += rss
                    self.peak_child[child.pid] = max(self.peak_child.get(child.pid, 0.0), rss)
            except psutil.Error:
                pass
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(0.05)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def scale(quick: bool) -> list[dict]:
    import dask
    import dask.dataframe as dd
    from dask.distributed import Client, LocalCluster

    rows = 10_000_000
    files = 20 if quick else 40
    seed = 3
    work = Path(tempfile.mkdtemp(prefix="assay-mix-bench-"))
    try:
        began = time.perf_counter()
        truth = _write_examples(work / "examples", rows, files, groups=12, seed=seed)
        gen_s = time.perf_counter() - began

        queue = mp.get_context("spawn").Queue()
        peer = mp.get_context("spawn").Process(
            target=_pandas_peer, args=(str(work / "examples"), str(work / "pandas.parquet"), TAU, seed, queue)
        )
        peer.start()
        pandas_result = queue.get()
        peer.join()

        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                memory_limit="2GB",
                processes=True,
                dashboard_address=None,
                silence_logs=50,
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(lambda: None)  # workers are up before the clock starts
            with _MemoryWatch() as watch:
                began = time.perf_counter()
                ddf = dd.read_parquet(str(work / "examples"), columns=["dataset", "example_id", "domain"])
                counts = ddf["domain"].value_counts().compute()
                counts = counts.sort_index().astype(np.int64)
                expected = _expected_by_group(counts, TAU)
                meta = _copies_partition(ddf._meta, expected, seed)  # dtypes as the workers will produce
                out = ddf.map_partitions(_copies_partition, expected, seed, meta=meta)
                write = out.to_parquet(str(work / "dask_out"), write_index=False, compute=False)
                draws, drawn = out.groupby("domain")["copies"].sum(), (out["copies"] > 0).sum()
                _, draws, drawn = dask.compute(write, draws, drawn)
                dask_s = time.perf_counter() - began
            worker_peak = max(watch.peak_child.values()) if watch.peak_child else float("nan")
            workers = len(client.scheduler_info()["workers"])
        same = (
            dict(sorted(draws.to_dict().items())) == dict(sorted(pandas_result["draws"].items()))
            and int(drawn) == pandas_result["drawn_examples"]
        )
        # Check the exact per-example agreement on one file's worth of rows (cheap).
        sample_ids = pd.read_parquet(work / "examples" / "part-0000.parquet", columns=["example_id"])[
            "example_id"
        ]
        a = pd.read_parquet(work / "pandas.parquet", columns=["example_id", "copies"]).set_index("example_id")
        b = dd.read_parquet(str(work / "dask_out"), columns=["example_id", "copies"]).partitions[0].compute()
        b = b.set_index("example_id")
        same = same and a.loc[sample_ids, "copies"].equals(b.loc[sample_ids, "copies"])
        del a, b
        total_draws = int(draws.sum())
        smallest = min(truth, key=truth.get)
        epochs_small = float(draws[smallest]) / truth[smallest]
        rows_out = [
            [
                "pandas, 1 process",
                rows,
                round(pandas_result["seconds"], 2),
                round(pandas_result["peak_mb"]),
                "-",
                1.0,
            ],
            [
                f"dask LocalCluster, {workers} workers x 2 GB",
                rows,
                round(dask_s, 2),
                round(watch.peak_total / 2**20),
                round(worker_peak / 2**20),
                round(pandas_result["seconds"] / dask_s, 2),
            ],
        ]
        notes = (
            f"{rows:,} rows in {files} Parquet files (dataset, example_id, domain; 12 Zipf-sized domains; "
            f"generation {gen_s:.1f} s, not timed). Temperature tau={TAU:g}, one epoch of draws "
            f"({total_draws:,} copies in all); the smallest domain ({truth[smallest]:,} rows) gets "
            f"{epochs_small:.2f} effective epochs. Time covers reading, group counts, copies and writing "
            f"the result as Parquet. Peak memory: pandas = its process's max RSS (it runs in a child); dask "
            f"= max of the summed RSS of nannies + workers (polled every 50 ms; the client, which only "
            f"plans and gathers small results, is left out), and the largest single worker. Per-group draws and a file of per-example copies are identical between the two: "
            f"{'yes' if same else 'NO'}. Machine: {os.cpu_count()} cores."
        )
        return [
            {
                "title": "Mixing at scale: materialising copies for a temperature mixture",
                "columns": [
                    "engine",
                    "rows",
                    "seconds",
                    "peak MB (all worker processes)",
                    "peak MB (one worker)",
                    "speed vs pandas (x)",
                ],
                "rows": rows_out,
                "notes": notes,
            }
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ============================================================================ (c) applying loss_weight
def _timed_train(trainer: Any) -> float:
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def loss_weight_cost(quick: bool) -> list[dict]:
    """Seconds per optimizer step of the trainers that apply `loss_weight` (curation/training.py) against
    the trainer they extend, on the same data, model and steps, measured alternately in the same run."""
    import datasets
    import torch
    import transformers
    import trl

    from curation.training import WeightedSFTTrainer, WeightedTrainer, encode_export

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, steps, repeats = 256, (60 if quick else 200), 3
    prompts = [f"What is {i} * {i + 7}?\n" for i in range(n)]
    completions = [f"{i} * {i + 7} = {i * (i + 7)}. The answer is {i * (i + 7)}." for i in range(n)]
    weights = rng.uniform(0.25, 4.0, size=n).round(3).tolist()
    data = datasets.Dataset.from_dict({"prompt": prompts, "completion": completions, "loss_weight": weights})
    tokenizer, _ = _tokenizer_and_model([p + c for p, c in zip(prompts, completions, strict=True)], 64, 2, 0)
    encoded = encode_export(data, tokenizer, max_length=64)
    work = Path(tempfile.mkdtemp(prefix="assay-bench-train-"))

    def config(cls: Any) -> Any:
        return cls(
            output_dir=str(work),
            max_steps=steps,
            per_device_train_batch_size=16,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            train_sampling_strategy="sequential",
        )

    def build(kind: str) -> Any:
        _, model = _tokenizer_and_model(prompts[:8], 64, 2, 0)
        model.resize_token_embeddings(len(tokenizer))
        if kind == "sft":
            return trl.SFTTrainer(
                model=model, args=config(trl.SFTConfig), train_dataset=data, processing_class=tokenizer
            )
        if kind == "weighted sft":
            return WeightedSFTTrainer(
                model=model, args=config(trl.SFTConfig), train_dataset=data, processing_class=tokenizer
            )
        collator = transformers.DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        if kind == "trainer":
            plain = encoded.remove_columns(["loss_weight"])
            return transformers.Trainer(
                model=model,
                args=config(transformers.TrainingArguments),
                train_dataset=plain,
                data_collator=collator,
            )
        return WeightedTrainer(
            model=model,
            args=config(transformers.TrainingArguments),
            train_dataset=encoded,
            processing_class=tokenizer,
        )

    try:
        times: dict[str, list[float]] = {
            k: [] for k in ("sft", "weighted sft", "trainer", "weighted trainer")
        }
        for _ in range(repeats):
            for kind, measured in times.items():
                measured.append(_timed_train(build(kind)) / steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {k: float(np.median(v)) for k, v in times.items()}
    rows_out = [
        ["TRL SFTTrainer", round(median["sft"] * 1000, 1), 1.0],
        [
            "WeightedSFTTrainer",
            round(median["weighted sft"] * 1000, 1),
            round(median["weighted sft"] / median["sft"], 2),
        ],
        ["transformers Trainer", round(median["trainer"] * 1000, 1), 1.0],
        [
            "WeightedTrainer",
            round(median["weighted trainer"] * 1000, 1),
            round(median["weighted trainer"] / median["trainer"], 2),
        ],
    ]
    notes = (
        f"{steps} optimizer steps of 16 prompt-completion rows (max 64 tokens) on the reference model (Qwen2, "
        f"2 layers x 64, vocab {len(tokenizer)}), CPU, one thread; median of {repeats} runs, each pair measured "
        "alternately in the same process. Ratio: weighted / the trainer it extends (WeightedSFTTrainer scales "
        "the fused LM head's per-token log-probs; WeightedTrainer computes the loss from the logits as the "
        "model would, times the weights). The plain pair reads the same pre-tokenised rows."
    )
    return [
        {
            "title": "Applying loss_weight in training: seconds per step against the trainer it extends",
            "columns": ["trainer", "ms per step", "vs its base (x)"],
            "rows": rows_out,
            "notes": notes,
        }
    ]


def run(quick: bool = True) -> list[dict]:
    return reproduction(quick) + scale(quick) + loss_weight_cost(quick)


def headline(tables: list[dict]) -> str:
    """The README's line: final held-out code / math loss per arm (mean over seeds), Dask against pandas at
    scale, and what applying loss_weight costs per step."""
    final = tables[0]
    arms = "; ".join(f"{row[0]} {row[2].split()[0]} / {row[1].split()[0]}" for row in final["rows"])
    seeds = final["notes"].split("Mean over seeds ")[1].split("]")[0] + "]"
    model = final["notes"].split("reference model (")[1].split(")")[0]
    parts = [f"held-out code / math loss after training: {arms} (model {model}, seeds {seeds})"]
    by_title = {t["title"]: t for t in tables}
    scale_table = next((t for k, t in by_title.items() if k.startswith("Mixing at scale")), None)
    if scale_table:
        dask, rows = scale_table["rows"][1], scale_table["rows"][1][1]
        same = "identical" if "the two: yes" in scale_table["notes"] else "NOT identical"
        parts.append(f"copies for {rows:,} rows: dask {dask[5]:.2f}x pandas's speed ({same} results)")
    weights = next((t for k, t in by_title.items() if k.startswith("Applying loss_weight")), None)
    if weights:
        ratio = {row[0]: row[2] for row in weights["rows"]}
        parts.append(
            f"loss_weight costs {ratio['WeightedSFTTrainer']:.2f}x SFTTrainer's and "
            f"{ratio['WeightedTrainer']:.2f}x Trainer's time per step"
        )
    return "; ".join(parts)


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--full" not in sys.argv), indent=1))
