"""kronfluence adapter: EK-FAC / K-FAC / diagonal / identity influence, example and exact token scores.

Factors are fitted once on the whole training set and kept in `work_dir`. The targets' preconditioned
gradients v_q = H^-1 grad m_q (m = -f) are computed once per run by kronfluence's own precondition step,
in micro-batches of `query_batch_size` targets (activation memory is one micro-batch, whatever the
number of targets), and kept in `work_dir` (and in memory within `query_memory_mb`). Each training
shard's example scores are then kronfluence's dot products of the shard's training gradients with the
stored v_q (`compute_dot_products_with_loader`, the second half of its pairwise scores): a training
gradient is computed once per shard, for every target at once while the targets' v_q fit
`query_memory_mb`, once per group of targets beyond it. Token scores are not kronfluence's per-token
scores (a per-*position* split, see attribution/token_influence.py): every token's influence is a
forward-mode derivative along the same stored v_q (`preconditioned_gradients`).

Workarounds for kronfluence 1.0.1, each tested in tests/attribution/test_attr_workarounds.py:
- `compute_pairwise_scores` puts every query of a batch through one forward pass (activations and
  logits of all targets alive at once), and a smaller query batch recomputes every training gradient
  once per query batch; it also recomputes the query gradients on every call (every shard). Ours runs
  its precondition step and its dot products separately (above).
- it silently *skips* work whose output folder exists, and trusts any factor file it finds (a kill
  mid-save leaves a partial safetensors file): factor folders and stored target gradients are trusted
  only when our completion marker exists; target gradients are keyed by the targets' contents.
- its per-token scores are per *position*, not per token (attribution/token_influence.py), and the
  preconditioned query gradients live only inside `compute_pairwise_scores`: `target_gradients` runs
  kronfluence's own precondition step (its tracked modules in PRECONDITION_GRADIENT mode, the factors
  it loads, the same ScoreArguments) and reads them from the modules' storage.
- `prepare_model` freezes and wraps the model in place: the caller hands us a model it owns.
- its `release_memory` (kronfluence.utils.state) runs `gc.collect()` after every phase (each factor
  fit step, every dot-product call): in a process holding a large heap (a notebook, the demo) a full
  collection costs 0.4 s each, 6.6 s of the quick demo. It frees CUDA memory held by cycles before
  `empty_cache`; on CPU reference counting frees the tensors and the collector's own schedule the
  cycles, so `release_memory_unless_cpu` (installed where kronfluence calls it) skips the collection
  unless a CUDA device is in use.
- `wrap_tracked_modules` can only replace children: a model that *is* one nn.Linear / nn.Conv2d
  (logistic regression) becomes its own child and every later `.to()` recurses forever. Such a model
  is put in an nn.Sequential.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.module.tracked_module import ModuleMode, TrackedModule
from kronfluence.module.utils import (
    finalize_iteration,
    get_tracked_module_names,
    prepare_modules,
    set_factors,
    set_mode,
    update_factor_args,
    update_score_args,
)
from kronfluence.score.dot_product import compute_dot_products_with_loader
from kronfluence.task import Task
from kronfluence.utils.constants import (
    ACCUMULATED_PRECONDITIONED_GRADIENT_NAME,
    ALL_MODULE_NAME,
    EIGENDECOMPOSITION_FACTOR_NAMES,
    PRECONDITIONED_GRADIENT_NAME,
)
from kronfluence.utils.dataset import DataLoaderKwargs
from kronfluence.utils.state import release_memory as kronfluence_release_memory
from safetensors.torch import load, save_file
from torch import nn

from attribution.scoring import Scorer, ShardScores, TokenTargets
from attribution.token_influence import low_rank, parameter_tangents, token_influence
from attribution.training import move_to_device

if TYPE_CHECKING:
    from attribution.sources import Prepared

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")


def release_memory_unless_cpu() -> None:
    """kronfluence's `release_memory` (gc.collect, torch.compiler.reset, emptying the CUDA cache) when a
    CUDA device is in use; otherwise only torch.compiler.reset, and only when the compiler is loaded (its
    first import takes seconds): on CPU the collection frees nothing that reference counting and the
    collector's own schedule would not (see the module docstring)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        kronfluence_release_memory()
    elif "torch._dynamo" in sys.modules:
        torch.compiler.reset()


