"""Attribution paths, each run in its own process so that peak memory is per path.

`python -m benchmarks.attribution.workers NAME SPEC.json [--cold] [--count-flops]` imports every
library any path uses, reads the process's peak RSS (the baseline: interpreter and imports), runs the
path once on a 4-example warm-up (unless --cold), then timed on the spec, and prints JSON lines:
the timed run's {"seconds", "cpu_seconds", "n_train", ...}, then {"peak_mb", "extra_mb",
"baseline_mb"} (peak RSS from process start; peak minus the baseline, so the warm-up's allocations,
e.g. a cached projection matrix, count), then with --count-flops the matmul FLOPs of one more,
untimed run. `run_path` starts it and gathers the lines.

A spec: model_dir, train / targets (records), device, max_length, proj_dim, and optionally params
(more fields of our method's config), shard_size, traker_batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 8  # examples per gradient batch for our paths, kronfluence and dattri
# traker's quickstart featurizes and scores in loader batches of 128; each featurize call projects
# its batch at once (and, with traker's CPU projector, regenerates the random matrix once per call).
TRAKER_BATCH = 128


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


def ours(method: str, spec: dict, level: str = "example") -> None:
    from attribution.api import attribute, load_causal_lm

    model, tok = load_causal_lm(spec["model_dir"], _device(spec))
    params = {"train_batch_size": BATCH} if method == "ekfac" else {"batch_size": BATCH}
    if method in ("trak", "gradsim"):
        params["proj_dim"] = spec["proj_dim"]
    params.update(spec.get("params") or {})
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
        shard_size=spec.get("shard_size", 256),
    )
    _report(start, spec)


def kronfluence(spec: dict) -> None:
    """kronfluence's Analyzer as its docs use it: all queries in one batch (one training pass)."""
    import logging
    import tempfile

    import torch
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    from attribution.lm_data import collate
    from attribution.tasks import CausalLMTask, select_modules

    model, train, targets, pid = _peer_inputs(spec)
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
    _report(start, spec)


def traker(spec: dict) -> None:
    """traker as its quickstart runs it: TRAKer's own projector choice (BasicProjector on CPU,
    fast_jl's CudaProjector on CUDA when installed), its default proj_max_batch_size, loader batches of
    TRAKER_BATCH; float16 features on CUDA (its default), float32 on CPU (float16 matmuls are emulated
    there). It is given our causal-LM model output (it has none)."""
    import logging
    import tempfile

    from trak import TRAKer

    from attribution.lm_data import collate
    from attribution.trak_adapter import CausalLMModelOutput, lm_batch

    model, train, targets, pid = _peer_inputs(spec)
    batch = spec.get("traker_batch", TRAKER_BATCH)
    start = _clock(spec)
    names = [n for n, _ in model.named_parameters() if ".mlp." in n]
    with tempfile.TemporaryDirectory() as tmp:
        tr = TRAKer(
            model=model,
            task=CausalLMModelOutput(),
            train_set_size=len(train),
            save_dir=tmp,
            device=str(model.device),
            proj_dim=spec["proj_dim"],
            use_half_precision=model.device.type == "cuda",
            lambda_reg=1e-3 if len(train) < spec["proj_dim"] else 0.0,
            grad_wrt=names,
            logging_level=logging.ERROR,
        )
        tr.load_checkpoint(model.state_dict(), model_id=0)
        for s in range(0, len(train), batch):
            chunk = tuple(t.to(model.device) for t in lm_batch(collate(train[s : s + batch], pid)))
            tr.featurize(chunk, inds=np.arange(s, s + chunk[0].shape[0]))
        tr.finalize_features()
        tr.start_scoring_checkpoint("t", model.state_dict(), 0, len(targets))
        for s in range(0, len(targets), batch):
            chunk = tuple(t.to(model.device) for t in lm_batch(collate(targets[s : s + batch], pid)))
            tr.score(chunk, inds=np.arange(s, s + chunk[0].shape[0]))
        tr.finalize_scores("t")
    _report(start, spec)


