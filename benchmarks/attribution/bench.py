"""Attribution benchmarks on the reference LM (the demo corpus, built offline).

1. Throughput and peak memory: our `ekfac` and `trak` paths (attribution.api.attribute) against
   calling kronfluence, traker and dattri directly on the same model, data and settings. Each
   configuration runs in its own process (peak RSS is per process); the ratios compare figures
   measured in the same run.
   Each path's matrix-multiply FLOPs are counted (torch.utils.flop_counter) and set against the
   machine's matmul peak, measured in the same run (`matmul_peak`).
   The token level (exact per-token influence: example scores plus one forward-mode pass per training
   batch and independent target-group direction) against the example level of the same path, in the
   same run: the bar is at most 2x.
2. LDS (linear datamodeling score) of ekfac, trak (1 model and an ensemble) and gradsim: retrain the
   reference model's recipe on random 50% subsets, Spearman per target of predicted vs measured mean
   log-likelihood, mean over targets.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES = {
    True: {
        "corpus": {"math_per_level": 6, "math_targets_per_level": 2, "code_limit": 30},
        "model": {"epochs": 2},
        "n_train": 32,
        "n_targets": 8,
        "max_length": 192,
        "proj_dim": 512,
        "subsets": 10,
        "ensemble": 2,
        "repeats": 2,
    },
    False: {
        "corpus": {"math_per_level": 40, "math_targets_per_level": 8},
        "model": {},
        "n_train": None,
        "n_targets": None,
        "max_length": 384,
        "proj_dim": 2048,
        "subsets": 24,
        "ensemble": 4,
        "repeats": 3,
    },
}
BATCH = 8


# ---------------------------------------------------------------------------------------- setup
def _cache() -> Path:
    from flows.runtime import cache_dir

    return cache_dir()


def setup(quick: bool) -> dict[str, Any]:
    """Corpus subsets and the reference model directory (cached across runs)."""
    from attribution.reference_model import reference_model
    from curation.corpus import demo_corpus

    size = SIZES[quick]
    corpus = demo_corpus(**size["corpus"])
    model_dir = reference_model(corpus["train"], _cache(), **size["model"])
    train = _spread(corpus["train"], size["n_train"])
    targets = _spread(corpus["targets"], size["n_targets"])
    return {"model_dir": str(model_dir), "train": train, "targets": targets, "size": size}


def _spread(records: list[dict], n: int | None) -> list[dict]:
    """Every k-th record so both domains and all difficulties stay represented."""
    if n is None or n >= len(records):
        return records
    idx = np.linspace(0, len(records) - 1, n).round().astype(int)
    return [records[i] for i in idx]


# ---------------------------------------------------------------------------------------- workers
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device(spec: dict) -> Any:
    import torch

    return torch.device(spec.get("device", "cpu"))


def _peer_inputs(spec: dict) -> tuple[Any, list[dict], list[dict], int]:
    """What a peer library is handed: the model on its device, encoded train and target items, pad id."""
    from attribution.api import load_causal_lm
    from attribution.lm_data import pad_id
    from attribution.training import encode_records

    model, tok = load_causal_lm(spec["model_dir"], _device(spec))
    return (
        model,
        encode_records(tok, spec["train"], spec["max_length"]),
        encode_records(tok, spec["targets"], spec["max_length"]),
        pad_id(tok),
    )


def _ours(method: str, spec: dict, level: str = "example") -> None:
    from attribution.api import attribute, load_causal_lm

    model, tok = load_causal_lm(spec["model_dir"], _device(spec))
    params = (
        {"train_batch_size": BATCH}
        if method == "ekfac"
        else {"proj_dim": spec["proj_dim"], "batch_size": BATCH}
    )
    yield_point = _rss_mb()
    start = _clock(spec)
    attribute(
        model,
        spec["train"],
        spec["targets"],
        tokenizer=tok,
        method=method,
        method_params=params,
        max_length=spec["max_length"],
        device=spec.get("device", "cpu"),
        level=level,
    )  # per-shard target cost included
    _report(start, yield_point, spec)


def _kronfluence(spec: dict) -> None:
    import logging
    import tempfile

    import torch
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    from attribution.lm_data import collate
    from attribution.tasks import CausalLMTask, select_modules

    model, train, targets, pid = _peer_inputs(spec)
    baseline = _rss_mb()
    start = _clock(spec)
    task = CausalLMTask(select_modules(model, "mlp"))
    cuda = _device(spec).type == "cuda"
    amp = torch.bfloat16 if cuda else None  # as our path: bfloat16 autocast on CUDA
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer(
            "bench",
            prepare_model(model, task),
            task,
            cpu=not cuda,
            output_dir=tmp,
            disable_tqdm=True,
            log_level=logging.ERROR,
        )
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda b: collate(b, pid)))
        analyzer.fit_all_factors(
            "f", dataset=train, per_device_batch_size=BATCH, factor_args=FactorArguments(amp_dtype=amp)
        )
        analyzer.compute_pairwise_scores(
            "s",
            "f",
            query_dataset=targets,
            train_dataset=train,
            per_device_query_batch_size=len(targets),
            per_device_train_batch_size=BATCH,
            score_args=ScoreArguments(damping_factor=None, amp_dtype=amp),
        )
        analyzer.load_pairwise_scores("s")
    _report(start, baseline, spec)


def _traker(spec: dict) -> None:
    import logging
    import tempfile

    from trak import TRAKer

    from attribution.lm_data import collate
    from attribution.trak_adapter import CausalLMModelOutput, lm_batch

    model, train, targets, pid = _peer_inputs(spec)
    baseline = _rss_mb()
    start = _clock(spec)
    names = [n for n, _ in model.named_parameters() if ".mlp." in n]
    half = model.device.type == "cuda"  # as our path: float16 features on CUDA
    with tempfile.TemporaryDirectory() as tmp:
        # traker needs a causal-LM output (it has none; ours); the projector is traker's own choice
        # (BasicProjector on CPU, fast_jl's CudaProjector on CUDA when installed, else BasicProjector)
        traker = TRAKer(
            model=model,
            task=CausalLMModelOutput(),
            train_set_size=len(train),
            save_dir=tmp,
            device=str(model.device),
            proj_dim=spec["proj_dim"],
            use_half_precision=half,
            lambda_reg=1e-3 if len(train) < spec["proj_dim"] else 0.0,
            grad_wrt=names,
            logging_level=logging.ERROR,
        )
        traker.load_checkpoint(model.state_dict(), model_id=0)
        for s in range(0, len(train), BATCH):
            chunk = tuple(t.to(model.device) for t in lm_batch(collate(train[s : s + BATCH], pid)))
            traker.featurize(chunk, inds=np.arange(s, s + chunk[0].shape[0]))
        traker.finalize_features()
        traker.start_scoring_checkpoint("t", model.state_dict(), 0, len(targets))
        for s in range(0, len(targets), BATCH):
            chunk = tuple(t.to(model.device) for t in lm_batch(collate(targets[s : s + BATCH], pid)))
            traker.score(chunk, inds=np.arange(s, s + chunk[0].shape[0]))
        traker.finalize_scores("t")
    _report(start, baseline, spec)


def _dattri(spec: dict, algo: str) -> None:
    import torch
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader

    from attribution.lm_data import collate
    from attribution.trak_adapter import lm_batch, token_logps

    model, train, targets, pid = _peer_inputs(spec)
    # dattri batches tuples; pad every item to one length so its default loaders can stack them
    length = max(i["input_ids"].shape[0] for i in train + targets)

    def padded(items: list[dict]) -> list[tuple]:
        return [lm_batch(collate([i], pid)) for i in items]

    def to_len(t: tuple) -> tuple:
        fill = (pid, 0, -100)
        return tuple(
            torch.nn.functional.pad(x[0], (0, length - x.shape[1]), value=v) for x, v in zip(t, fill)
        )

    train_t, target_t = [to_len(t) for t in padded(train)], [to_len(t) for t in padded(targets)]

    def loader(data: list[tuple]) -> DataLoader:
        return DataLoader(data, batch_size=BATCH, shuffle=False)

    train_t = [tuple(x.to(model.device) for x in t) for t in train_t]
    target_t = [tuple(x.to(model.device) for x in t) for t in target_t]
    device = str(model.device)
    baseline = _rss_mb()
    start = _clock(spec)
    names = [n for n, _ in model.named_parameters() if ".mlp." in n]

    def call(params: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            model, params, args=(), kwargs={"input_ids": ids, "attention_mask": mask}
        ).logits

    if algo == "trak":
        from dattri.algorithm.trak import TRAKAttributor

        def margin(params: dict, data: tuple) -> torch.Tensor:
            ids, mask, labels = data
            logp, rest, m = token_logps(
                call(params, ids.unsqueeze(0), mask.unsqueeze(0)), labels.unsqueeze(0)
            )
            return ((logp - rest) * m).sum() / m.sum().clamp(min=1)

        def prob(params: dict, data: tuple) -> torch.Tensor:
            ids, mask, labels = data
            logp, _, m = token_logps(call(params, ids.unsqueeze(0), mask.unsqueeze(0)), labels.unsqueeze(0))
            return ((logp * m).sum() / m.sum().clamp(min=1)).exp()

        task = AttributionTask(loss_func=margin, model=model, checkpoints=model.state_dict())
        attributor = TRAKAttributor(
            task=task,
            correct_probability_func=prob,
            device=device,
            layer_name=names,
            projector_kwargs={"proj_dim": spec["proj_dim"], "device": device},
            regularization=1e-3,
        )
    else:
        from dattri.algorithm.influence_function import IFAttributorEKFAC

        from attribution.lm_loss import example_loss

        def loss(params: dict, data: tuple) -> Any:
            ids, mask, labels = data
            if ids.dim() == 1:  # dattri calls it per example (vmap) and per batch (factors)
                ids, mask, labels = ids.unsqueeze(0), mask.unsqueeze(0), labels.unsqueeze(0)
            return example_loss(call(params, ids, mask), labels).mean()

        task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
        modules = [n.rsplit(".", 1)[0] for n in names if n.endswith("weight")]
        attributor = IFAttributorEKFAC(task=task, module_name=modules, device=device, damping=1e-3)
    train_loader = loader(train_t)
    attributor.cache(train_loader)
    if algo == "trak":  # dattri's TRAK takes the test loader first and uses the cached train loader
        attributor.attribute(loader(target_t))
    else:
        attributor.attribute(train_loader, loader(target_t))
    _report(start, baseline, spec)


def _clock(spec: dict) -> tuple[float, float]:
    import torch

    if _device(spec).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter(), time.process_time()


def _report(start: tuple[float, float], baseline: float, spec: dict) -> None:
    # On CPU the ratios use CPU seconds (all threads of the process): on a shared machine wall time
    # mostly measures the neighbours. On CUDA they use wall time after a synchronize.
    import torch

    cuda = _device(spec).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    out = {
        "seconds": wall,
        "cpu_seconds": cpu,
        "peak_mb": _rss_mb(),
        "extra_mb": _rss_mb() - baseline,
        "n_train": len(spec["train"]),
    }
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out), flush=True)


def count_flops(fn: Any, *args: Any) -> int:
    """Matrix-multiply FLOPs (mm, bmm, addmm, convolution, attention) that `fn(*args)` executes,
    as torch.utils.flop_counter counts them (elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def matmul_peak(
    device: str = "cpu", dtype: str = "float32", sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 5
) -> dict:
    """The best FLOP/s of a square torch.mm on this device and dtype over `sizes` (the machine's
    matmul peak as the benchmarks run: on CPU with the calling process's thread count)."""
    import torch

    dev, dt = torch.device(device), getattr(torch, dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    best = {"flops_per_s": 0.0, "size": None}
    for n in sizes:
        a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
        torch.mm(a, b)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            rate = 2 * n**3 / (time.perf_counter() - t0)
            if rate > best["flops_per_s"]:
                best = {"flops_per_s": rate, "size": n}
    return {**best, "device": device, "dtype": dtype, "threads": torch.get_num_threads()}


TOKEN_PATH = "assay ekfac, token level"
WORKERS = {
    "assay ekfac": lambda s: _ours("ekfac", s),
    TOKEN_PATH: lambda s: _ours("ekfac", s, level="token"),
    "kronfluence": _kronfluence,
    "dattri ekfac": lambda s: _dattri(s, "ekfac"),
    "assay trak": lambda s: _ours("trak", s),
    "traker": _traker,
    "dattri trak": lambda s: _dattri(s, "trak"),
}


def _measure(name: str, spec: dict, count: bool) -> dict:
    path = Path(spec["spec_path"])
    # One thread per CPU worker: idle OpenMP threads spin on an oversubscribed machine and inflate CPU time.
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    argv = [sys.executable, "-m", "benchmarks.attribution.bench", "--worker", name, str(path)]
    proc = subprocess.run(
        argv + (["--count-flops"] if count else []),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    timed = [ln for ln in lines if "seconds" in ln]
    if proc.returncode != 0 or len(timed) < 2:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": tail}
    flops = [ln["flops"] for ln in lines if "flops" in ln]
    return {**timed[1], **({"flops": flops[0]} if flops else {})}  # timed[0] is the warm-up


def measure_paths(ctx: dict, device: str = "cpu", names: list[str] | None = None) -> dict[str, dict]:
    """Each path `repeats` times, interleaved, each run in its own process; keep the fastest run (the
    least disturbed on a shared machine), the peak memory of all runs and the FLOPs counted in the first."""
    import tempfile

    size = ctx["size"]
    spec = {
        "model_dir": ctx["model_dir"],
        "train": ctx["train"],
        "targets": ctx["targets"],
        "device": device,
        "max_length": size["max_length"],
        "proj_dim": size["proj_dim"],
    }
    names = names or list(WORKERS)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    spec["spec_path"] = fh.name
    runs: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for repeat in range(size["repeats"]):
            for name in names:
                runs[name].append(_measure(name, spec, count=repeat == 0))
    finally:
        os.unlink(fh.name)
    clock = "seconds" if device == "cuda" else "cpu_seconds"
    out = {}
    for name, results in runs.items():
        good = [r for r in results if "error" not in r]
        if not good:
            out[name] = results[-1]
            continue
        best = min(good, key=lambda r: r[clock])
        flops = next((r["flops"] for r in good if "flops" in r), None)
        out[name] = {
            **best,
            "peak_mb": max(r["peak_mb"] for r in good),
            "extra_mb": max(r["extra_mb"] for r in good),
            "flops": flops,
            "all_seconds": [r[clock] for r in good],
        }
        if "gpu_peak_mb" in best:
            out[name]["gpu_peak_mb"] = max(r["gpu_peak_mb"] for r in good)
    return out


def _peer_of(name: str) -> str:
    return "assay ekfac" if "ekfac" in name or name == "kronfluence" else "assay trak"


def _explain(name: str, error: str) -> str:
    if name == "dattri ekfac" and "a_prev" in error:
        # dattri 0.3.0 fisher.py: a_prev is only set for 2-D layer inputs; (batch, seq, d) leaves it unbound
        return (
            "not comparable: dattri 0.3.0's EK-FAC takes 2-D layer inputs only (its covariance update "
            "leaves a_prev unset for (batch, sequence, hidden) inputs), so it cannot run on a causal LM"
        )
    return error


def throughput_table(ctx: dict, results: dict[str, dict], device: str = "cpu") -> dict:
    size = ctx["size"]
    cuda = device == "cuda"
    clock = "seconds" if cuda else "cpu_seconds"
    rows = []
    for name, res in results.items():
        ours = results.get(_peer_of(name), {"error": "not run"})
        if "error" in res:
            rows.append([name] + [None] * (5 if cuda else 6) + [_explain(name, res["error"])])
            continue
        ok = "error" not in ours
        time_ratio = None if not ok else round(ours[clock] / res[clock], 3)
        mem = "gpu_peak_mb" if cuda else "extra_mb"
        mem_ratio = ours[mem] / res[mem] if ok and res[mem] > 0 else None
        note = (
            (
                ""
                if mem_ratio is None
                else f"our {'GPU peak' if cuda else 'extra RSS'} / this: {mem_ratio:.2f}; "
            )
            + ("s" if cuda else "CPU s")
            + " per run: "
            + ", ".join(f"{t:.1f}" for t in res["all_seconds"])
        )
        rate = round(res["n_train"] / res[clock], 3)
        if cuda:
            rows.append(
                [
                    name,
                    rate,
                    round(res["seconds"], 2),
                    round(res["cpu_seconds"], 2),
                    round(res["gpu_peak_mb"]),
                    time_ratio,
                    note,
                ]
            )
        else:
            rows.append(
                [
                    name,
                    rate,
                    round(res["cpu_seconds"], 2),
                    round(res["seconds"], 2),
                    round(res["peak_mb"]),
                    round(res["extra_mb"]),
                    time_ratio,
                    note,
                ]
            )
    if cuda:
        columns = [
            "path",
            "train examples / s",
            "seconds",
            "CPU seconds",
            "peak GPU MB",
            "our time / this",
            "notes",
        ]
        how = (
            "Each path runs in its own process on the GPU (bfloat16 autocast for the EK-FAC paths, float16 "
            "features for the TRAK paths, as ours use on CUDA), first on a 4-example warm-up, then timed "
            "with a synchronize at both ends; wall seconds are what the ratios use. Peak GPU MB is "
            "torch.cuda.max_memory_allocated over the timed run."
        )
    else:
        columns = [
            "path",
            "train examples / CPU s",
            "CPU seconds",
            "wall seconds",
            "peak RSS MB",
            "extra RSS MB",
            "our CPU time / this",
            "notes",
        ]
        how = (
            "Each path runs in its own single-threaded process, first on a 4-example warm-up, then timed; "
            "throughput and ratios use process CPU seconds (all threads), as wall time on this shared "
            "machine mostly measured the neighbours. Extra RSS is the process's peak RSS minus its peak "
            "before attribution started."
        )
    return {
        "title": f"Attribution throughput and peak memory (reference LM, {device.upper()})",
        "columns": columns,
        "rows": rows,
        "notes": (
            f"{len(ctx['train'])} training and {len(ctx['targets'])} target examples, max_length "
            f"{size['max_length']}, batch {BATCH}, proj_dim {size['proj_dim']}, MLP layers / parameters "
            f"tracked by every path. {how} {size['repeats']} interleaved runs per path, the fastest kept. "
            "Time covers fitting and scoring (model loading excluded). 'our ... / this' is assay's path "
            "over the row's path (1.0 = same speed; our ekfac rows compare with kronfluence and dattri "
            "ekfac, our trak rows with traker and dattri trak). traker is given our causal-LM model output "
            "(it has none) and picks its own projector; ours keeps traker's random projection in memory "
            "(attribution.trak_adapter.CachedProjector) instead of regenerating it for every batch. "
            "Figures as measured."
        ),
    }


def peak_share_table(
    ctx: dict, results: dict[str, dict], peaks: dict[str, dict], device: str = "cpu"
) -> dict:
    """FLOP/s each path reaches against the matmul peak measured in the same run."""
    cuda = device == "cuda"
    clock = "seconds" if cuda else "cpu_seconds"
    rows = []
    for name, res in results.items():
        if "error" in res or not res.get("flops"):
            continue
        # the dtype the path's matmuls run in: on CUDA bfloat16 autocast (ekfac) / float16 (trak)
        dtype = "float32"
        if cuda and not name.startswith("dattri"):  # dattri computes in float32 throughout
            dtype = "bfloat16" if "ekfac" in name or name == "kronfluence" else "float16"
        peak = peaks[dtype]["flops_per_s"]
        rate = res["flops"] / res[clock]
        # unrounded: the tables print 4 significant digits, and tiny runs need them all
        rows.append([name, dtype, res["flops"] / 1e9, res[clock], rate / 1e9, peak / 1e9, 100 * rate / peak])
    peak_text = "; ".join(
        f"{d}: {p['flops_per_s'] / 1e9:.1f} GFLOP/s at n = {p['size']}" for d, p in peaks.items()
    )
    return {
        "title": f"Share of the measured matmul peak ({device.upper()})",
        "columns": [
            "path",
            "dtype",
            "matmul GFLOP",
            "CPU seconds" if not cuda else "seconds",
            "GFLOP/s reached",
            "peak GFLOP/s",
            "share of peak %",
        ],
        "rows": rows,
        "notes": (
            f"Peak: the best square torch.mm over sizes {'2048-8192' if cuda else '512-2048'}, measured in this run "
            f"({'on the GPU' if cuda else 'one thread, as the paths run'}): {peak_text}. Each path's FLOPs are "
            "the matrix multiplies (mm, bmm, addmm, attention) that torch.utils.flop_counter.FlopCounterMode "
            "counts over its whole attribution call (factor fitting, per-example gradients, projection, "
            "scoring) in an extra, untimed run; elementwise work, which matters on a model this small, "
            "is not counted. GFLOP/s reached = counted FLOPs / the timed run's "
            f"{'wall' if cuda else 'CPU'} seconds."
        ),
    }


def token_cost_table(ctx: dict, results: dict[str, dict], device: str = "cpu") -> dict:
    """The token level's time over the example level's, both our ekfac path in the same run."""
    clock = "seconds" if device == "cuda" else "cpu_seconds"
    example, token = (
        results.get("assay ekfac", {"error": "not run"}),
        results.get(TOKEN_PATH, {"error": "not run"}),
    )
    rows = []
    for name, res in (("example", example), ("token", token)):
        if "error" in res:
            rows.append([name, None, None, res["error"]])
            continue
        ratio = None if "error" in example else round(res[clock] / example[clock], 3)
        rows.append([name, round(res[clock], 2), ratio, ", ".join(f"{t:.1f}" for t in res["all_seconds"])])
    ratio = rows[1][2]
    verdict = "not measured" if ratio is None else ("within" if ratio <= 2 else "NOT within")
    return {
        "title": f"Token-level cost against example level (ekfac, reference LM, {device.upper()})",
        "columns": [
            "level",
            "CPU seconds" if device != "cuda" else "seconds",
            "time / example level",
            "per run",
        ],
        "rows": rows,
        "notes": (
            f"Our ekfac path (attribution.api.attribute) on the throughput table's data and settings, level "
            "example vs token, each run as the throughput rows are. The token level computes the same "
            "example scores, then per target-group key (all, domain=math, domain=code; 'all' is a mix of "
            "the domain groups, so 2 directions) kronfluence's preconditioned query gradient v once, and "
            "per training batch one forward-mode pass of the per-token losses along the directions "
            "(attribution/token_influence.py). Bar: at most 2x the example level; measured "
            f"{ratio if ratio is not None else '-'}x ({verdict})."
        ),
    }


def throughput_tables(ctx: dict, device: str = "cpu", names: list[str] | None = None) -> list[dict]:
    if device == "cuda":
        peaks = {
            d: matmul_peak("cuda", d, sizes=(2048, 4096, 8192)) for d in ("float32", "bfloat16", "float16")
        }
    else:
        peaks = {"float32": _one_thread_peak()}
    results = measure_paths(ctx, device, names)
    peers = {k: v for k, v in results.items() if k != TOKEN_PATH}
    tables = [throughput_table(ctx, peers, device), peak_share_table(ctx, peers, peaks, device)]
    if TOKEN_PATH in results:
        tables.append(token_cost_table(ctx, results, device))
    return tables


def _one_thread_peak() -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return matmul_peak("cpu", "float32")
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- LDS
def lds_table(ctx: dict) -> dict:
    from attribution.api import attribute, load_causal_lm
    from attribution.lds import causal_lm_retrain_eval, lds_from_outputs, subset_masks, subset_outputs
    from attribution.reference_model import build_model
    from attribution.training import finetune_causal_lm

    size = ctx["size"]
    settings = json.loads((Path(ctx["model_dir"]) / "assay_reference.json").read_text())["settings"]
    _, tok = load_causal_lm(ctx["model_dir"])
    train, targets = ctx["train"], ctx["targets"]
    recipe = {"epochs": settings["epochs"], "lr": settings["lr"], "batch_size": settings["batch_size"]}
    max_length = size["max_length"]

    def fresh(seed: int = settings["seed"]) -> Any:
        return build_model(tok, seed=seed, **settings["config"])

    # The model attributed is the recipe trained on this (sub)set of the corpus, as the retrained ones are.
    base = finetune_causal_lm(fresh(), tok, train, max_length=max_length, seed=settings["seed"], **recipe)
    ensemble = [base.state_dict()] + [
        finetune_causal_lm(
            fresh(settings["seed"] + k),
            tok,
            train,
            max_length=max_length,
            seed=settings["seed"] + k,
            **recipe,
        ).state_dict()
        for k in range(1, size["ensemble"])
    ]
    small_dim = max(2, len(train) // 2)
    methods = {
        "ekfac": {"method": "ekfac"},
        "trak (1 model)": {"method": "trak", "method_params": {"proj_dim": size["proj_dim"]}},
        # a projection below the number of training examples: invertible kernel, no ridge, less information
        f"trak (1 model, proj_dim {small_dim})": {"method": "trak", "method_params": {"proj_dim": small_dim}},
        f"trak ({size['ensemble']} models)": {
            "method": "trak",
            "method_params": {"proj_dim": size["proj_dim"]},
            "checkpoints": ensemble,
        },
        "gradsim (cosine)": {"method": "gradsim", "method_params": {"proj_dim": size["proj_dim"]}},
        "gradsim (dot)": {
            "method": "gradsim",
            "method_params": {"proj_dim": size["proj_dim"], "similarity": "dot"},
        },
    }
    scores, seconds = {}, {}
    for name, kw in methods.items():
        start = time.perf_counter()
        res = attribute(base, train, targets, tokenizer=tok, max_length=max_length, shard_size=64, **kw)
        seconds[name] = time.perf_counter() - start
        ids = [str(r.get("id", r.get("example_id"))) for r in train]
        tids = [str(r.get("id", r.get("example_id"))) for r in targets]
        scores[name] = res.matrix().loc[ids, tids].to_numpy()
    masks = subset_masks(len(train), size["subsets"], 0.5, seed=0)
    retrain = causal_lm_retrain_eval(
        fresh, tok, train, targets, max_length=max_length, seed=settings["seed"], **recipe
    )
    outputs = subset_outputs(retrain, masks)
    rows = []
    for name, mat in scores.items():
        res = lds_from_outputs(mat, masks, outputs)
        valid = res.per_target[np.isfinite(res.per_target)]
        sem = valid.std(ddof=1) / np.sqrt(len(valid)) if len(valid) > 1 else float("nan")
        rows.append([name, round(res.mean, 4), round(float(sem), 4), len(valid), round(seconds[name], 1)])
    ek = next(r[1] for r in rows if r[0] == "ekfac")
    gs = max(r[1] for r in rows if r[0].startswith("gradsim"))
    trak_big = next(r[1] for r in rows if r[0] == "trak (1 model)")
    trak_small = next(r[1] for r in rows if r[0] == f"trak (1 model, proj_dim {small_dim})")
    return {
        "title": "LDS on the reference LM (higher is better)",
        "columns": ["method", "LDS (mean Spearman)", "std. error", "targets", "attribution seconds"],
        "rows": rows,
        "notes": (
            f"{len(train)} training / {len(targets)} target examples of the demo corpus; {size['subsets']} "
            f"random 50% subsets, each retrained with the reference recipe ({recipe}, same seed and init); "
            "f = mean log-likelihood of each target's reference response; Spearman per target across "
            f"subsets, mean over targets. Measured: ekfac {ek:.3f} vs best gradsim {gs:.3f} "
            f"({'ekfac higher' if ek > gs else 'ekfac NOT higher'}). TRAK with proj_dim {size['proj_dim']} > "
            f"{len(train)} training examples (singular kernel, ridge 1e-3): {trak_big:.3f}; "
            f"proj_dim {small_dim} (invertible, no ridge): {trak_small:.3f}. Published reference points: EK-FAC "
            "0.44 on WikiText-2/GPT-2, gradient-only ~0.1; a tiny model and few subsets make these noisy."
        ),
    }


def run(quick: bool = True) -> list[dict]:
    ctx = setup(quick)
    return [*throughput_tables(ctx), lds_table(ctx)]


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        import torch

        torch.set_num_threads(1)
        worker_spec = json.loads(Path(sys.argv[3]).read_text())
        warm = {**worker_spec, "train": worker_spec["train"][:4], "targets": worker_spec["targets"][:2]}
        WORKERS[sys.argv[2]](warm)  # first-call costs (einsum paths, lazy imports) stay out of the timing
        WORKERS[sys.argv[2]](worker_spec)
        if "--count-flops" in sys.argv:  # after the timed run, so counting costs stay out of it
            print(json.dumps({"flops": count_flops(WORKERS[sys.argv[2]], worker_spec)}), flush=True)
    else:
        for table in run(quick="--full" not in sys.argv):
            print(json.dumps(table, indent=1, default=str))