def _install_release_memory() -> None:
    """Put `release_memory_unless_cpu` where kronfluence calls release_memory after a phase (the modules
    import the function by name). Its one other call, the retry after an out-of-memory error in the
    eigendecomposition, keeps the full collection."""
    import kronfluence.computer.computer
    import kronfluence.score.dot_product
    import kronfluence.score.self

    for module in (kronfluence.computer.computer, kronfluence.score.dot_product, kronfluence.score.self):
        module.release_memory = release_memory_unless_cpu


_install_release_memory()


@dataclass
class InfluenceConfig:
    strategy: str = "ekfac"
    damping: float | None = None  # None: kronfluence's heuristic, 0.1 x mean eigenvalue
    train_batch_size: int = 8
    # Targets per forward / backward pass when computing their preconditioned gradients: activation
    # memory grows with it, not with the number of targets. None: train_batch_size on CPU (no more
    # activation memory than a training batch); on CUDA as many as half the free device memory holds.
    query_batch_size: int | None = None
    # The targets' preconditioned gradients (float32, every tracked parameter) scored together against
    # each training batch: as many targets as fit here share one training-gradient pass per shard; each
    # further group of targets costs one more pass.
    query_memory_mb: float = 1024
    half_precision: bool | None = None  # None: bfloat16 autocast on CUDA, full precision on CPU
    covariance_max_examples: int | None = 100_000
    # Passes over the training set when fitting factors; each pass draws fresh labels from the model
    # (true Fisher), so more passes = a less noisy Monte-Carlo estimate on small training sets.
    fisher_samples: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")

    def params(self) -> dict:
        return asdict(self)


