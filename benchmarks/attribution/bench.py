"""Attribution benchmarks on the reference LM (the demo corpus, built offline).

1. Throughput and peak memory: our `ekfac` and `trak` paths (attribution.api.attribute) against
   calling kronfluence, traker and dattri directly on the same model, data and settings. Each
   configuration runs in its own process (peak RSS is per process); the ratios compare figures
   measured in the same run.
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
    True: {"corpus": {"math_per_level": 6, "math_targets_per_level": 2, "code_limit": 30}, "model": {"epochs": 2},
           "n_train": 32, "n_targets": 8, "max_length": 192, "proj_dim": 512, "subsets": 10, "ensemble": 2,
           "repeats": 2},
    False: {"corpus": {"math_per_level": 40, "math_targets_per_level": 8}, "model": {},
            "n_train": None, "n_targets": None, "max_length": 384, "proj_dim": 2048, "subsets": 24, "ensemble": 4,
            "repeats": 3},
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


def _lm_items(model_dir: str, records: list[dict], max_length: int) -> tuple[Any, Any, list[dict]]:
    from attribution.api import load_causal_lm
    from attribution.training import encode_records

    model, tok = load_causal_lm(model_dir)
    return model, tok, encode_records(tok, records, max_length)


def _ours(method: str, spec: dict) -> None:
    from attribution.api import attribute, load_causal_lm

    model, tok = load_causal_lm(spec["model_dir"])
    params = {"train_batch_size": BATCH} if method == "ekfac" else {"proj_dim": spec["proj_dim"], "batch_size": BATCH}
    yield_point = _rss_mb()
    start = _clock()
    attribute(model, spec["train"], spec["targets"], tokenizer=tok, method=method, method_params=params,
              max_length=spec["max_length"])  # default shards: per-shard target-gradient cost included
    _report(start, yield_point, spec)


def _kronfluence(spec: dict) -> None:
    import logging
    import tempfile

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    from attribution.lm_data import collate, pad_id
    from attribution.tasks import CausalLMTask, select_modules

    model, tok, train = _lm_items(spec["model_dir"], spec["train"], spec["max_length"])
    _, _, targets = _lm_items(spec["model_dir"], spec["targets"], spec["max_length"])
    baseline = _rss_mb()
    start = _clock()
    task = CausalLMTask(select_modules(model, "mlp"))
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer("bench", prepare_model(model, task), task, cpu=True, output_dir=tmp, disable_tqdm=True,
                            log_level=logging.ERROR)
        pid = pad_id(tok)
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda b: collate(b, pid)))
        analyzer.fit_all_factors("f", dataset=train, per_device_batch_size=BATCH)
        analyzer.compute_pairwise_scores("s", "f", query_dataset=targets, train_dataset=train,
                                         per_device_query_batch_size=len(targets), per_device_train_batch_size=BATCH,
                                         score_args=ScoreArguments(damping_factor=None))
        analyzer.load_pairwise_scores("s")
    _report(start, baseline, spec)


def _traker(spec: dict) -> None:
    import logging
    import tempfile

    from trak import TRAKer

    from attribution.lm_data import collate, pad_id
    from attribution.trak_adapter import CausalLMModelOutput, _projector, lm_batch

    model, tok, train = _lm_items(spec["model_dir"], spec["train"], spec["max_length"])
    _, _, targets = _lm_items(spec["model_dir"], spec["targets"], spec["max_length"])
    baseline = _rss_mb()
    start = _clock()
    pid = pad_id(tok)
    names = [n for n, _ in model.named_parameters() if ".mlp." in n]
    grad_dim = sum(p.numel() for n, p in model.named_parameters() if n in names)
    with tempfile.TemporaryDirectory() as tmp:
        # traker needs a causal-LM output (it has none; ours) and a projector that survives finalize
        traker = TRAKer(model=model, task=CausalLMModelOutput(), train_set_size=len(train), save_dir=tmp,
                        device="cpu", proj_dim=spec["proj_dim"], use_half_precision=False,
                        lambda_reg=1e-3 if len(train) < spec["proj_dim"] else 0.0, grad_wrt=names,
                        projector=_projector(grad_dim, spec["proj_dim"], model.device, model.dtype),
                        logging_level=logging.ERROR)
        traker.load_checkpoint(model.state_dict(), model_id=0)
        for s in range(0, len(train), BATCH):
            chunk = lm_batch(collate(train[s:s + BATCH], pid))
            traker.featurize(chunk, inds=np.arange(s, s + chunk[0].shape[0]))
        traker.finalize_features()
        traker.start_scoring_checkpoint("t", model.state_dict(), 0, len(targets))
        for s in range(0, len(targets), BATCH):
            chunk = lm_batch(collate(targets[s:s + BATCH], pid))
            traker.score(chunk, inds=np.arange(s, s + chunk[0].shape[0]))
        traker.finalize_scores("t")
    _report(start, baseline, spec)


def _dattri(spec: dict, algo: str) -> None:
    import torch
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader

    from attribution.lm_data import collate, pad_id
    from attribution.trak_adapter import _token_logps, lm_batch

    model, tok, train = _lm_items(spec["model_dir"], spec["train"], spec["max_length"])
    _, _, targets = _lm_items(spec["model_dir"], spec["targets"], spec["max_length"])
    pid = pad_id(tok)
    # dattri batches tuples; pad every item to one length so its default loaders can stack them
    length = max(i["input_ids"].shape[0] for i in train + targets)

    def padded(items: list[dict]) -> list[tuple]:
        return [lm_batch(collate([i], pid)) for i in items]

    def to_len(t: tuple) -> tuple:
        fill = (pid, 0, -100)
        return tuple(torch.nn.functional.pad(x[0], (0, length - x.shape[1]), value=v) for x, v in zip(t, fill))

    train_t, target_t = [to_len(t) for t in padded(train)], [to_len(t) for t in padded(targets)]

    def loader(data: list[tuple]) -> DataLoader:
        return DataLoader(data, batch_size=BATCH, shuffle=False)

    baseline = _rss_mb()
    start = _clock()
    names = [n for n, _ in model.named_parameters() if ".mlp." in n]

    def call(params: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, args=(), kwargs={"input_ids": ids,
                                                                         "attention_mask": mask}).logits

    if algo == "trak":
        from dattri.algorithm.trak import TRAKAttributor

        def margin(params: dict, data: tuple) -> torch.Tensor:
            ids, mask, labels = data
            logp, rest, m = _token_logps(call(params, ids.unsqueeze(0), mask.unsqueeze(0)), labels.unsqueeze(0))
            return ((logp - rest) * m).sum() / m.sum().clamp(min=1)

        def prob(params: dict, data: tuple) -> torch.Tensor:
            ids, mask, labels = data
            logp, _, m = _token_logps(call(params, ids.unsqueeze(0), mask.unsqueeze(0)), labels.unsqueeze(0))
            return ((logp * m).sum() / m.sum().clamp(min=1)).exp()

        task = AttributionTask(loss_func=margin, model=model, checkpoints=model.state_dict())
        attributor = TRAKAttributor(task=task, correct_probability_func=prob, device="cpu", layer_name=names,
                                    projector_kwargs={"proj_dim": spec["proj_dim"], "device": "cpu"},
                                    regularization=1e-3)
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
        attributor = IFAttributorEKFAC(task=task, module_name=modules, device="cpu", damping=1e-3)
    train_loader = loader(train_t)
    attributor.cache(train_loader)
    if algo == "trak":  # dattri's TRAK takes the test loader first and uses the cached train loader
        attributor.attribute(loader(target_t))
    else:
        attributor.attribute(train_loader, loader(target_t))
    _report(start, baseline, spec)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _report(start: tuple[float, float], baseline: float, spec: dict) -> None:
    # CPU seconds (all threads of the process) are what the ratios use: on a shared machine wall time
    # mostly measures the neighbours.
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "peak_mb": _rss_mb(), "extra_mb": _rss_mb() - baseline,
                      "n_train": len(spec["train"])}), flush=True)


WORKERS = {
    "assay ekfac": lambda s: _ours("ekfac", s),
    "kronfluence": _kronfluence,
    "dattri ekfac": lambda s: _dattri(s, "ekfac"),
    "assay trak": lambda s: _ours("trak", s),
    "traker": _traker,
    "dattri trak": lambda s: _dattri(s, "trak"),
}


def _measure(name: str, spec: dict) -> dict:
    path = Path(spec["spec_path"])
    # One thread per worker: idle OpenMP threads spin on an oversubscribed machine and inflate CPU time.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.attribution.bench", "--worker", name, str(path)],
                          capture_output=True, text=True, env=env, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": tail}
    return json.loads(lines[-1])  # the timed run (the first line is the warm-up)


def _measure_repeated(names: list[str], spec: dict, repeats: int) -> dict[str, dict]:
    """Each path `repeats` times, interleaved; keep the fastest run (the least disturbed on a shared
    machine) and the peak memory of all runs."""
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            runs[name].append(_measure(name, spec))
    out = {}
    for name, results in runs.items():
        good = [r for r in results if "error" not in r]
        if not good:
            out[name] = results[-1]
            continue
        best = min(good, key=lambda r: r["cpu_seconds"])
        out[name] = {**best, "peak_mb": max(r["peak_mb"] for r in good),
                     "extra_mb": max(r["extra_mb"] for r in good),
                     "all_seconds": [r["cpu_seconds"] for r in good]}
    return out


def throughput_table(ctx: dict) -> dict:
    import tempfile

    size = ctx["size"]
    spec = {"model_dir": ctx["model_dir"], "train": ctx["train"], "targets": ctx["targets"],
            "max_length": size["max_length"], "proj_dim": size["proj_dim"]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    spec["spec_path"] = fh.name
    try:
        results = _measure_repeated(list(WORKERS), spec, size["repeats"])
    finally:
        os.unlink(fh.name)
    rows = []
    for name, res in results.items():
        ours = results["assay ekfac" if "ekfac" in name or name == "kronfluence" else "assay trak"]
        if "error" in res:
            rows.append([name, None, None, None, None, None, None, res["error"]])
            continue
        rate = res["n_train"] / res["cpu_seconds"]
        ok = "error" not in ours
        time_ratio = ours["cpu_seconds"] / res["cpu_seconds"] if ok else None
        mem_ratio = ours["extra_mb"] / res["extra_mb"] if ok and res["extra_mb"] > 0 else None
        rows.append([name, round(rate, 3), round(res["cpu_seconds"], 2), round(res["seconds"], 2), round(res["peak_mb"]),
                     round(res["extra_mb"]),
                     None if time_ratio is None else round(time_ratio, 3),
                     ("" if mem_ratio is None else f"our extra RSS / this: {mem_ratio:.2f}; ")
                     + "CPU s per run: " + ", ".join(f"{t:.1f}" for t in res["all_seconds"])])
    return {
        "title": "Attribution throughput and peak memory (reference LM, CPU)",
        "columns": ["path", "train examples / CPU s", "CPU seconds", "wall seconds", "peak RSS MB",
                    "extra RSS MB", "our CPU time / this", "notes"],
        "rows": rows,
        "notes": (f"{len(ctx['train'])} training and {len(ctx['targets'])} target examples, max_length "
                  f"{size['max_length']}, batch {BATCH}, proj_dim {size['proj_dim']}, MLP layers / parameters "
                  "tracked by every path. Each path runs in its own single-threaded process, first on a 4-example warm-up, then timed; "
                  f"{size['repeats']} interleaved runs per path, the one with least CPU time kept. Throughput and ratios "
                  "use process CPU seconds (all threads), as wall time on this shared machine mostly measured "
                  "the neighbours. Time covers fitting and scoring (model loading excluded); extra RSS is "
                  "the process's peak RSS minus its peak before attribution started. 'our CPU time / this' is "
                  "assay's path over the row's path (1.0 = same speed; our ekfac rows compare with kronfluence "
                  "and dattri ekfac, our trak rows with traker and dattri trak). traker is given our causal-LM "
                  "model output (it has none). Figures as measured."),
    }


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
        finetune_causal_lm(fresh(settings["seed"] + k), tok, train, max_length=max_length,
                           seed=settings["seed"] + k, **recipe).state_dict()
        for k in range(1, size["ensemble"])]
    methods = {
        "ekfac": {"method": "ekfac"},
        "trak (1 model)": {"method": "trak", "method_params": {"proj_dim": size["proj_dim"]}},
        f"trak ({size['ensemble']} models)": {"method": "trak", "method_params": {"proj_dim": size["proj_dim"]},
                                              "checkpoints": ensemble},
        "gradsim (cosine)": {"method": "gradsim", "method_params": {"proj_dim": size["proj_dim"]}},
        "gradsim (dot)": {"method": "gradsim", "method_params": {"proj_dim": size["proj_dim"], "similarity": "dot"}},
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
    retrain = causal_lm_retrain_eval(fresh, tok, train, targets, max_length=max_length, seed=settings["seed"],
                                     **recipe)
    outputs = subset_outputs(retrain, masks)
    rows = []
    for name, mat in scores.items():
        res = lds_from_outputs(mat, masks, outputs)
        valid = res.per_target[np.isfinite(res.per_target)]
        sem = valid.std(ddof=1) / np.sqrt(len(valid)) if len(valid) > 1 else float("nan")
        rows.append([name, round(res.mean, 4), round(float(sem), 4), len(valid), round(seconds[name], 1)])
    ek = next(r[1] for r in rows if r[0] == "ekfac")
    gs = max(r[1] for r in rows if r[0].startswith("gradsim"))
    return {
        "title": "LDS on the reference LM (higher is better)",
        "columns": ["method", "LDS (mean Spearman)", "std. error", "targets", "attribution seconds"],
        "rows": rows,
        "notes": (f"{len(train)} training / {len(targets)} target examples of the demo corpus; {size['subsets']} "
                  f"random 50% subsets, each retrained with the reference recipe ({recipe}, same seed and init); "
                  "f = mean log-likelihood of each target's reference response; Spearman per target across "
                  f"subsets, mean over targets. Measured: ekfac {ek:.3f} vs best gradsim {gs:.3f} "
                  f"({'ekfac higher' if ek > gs else 'ekfac NOT higher'}). Published reference points: EK-FAC "
                  "0.44 on WikiText-2/GPT-2, gradient-only ~0.1; a tiny model and few subsets make these noisy."),
    }


def run(quick: bool = True) -> list[dict]:
    ctx = setup(quick)
    return [throughput_table(ctx), lds_table(ctx)]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        import torch

        torch.set_num_threads(1)
        worker_spec = json.loads(Path(sys.argv[3]).read_text())
        warm = {**worker_spec, "train": worker_spec["train"][:4], "targets": worker_spec["targets"][:2]}
        WORKERS[sys.argv[2]](warm)  # first-call costs (einsum paths, lazy imports) stay out of the timing
        WORKERS[sys.argv[2]](worker_spec)
    else:
        for table in run(quick="--full" not in sys.argv):
            print(json.dumps(table, indent=1, default=str))
