"""GPU section: the attribution benchmarks at a larger scale, on CUDA.

Runs only where `torch.cuda.is_available()`; elsewhere the harness skips it with one line saying why
(`skip_reason`). One prepared command runs it on a GPU machine: `make bench-gpu` (a CUDA torch comes
from TORCH_SPEC, see the Makefile), a few minutes on one GPU.

What it measures, in one run:
- the environment: GPU, free memory, torch / CUDA versions, whether fast_jl (traker's CUDA projector)
  imports; `make bench-gpu` installs fast_jl first (it compiles with nvcc) and says why when it cannot;
- the GPU's matrix-multiply peak in float32, bfloat16 and float16 (square torch.mm up to 8192);
- attribution throughput and peak GPU memory of our ekfac and trak paths against kronfluence,
  traker and dattri called directly, each timing repeated 3 times, on a Qwen2-architecture model of
  about 25M MLP parameters (8 layers, hidden 512) over the full demo corpus at max_length 512, and the
  matmul work beside the time (FLOPs counted by torch.utils.flop_counter). The model is freshly
  initialised from its config (throughput does not depend on the weights);
- agreement: the GPU scores (bfloat16 / float16 as the paths run on CUDA) against CPU float32 scores
  of the same model and data, Spearman per target (bar: >= 0.99);
- the mixing reproduction (proportional / temperature / scalarization / Cooldown) at its full size,
  which takes too long for a 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from benchmarks.attribution.bench import WORKERS, throughput_tables

GPU_SIZE = {
    "model": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
    "corpus": {"math_per_level": 40, "math_targets_per_level": 8},
    "n_targets": 32,
    "max_length": 512,
    "proj_dim": 4096,
    "repeats": 3,
}
# GPU against CPU float32 scores: a subset, so the CPU side stays minutes
AGREEMENT = {"n_train": 64, "n_targets": 8, "proj_dim": 2048}
AGREEMENT_BAR = 0.99


def skip_reason() -> str | None:
    """Why this section cannot run here, or None when it can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.cuda.is_available():
        return None
    return (
        f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False); "
        "run `make bench-gpu` on a machine with an NVIDIA GPU"
    )


def model_dir(size: dict, records: list[dict], cache: Path) -> Path:
    """A freshly initialised model of `size['model']` and a tokenizer trained on `records`, saved once."""
    from attribution.reference_model import build_model, build_tokenizer

    key = hashlib.sha256(json.dumps([size["model"], [r["id"] for r in records]]).encode()).hexdigest()[:12]
    target = cache / f"bench-model-{key}"
    if (target / "config.json").exists():
        return target
    tokenizer = build_tokenizer([f"{r['prompt']}\n{r['response']}" for r in records])
    model = build_model(tokenizer, seed=0, **size["model"])
    staging = cache / f".building-{key}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)  # complete or absent
    return target


def section(
    device: str, size: dict, names: list[str] | None = None, mixing_size: dict | None = None
) -> list[dict]:
    """The attribution throughput and peak-share tables for `size`, then the mixing reproduction at
    `mixing_size` (default: its full size), on `device`."""
    from benchmarks.mixing.bench import REPRODUCTION_SIZES, reproduction
    from curation.corpus import demo_corpus
    from flows.runtime import cache_dir

    corpus = demo_corpus(**size["corpus"])
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    ctx: dict[str, Any] = {
        "model_dir": str(model_dir(size, corpus["train"], cache)),
        "train": corpus["train"][: size.get("n_train")],
        "targets": corpus["targets"][: size["n_targets"]],
        "size": size,
    }
    tables = throughput_tables(ctx, device, names=names)
    for table in tables:
        table["title"] += f" at GPU-section scale ({_describe(size['model'])})"
    return tables + reproduction(quick=False, device=device, size=mixing_size or REPRODUCTION_SIZES[False])


def _describe(model: dict) -> str:
    return f"{model['num_hidden_layers']} layers, hidden {model['hidden_size']}"


