"""kronfluence adapter: EK-FAC / K-FAC / diagonal / identity influence, example and exact token scores.

Factors are fitted once on the whole training set and kept in `work_dir`; example scores are computed
one training shard at a time (kronfluence's pairwise scores), so memory holds one shard x all targets.
Token scores are not kronfluence's per-token scores (a per-*position* split, see
attribution/token_influence.py): `preconditioned_gradients` hands out kronfluence's preconditioned
query gradients v = H^-1 grad(-f), and every token's influence is a forward-mode derivative along v.

Workarounds for kronfluence 1.0.1, each tested in tests/attribution/test_attr_workarounds.py:
- `compute_pairwise_scores` returns None after computing: scores are read back from its output folder.
- it silently *skips* work whose output folder exists: every shard gets a fresh name, deleted after
  reading, and factor folders are trusted only when our completion marker exists (a kill mid-save
  leaves a partial safetensors file that kronfluence would otherwise load).
- its per-token scores are per *position*, not per token (attribution/token_influence.py), and the
  preconditioned query gradients they start from live only inside `compute_pairwise_scores`:
  `preconditioned_gradients` runs kronfluence's own precondition step (its tracked modules in
  PRECONDITION_GRADIENT mode, the factors it loads, the same ScoreArguments) and reads them from the
  modules' storage.
- `prepare_model` freezes and wraps the model in place: the caller hands us a model it owns.
- `wrap_tracked_modules` can only replace children: a model that *is* one nn.Linear / nn.Conv2d
  (logistic regression) becomes its own child and every later `.to()` recurses forever. Such a model
  is put in an nn.Sequential.
"""

from __future__ import annotations

import logging
import shutil
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.module.tracked_module import ModuleMode, TrackedModule
from kronfluence.module.utils import (
    get_tracked_module_names,
    prepare_modules,
    set_factors,
    set_mode,
    update_factor_args,
    update_score_args,
)
from kronfluence.task import Task
from kronfluence.utils.constants import ALL_MODULE_NAME, PRECONDITIONED_GRADIENT_NAME
from kronfluence.utils.dataset import DataLoaderKwargs
from torch import nn

from attribution.scoring import Scorer, ShardScores, TokenTargets
from attribution.token_influence import low_rank, parameter_tangents, token_influence
from attribution.training import move_to_device

if TYPE_CHECKING:
    from attribution.sources import Prepared

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")


@dataclass
class InfluenceConfig:
    strategy: str = "ekfac"
    damping: float | None = None  # None: kronfluence's heuristic, 0.1 x mean eigenvalue
    train_batch_size: int = 8
    # kronfluence recomputes every training gradient once per query batch: by default (None) all targets
    # go in one batch while their preconditioned gradients fit in query_memory_mb.
    query_batch_size: int | None = None
    query_memory_mb: int = 1024
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

    def query_batch_size(self, n_query: int) -> int:
        """The configured size, or as many queries as fit query_memory_mb (float32 gradients of every
        tracked parameter per query), at least 1 and at most n_query."""
        size = self.config.query_batch_size
        if size is None:
            tracked = sum(
                p.numel()
                for m in self.analyzer.model.modules()
                if isinstance(m, TrackedModule)
                for p in m.original_module.parameters()
            )
            size = (self.config.query_memory_mb * 2**20) // max(1, 4 * tracked)
        return max(1, min(size, n_query))

    def score_args(self) -> ScoreArguments:
        return ScoreArguments(damping_factor=self.config.damping, amp_dtype=self.amp_dtype)

    def score(self, query_items: Sequence[Any], train_items: Sequence[Any]) -> torch.Tensor:
        """Scores (n_query x n_train)."""
        name = f"shard_{uuid.uuid4().hex[:12]}"
        self.analyzer.compute_pairwise_scores(
            scores_name=name,
            factors_name=self.factors_name,
            query_dataset=query_items,
            train_dataset=train_items,
            per_device_query_batch_size=self.query_batch_size(len(query_items)),
            per_device_train_batch_size=self.config.train_batch_size,
            score_args=self.score_args(),
        )
        try:
            scores = self.analyzer.load_pairwise_scores(name)[ALL_MODULE_NAME].float().clone()
        finally:
            shutil.rmtree(self.analyzer.scores_output_dir(name), ignore_errors=True)
        return scores

    def preconditioned_gradients(
        self, query_items: Sequence[Any], weights: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """Row k of `weights` (n_rows x n_query) combines the queries' preconditioned gradients
        H^-1 grad m_q (m = the measurement, -f) into one direction; per tracked module, kronfluence's
        (n_rows x d_out x d_in [+1 bias column]) matrices: the vectors compute_pairwise_scores takes
        inner products with, by kronfluence's own precondition step."""
        model, n = self.analyzer.model, len(query_items)
        names = get_tracked_module_names(model)
        modules = [m for m in model.modules() if isinstance(m, TrackedModule) and m.name in names]
        update_factor_args(model, self.analyzer.load_factor_args(self.factors_name))
        update_score_args(model, self.score_args())
        set_mode(model, ModuleMode.PRECONDITION_GRADIENT, names, release_memory=True)
        for factor_name, factors in self.analyzer.load_all_factors(self.factors_name).items():
            set_factors(model, factor_name, factors, clone=True)
        prepare_modules(model, names, self.device)
        mix = torch.as_tensor(np.asarray(weights), dtype=torch.float32, device=self.device)
        out: dict[str, torch.Tensor] = {}
        size = self.query_batch_size(n)
        try:
            for start in range(0, n, size):
                batch = move_to_device(self.collate_fn(list(query_items[start : start + size])), self.device)
                model.zero_grad(set_to_none=True)
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    measurement = self.task.compute_measurement(batch, model)
                measurement.backward()
                for module in modules:
                    grads = module.storage[PRECONDITIONED_GRADIENT_NAME]  # (batch x d_out x d_in)
                    part = torch.einsum("kb,b...->k...", mix[:, start : start + size].to(grads.dtype), grads)
                    out[module.name] = out[module.name] + part if module.name in out else part
                    module.storage[PRECONDITIONED_GRADIENT_NAME] = None
        finally:
            model.zero_grad(set_to_none=True)
            set_mode(model, ModuleMode.DEFAULT, names, release_memory=True)
        return out


class InfluenceMethod(Scorer):
    """The kronfluence methods: factors fitted once on the training set (kept in work_dir), example
    scores per shard by kronfluence, token scores by forward-mode derivatives along its preconditioned
    query gradients; example, segment and token levels."""

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