def batch_from_memory(free_bytes: int, per_example_bytes: int, fraction: float = 0.5, cap: int = 512) -> int:
    """Examples per batch when one example needs `per_example_bytes` and `fraction` of `free_bytes` may
    be used: at least 1, at most `cap`."""
    return int(max(1, min(cap, fraction * free_bytes // max(1, per_example_bytes))))


def content_digest(items: Sequence[Any]) -> str:
    """A digest of items made of tensors / arrays / numbers / strings in dicts, lists and tuples (what
    collate functions take): equal contents, equal digest, in any process."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            digest.update(f"a{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, dict):
            digest.update(b"d%d" % len(value))
            for key in sorted(value, key=str):
                feed(str(key))
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(b"l%d" % len(value))
            for v in value:
                feed(v)
        else:
            digest.update(f"{type(value).__name__}:{value!r}".encode())

    feed(list(items))
    return digest.hexdigest()[:16]


class TargetGradients:
    """The targets' preconditioned gradients per tracked module (n x d_out x d_in [+1 bias column], the
    layout kronfluence's trackers use), in groups of consecutive targets scored together. Each group is a
    safetensors file of `folder`; they are also held in memory when `in_memory`."""

    def __init__(self, folder: Path, sizes: list[int], in_memory: bool):
        self.folder, self.sizes = folder, sizes
        self._held = [self._load(k) for k in range(len(sizes))] if in_memory else None

    def _load(self, k: int) -> dict[str, torch.Tensor]:
        # read, not memory-mapped: a file changed under a mapping would crash the process (SIGBUS)
        return load((self.folder / f"group_{k}.safetensors").read_bytes())

    def groups(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(first target index, {module: gradients}) per group."""
        first = 0
        for k, size in enumerate(self.sizes):
            yield first, (self._held[k] if self._held is not None else self._load(k))
            first += size


class InfluenceScorer:
    """Influence of training items on query (target) items through one kronfluence Analyzer."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        work_dir: str | Path,
        config: InfluenceConfig,
        device: torch.device,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        empirical_fisher: bool = False,
        progress: bool = False,
        seed: int = 0,
    ):
        self.config, self.device, self.work_dir, self.seed = config, device, Path(work_dir), seed
        self.task = task
        self.collate_fn = collate_fn or torch.utils.data.default_collate
        self.work_dir.mkdir(parents=True, exist_ok=True)
        warnings.filterwarnings("ignore", message=".*GradScaler.*", category=FutureWarning)
        if isinstance(model, (nn.Linear, nn.Conv2d)):
            model = nn.Sequential(model)
        model = prepare_model(model.to(device), task)
        self.analyzer = Analyzer(
            "assay",
            model,
            task,
            cpu=device.type == "cpu",
            output_dir=str(self.work_dir),
            disable_tqdm=not progress,
            log_level=logging.WARNING,
        )
        if collate_fn is not None:
            self.analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate_fn))
        amp = config.half_precision if config.half_precision is not None else device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if amp else None
        self.factor_args = FactorArguments(
            strategy=config.strategy,
            use_empirical_fisher=empirical_fisher,
            amp_dtype=self.amp_dtype,
            covariance_max_examples=config.covariance_max_examples,
            lambda_max_examples=config.covariance_max_examples,
        )
        self.factors_name = f"factors_{config.strategy}"
        self._targets: tuple[str, TargetGradients] | None = None

    def fit(self, train_items: Sequence[Any]) -> None:
        """Fit (or reuse, when a previous process finished them) the factors on the training items."""
        marker = self.work_dir / f"{self.factors_name}.done"
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)  # the sampled Fisher labels: a refit gives the same factors
            self.analyzer.fit_all_factors(
                factors_name=self.factors_name,
                dataset=list(train_items) * max(1, self.config.fisher_samples),
                per_device_batch_size=self.config.train_batch_size,
                factor_args=self.factor_args,
                overwrite_output_dir=not marker.exists(),
            )
        marker.touch()

    def _modules(self) -> tuple[list[str], list[TrackedModule]]:
        model = self.analyzer.model
        names = get_tracked_module_names(model)
        return names, [m for m in model.modules() if isinstance(m, TrackedModule) and m.name in names]

    def targets_per_pass(self, n_query: int) -> int:
        """Targets whose preconditioned gradients (float32, every tracked parameter) fit query_memory_mb:
        they are scored together against each training batch. At least 1, at most n_query."""
        tracked = sum(p.numel() for m in self._modules()[1] for p in m.original_module.parameters())
        size = int(self.config.query_memory_mb * 2**20) // max(1, 4 * tracked)
        return max(1, min(size, n_query))

    def score_args(self) -> ScoreArguments:
        return ScoreArguments(damping_factor=self.config.damping, amp_dtype=self.amp_dtype)

    def _set_args(self) -> FactorArguments:
        factor_args = self.analyzer.load_factor_args(self.factors_name)
        update_factor_args(self.analyzer.model, factor_args)
        update_score_args(self.analyzer.model, self.score_args())
        return factor_args

    # ------------------------------------------------------------------------- target gradients
    def target_gradients(self, query_items: Sequence[Any]) -> TargetGradients:
        """The queries' preconditioned gradients, computed once: reused from memory, or from this work
        folder when a previous process (a shard worker, a resumed run) finished them for the same
        queries, factors and damping."""
        key = content_digest([self.factors_name, self.config.damping, str(self.amp_dtype), *query_items])
        if self._targets is not None and self._targets[0] == key:
            return self._targets[1]
        folder = self.work_dir / f"targets_{key}"
        marker = folder / "done.json"
        if not marker.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            sizes = self._precondition(query_items, folder)
            marker.write_text(json.dumps({"sizes": sizes}))
        sizes = json.loads(marker.read_text())["sizes"]
        self._targets = None  # the previous queries' gradients go before these are loaded
        targets = TargetGradients(folder, sizes, in_memory=len(sizes) == 1)
        self._targets = (key, targets)
        return targets

    def _query_batches(self, n: int) -> Iterator[tuple[int, int]]:
        """(start, stop) of the query micro-batches. With query_batch_size None on CUDA, the first
        batch is one query whose peak memory sizes the rest from the free device memory."""
        size = self.config.query_batch_size
        probe = size is None and self.device.type == "cuda"
        size = size or (1 if probe else self.config.train_batch_size)
        start = 0
        while start < n:
            if probe:
                torch.cuda.reset_peak_memory_stats(self.device)
                before = torch.cuda.memory_allocated(self.device)
            yield start, min(n, start + size)
            start += size
            if probe:
                used = torch.cuda.max_memory_allocated(self.device) - before
                size, probe = batch_from_memory(torch.cuda.mem_get_info(self.device)[0], used), False

    @torch.no_grad()
    def _save_group(self, folder: Path, k: int, parts: dict[str, list[torch.Tensor]], size: int) -> None:
        """Write the first `size` buffered rows of every module as group k; keep the rest buffered."""
        group = {}
        for name, chunks in parts.items():
            rows = torch.cat(chunks)
            group[name] = rows[:size].contiguous().cpu()
            parts[name] = [rows[size:]] if rows.shape[0] > size else []
        save_file(group, str(folder / f"group_{k}.safetensors"))

    def _precondition(self, query_items: Sequence[Any], folder: Path) -> list[int]:
        """kronfluence's precondition step over the queries in micro-batches; groups of
        targets_per_pass rows written to `folder`; their sizes returned."""
        model, n = self.analyzer.model, len(query_items)
        names, modules = self._modules()
        factor_args = self._set_args()
        set_mode(model, ModuleMode.PRECONDITION_GRADIENT, names, release_memory=True)
        for factor_name, factors in self.analyzer.load_all_factors(self.factors_name).items():
            set_factors(model, factor_name, factors, clone=True)
        prepare_modules(model, names, self.device)
        per_group = self.targets_per_pass(n)
        parts: dict[str, list[torch.Tensor]] = {m.name: [] for m in modules}
        sizes: list[int] = []
        buffered = 0
        try:
            for start, stop in self._query_batches(n):
                batch = move_to_device(self.collate_fn(list(query_items[start:stop])), self.device)
                model.zero_grad(set_to_none=True)
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    measurement = self.task.compute_measurement(batch, model)
                measurement.backward()
                if factor_args.has_shared_parameters:
                    finalize_iteration(model, names)
                for module in modules:  # (batch x d_out x d_in): one row per query
                    parts[module.name].append(module.storage[PRECONDITIONED_GRADIENT_NAME])
                    module.storage[PRECONDITIONED_GRADIENT_NAME] = None
                buffered += stop - start
                while buffered >= per_group or (stop == n and buffered > 0):
                    size = min(per_group, buffered)
                    self._save_group(folder, len(sizes), parts, size)
                    sizes.append(size)
                    buffered -= size
        finally:
            model.zero_grad(set_to_none=True)
            set_mode(model, ModuleMode.DEFAULT, names, release_memory=True)
            for module in modules:  # the factors are needed again only for other queries
                for factor_name in EIGENDECOMPOSITION_FACTOR_NAMES:
                    module.release_factor(factor_name)
        return sizes

    # ------------------------------------------------------------------------- scores
    def score(self, query_items: Sequence[Any], train_items: Sequence[Any]) -> torch.Tensor:
        """Scores (n_query x n_train): kronfluence's dot products of the training gradients with the
        queries' stored preconditioned gradients, one training pass per group of targets."""
        targets = self.target_gradients(query_items)
        loader = torch.utils.data.DataLoader(
            list(train_items),
            batch_size=self.config.train_batch_size,
            shuffle=False,
            collate_fn=self.collate_fn,
        )
        model = self.analyzer.model
        names, modules = self._modules()
        factor_args = self._set_args()
        scaler = torch.amp.GradScaler(self.device.type, enabled=False)  # bfloat16 / float32 only
        parts = []
        try:
            for _, group in targets.groups():
                for module in modules:
                    module.storage[ACCUMULATED_PRECONDITIONED_GRADIENT_NAME] = group[module.name].to(
                        self.device
                    )
                scores = compute_dot_products_with_loader(
                    model=model,
                    task=self.task,
                    state=self.analyzer.state,
                    train_loader=loader,
                    factor_args=factor_args,
                    score_args=self.score_args(),
                    tracked_module_names=names,
                    scaler=scaler,
                    disable_tqdm=True,
                )
                parts.append(scores[ALL_MODULE_NAME].float())
        finally:
            set_mode(model, ModuleMode.DEFAULT, names, release_memory=True)
        return torch.cat(parts)

    def preconditioned_gradients(
        self, query_items: Sequence[Any], weights: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """Row k of `weights` (n_rows x n_query) combines the queries' preconditioned gradients
        H^-1 grad m_q (m = the measurement, -f) into one direction; per tracked module, kronfluence's
        (n_rows x d_out x d_in [+1 bias column]) matrices: the vectors the example scores take inner
        products with (the same stored target gradients)."""
        mix = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        out: dict[str, torch.Tensor] = {}
        for first, group in self.target_gradients(query_items).groups():
            for name, grads in group.items():
                part = torch.einsum("kb,b...->k...", mix[:, first : first + grads.shape[0]], grads.float())
                out[name] = out[name] + part if name in out else part
        return {name: mat.to(self.device) for name, mat in out.items()}


class InfluenceMethod(Scorer):
    """The kronfluence methods: factors and the targets' preconditioned gradients computed once (kept
    in work_dir), example scores per shard by kronfluence's dot products with them, token scores by
    forward-mode derivatives along them; example, segment and token levels."""

    methods = STRATEGIES
    config_class = InfluenceConfig
    token_level = True
    persistent_fit = True

    @classmethod
    def make_config(cls, method: str, params: dict) -> InfluenceConfig:
        return InfluenceConfig(strategy=method, **params)

    def fit(self, prepared: Prepared) -> None:
        import copy

        self.prepared = prepared
        self.scorer = InfluenceScorer(
            copy.deepcopy(prepared.model),  # kronfluence wraps and freezes the model it is given
            prepared.kron_task,
            self.work_dir / "kronfluence",
            self.config,
            self.device,
            prepared.collate_fn,
            prepared.empirical_fisher,
            self.progress,
            seed=self.seed,
        )
        self.scorer.fit(prepared.train_items)
        self.scorer.target_gradients(prepared.target_items)  # once per run; shard workers reuse them
        self._cache: dict[tuple, tuple[np.ndarray, dict[str, torch.Tensor]]] = {}

    def score(self, shard_indices: Sequence[int], per_token: TokenTargets | None = None) -> ShardScores:
        p = self.prepared
        items = [p.train_items[i] for i in shard_indices]
        scores = ShardScores(self.scorer.score(p.target_items, items))
        if per_token is not None:
            scores.tokens = self.token_scores(shard_indices, per_token)
        return scores

    def token_scores(self, shard_indices: Sequence[int], targets: TokenTargets) -> list[np.ndarray]:
        """(n_keys x n_predicted_tokens) per train item: the directional derivative of its per-token
        losses along each key's preconditioned query gradient (attribution/token_influence.py)."""
        p = self.prepared
        if p.token_loss is None or p.texts is None:
            raise ValueError("token scores need the training items' per-token losses and tokens")
        mix, tangents = self._directions(targets)
        model, size = self.scorer.analyzer.model, self.config.train_batch_size
        amp = self.scorer.amp_dtype
        out = []
        for start in range(0, len(shard_indices), size):
            idx = list(shard_indices[start : start + size])
            batch = move_to_device(p.collate_fn([p.train_items[i] for i in idx]), self.device)
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                per_token = token_influence(model, p.token_loss, batch, tangents)
            per_token = per_token.double().cpu().numpy()
            out.extend(mix @ per_token[:, j, p.texts[i].positions] for j, i in enumerate(idx))
        return out

    def _directions(self, targets: TokenTargets) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """(mix, parameter tangents of the basis directions) for these token targets, computed once."""
        key = (tuple(targets.keys), targets.weights.tobytes())
        if key not in self._cache:
            mix, basis = low_rank(targets.weights)
            directions = self.scorer.preconditioned_gradients(self.prepared.target_items, basis)
            self._cache = {key: (mix, parameter_tangents(self.scorer.analyzer.model, directions))}
        return self._cache[key]