def environment_table(device: str) -> dict:
    """What the GPU section ran on: device, memory, versions, and whether traker's CUDA projector works."""
    import importlib.util

    import torch

    rows = [["torch", torch.__version__], ["CUDA (torch build)", str(torch.version.cuda)]]
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        rows += [
            ["device", torch.cuda.get_device_name(0)],
            ["GPU memory free / total GiB", f"{free / 2**30:.1f} / {total / 2**30:.1f}"],
        ]
    fast_jl = importlib.util.find_spec("fast_jl") is not None
    rows.append(
        [
            "fast_jl (traker's CudaProjector)",
            "installed" if fast_jl else "not installed: dense TRAK projections use traker's BasicProjector",
        ]
    )
    return {"title": "GPU section environment", "columns": ["what", "value"], "rows": rows, "notes": ""}


def agreement_table(device: str, size: dict, agreement: dict | None = None) -> dict:
    """Spearman per target between scores on `device` (its default precision) and CPU float32 scores."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from attribution.api import attribute, load_causal_lm
    from curation.corpus import demo_corpus
    from flows.runtime import cache_dir

    cfg = agreement or AGREEMENT
    corpus = demo_corpus(**size["corpus"])
    directory = model_dir(size, corpus["train"], cache_dir())
    train, targets = corpus["train"][: cfg["n_train"]], corpus["targets"][: cfg["n_targets"]]
    proj = cfg["proj_dim"]
    methods = {
        "ekfac": ("ekfac", {}),
        "trak, factored projection": ("trak", {"proj_dim": proj, "projection": "factored"}),
        "gradsim, factored projection": ("gradsim", {"proj_dim": proj, "projection": "factored"}),
        "trak, dense projection": ("trak", {"proj_dim": proj}),
    }
    rows = []
    for label, (method, params) in methods.items():
        mats = []
        for dev in (device, "cpu"):
            model, tok = load_causal_lm(directory, torch.device(dev))
            res = attribute(
                model,
                train,
                targets,
                tokenizer=tok,
                method=method,
                method_params=params,
                max_length=size["max_length"],
                device=dev,
            )
            mats.append(res.matrix().to_numpy())
        rho = np.array([spearmanr(mats[0][:, t], mats[1][:, t]).statistic for t in range(mats[0].shape[1])])
        dense = label.endswith("dense projection")
        verdict = (
            "n/a: the devices draw different random matrices"
            if dense
            else ("meets the bar" if np.nanmin(rho) >= AGREEMENT_BAR else "BELOW the bar")
        )
        rows.append([label, round(float(np.nanmean(rho)), 4), round(float(np.nanmin(rho)), 4), verdict])
    return {
        "title": f"GPU scores against CPU float32 scores ({_describe(size['model'])})",
        "columns": ["method", "mean Spearman over targets", "lowest", f"bar >= {AGREEMENT_BAR}"],
        "rows": rows,
        "notes": (
            f"{len(train)} training and {len(targets)} target examples, max_length {size['max_length']}, "
            f"proj_dim {proj}. The {device} side runs each method's CUDA defaults (bfloat16 autocast for "
            "ekfac, float16 features for trak); the CPU side float32. The factored projection draws its "
            "matrices on the CPU, so both devices project alike; the dense one does not (fast_jl's "
            "Rademacher kernel or the CUDA generator on the GPU, the CPU generator on the CPU), so its row "
            "measures the projections' disagreement as well and has no bar."
        ),
    }


def run(quick: bool = True) -> list[dict]:
    reason = skip_reason()
    if reason:  # the harness checks first; this guards direct calls
        raise RuntimeError(f"GPU section skipped: {reason}")
    return [
        environment_table("cuda"),
        *section("cuda", GPU_SIZE, names=[n for n in WORKERS if n != "assay gradsim"]),
        agreement_table("cuda", GPU_SIZE),
    ]