def dattri(spec: dict, algo: str) -> None:
    import torch
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader

    from attribution.lm_data import collate
    from attribution.trak_adapter import lm_batch, token_logps

    model, train, targets, pid = _peer_inputs(spec)
    # dattri batches tuples; pad every item to one length so its default loaders can stack them
    length = max(i["input_ids"].shape[0] for i in train + targets)

    def to_len(t: tuple) -> tuple:
        fill = (pid, 0, -100)
        return tuple(
            torch.nn.functional.pad(x[0], (0, length - x.shape[1]), value=v) for x, v in zip(t, fill)
        )

    def padded(items: list[dict]) -> list[tuple]:
        return [tuple(x.to(model.device) for x in to_len(lm_batch(collate([i], pid)))) for i in items]

    train_t, target_t = padded(train), padded(targets)
    device = str(model.device)
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
    train_loader = DataLoader(train_t, batch_size=BATCH, shuffle=False)
    attributor.cache(train_loader)
    if algo == "trak":  # dattri's TRAK takes the test loader first and uses the cached train loader
        attributor.attribute(DataLoader(target_t, batch_size=BATCH, shuffle=False))
    else:
        attributor.attribute(train_loader, DataLoader(target_t, batch_size=BATCH, shuffle=False))
    _report(start, spec)


def _clock(spec: dict) -> tuple[float, float]:
    import torch

    if _device(spec).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter(), time.process_time()


def _report(start: tuple[float, float], spec: dict) -> None:
    # On CPU the ratios use CPU seconds (all threads of the process): on a shared machine wall time
    # mostly measures the neighbours. On CUDA they use wall time after a synchronize.
    import torch

    cuda = _device(spec).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    out = {"seconds": wall, "cpu_seconds": cpu, "n_train": len(spec["train"])}
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out), flush=True)


TOKEN_PATH = "assay ekfac, token level"
WORKERS = {
    "assay ekfac": lambda s: ours("ekfac", s),
    TOKEN_PATH: lambda s: ours("ekfac", s, level="token"),
    "kronfluence": kronfluence,
    "dattri ekfac": lambda s: dattri(s, "ekfac"),
    "assay trak": lambda s: ours("trak", s),
    "traker": traker,
    "dattri trak": lambda s: dattri(s, "trak"),
    "assay gradsim": lambda s: ours("gradsim", s),
}


def run_path(name: str, spec: dict, cold: bool = False, count: bool = False) -> dict:
    """Run path `name` on `spec` in a fresh single-threaded process; its timed figures and memory, or
    {"error": last line of stderr}."""
    import tempfile

    # One thread per CPU worker: idle OpenMP threads spin on an oversubscribed machine and inflate CPU time.
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    argv = [sys.executable, "-m", "benchmarks.attribution.workers", name, fh.name]
    argv += (["--cold"] if cold else []) + (["--count-flops"] if count else [])
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
    finally:
        os.unlink(fh.name)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    memory = next((k for k, ln in enumerate(lines) if "peak_mb" in ln), None)
    timed = [ln for ln in lines[:memory] if "seconds" in ln]  # the last one before memory is the timed run
    if proc.returncode != 0 or memory is None or not timed:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": tail}
    flops = [ln["flops"] for ln in lines if "flops" in ln]
    return {**timed[-1], **lines[memory], **({"flops": flops[0]} if flops else {})}


def count_flops(fn: Any, *args: Any) -> int:
    """Matrix-multiply FLOPs (mm, bmm, addmm, convolution, attention) that `fn(*args)` executes,
    as torch.utils.flop_counter counts them (elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def _main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    # every library a path imports, before the baseline: imports are not attribution memory
    import dattri  # noqa: F401
    import kronfluence  # noqa: F401
    import trak  # noqa: F401
    import transformers  # noqa: F401

    import attribution.api  # noqa: F401
    from benchmarks.harness import peak_rss_mb

    baseline = peak_rss_mb()
    name, spec = argv[0], json.loads(Path(argv[1]).read_text())
    if "--cold" not in argv:  # first-call costs (einsum paths, lazy imports) stay out of the timing
        WORKERS[name]({**spec, "train": spec["train"][:4], "targets": spec["targets"][:2]})
    WORKERS[name](spec)
    peak = peak_rss_mb()
    print(json.dumps({"peak_mb": peak, "extra_mb": peak - baseline, "baseline_mb": baseline}), flush=True)
    if "--count-flops" in argv:  # after the timed run, so counting costs stay out of it
        print(json.dumps({"flops": count_flops(WORKERS[name], spec)}), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
