"""GPU section: the attribution benchmarks at a larger scale, on CUDA.

Runs only where `torch.cuda.is_available()`; elsewhere the harness skips it with one line saying why
(`skip_reason`). One prepared command runs it on a GPU machine: `make bench-gpu` (a CUDA torch comes
from TORCH_SPEC, see the Makefile), a few minutes on one GPU.

What it measures, in one run:
- the GPU's matrix-multiply peak in float32, bfloat16 and float16 (square torch.mm up to 8192);
- attribution throughput and peak GPU memory of our ekfac and trak paths against kronfluence,
  traker and dattri called directly, on a Qwen2-architecture model of about 25M MLP parameters
  (8 layers, hidden 512) over the full demo corpus at max_length 512, and the share of the
  matmul peak each path reaches (FLOPs counted by torch.utils.flop_counter). The model is freshly
  initialised from its config (throughput does not depend on the weights);
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
    "repeats": 1,  # GPU timings are steady
}


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


def run(quick: bool = True) -> list[dict]:
    reason = skip_reason()
    if reason:  # the harness checks first; this guards direct calls
        raise RuntimeError(f"GPU section skipped: {reason}")
    return section("cuda", GPU_SIZE, names=list(WORKERS))
