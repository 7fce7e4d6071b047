"""kronfluence adapter: EK-FAC / K-FAC / diagonal / identity influence, example or per-token scores.

Factors are fitted once on the whole training set and kept in `work_dir`; scores are computed one
training shard at a time, so memory holds one shard x all targets (x tokens) at most.

Workarounds for kronfluence 1.0.1, each tested in tests/attribution/test_attr_workarounds.py:
- `compute_pairwise_scores` returns None after computing: scores are read back from its output folder.
- it silently *skips* work whose output folder exists: every shard gets a fresh name, deleted after
  reading, and factor folders are trusted only when our completion marker exists (a kill mid-save
  leaves a partial safetensors file that kronfluence would otherwise load).
- per-token scores are concatenated across train batches: all items of a shard must share one length
  (the LM layer pads each shard to its longest item).
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

import torch
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.module.tracked_module import TrackedModule
from kronfluence.task import Task
from kronfluence.utils.dataset import DataLoaderKwargs
from torch import nn

from attribution.scoring import Scorer

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
        self._amp = torch.bfloat16 if amp else None
        self.factor_args = FactorArguments(
            strategy=config.strategy,
            use_empirical_fisher=empirical_fisher,
            amp_dtype=self._amp,
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

    def score(
        self, query_items: Sequence[Any], train_items: Sequence[Any], per_token: bool = False
    ) -> torch.Tensor:
        """Scores (n_query x n_train), or (n_query x n_train x seq_len) with `per_token`."""
        name = f"shard_{uuid.uuid4().hex[:12]}"
        args = ScoreArguments(
            damping_factor=self.config.damping, amp_dtype=self._amp, compute_per_token_scores=per_token
        )
        self.analyzer.compute_pairwise_scores(
            scores_name=name,
            factors_name=self.factors_name,
            query_dataset=query_items,
            train_dataset=train_items,
            per_device_query_batch_size=self.query_batch_size(len(query_items)),
            per_device_train_batch_size=self.config.train_batch_size,
            score_args=args,
        )
        try:
            scores = self.analyzer.load_pairwise_scores(name)["all_modules"].float().clone()
        finally:
            shutil.rmtree(self.analyzer.scores_output_dir(name), ignore_errors=True)
        return scores


class InfluenceMethod(Scorer):
    """The kronfluence methods: factors fitted once on the training set (kept in work_dir), scores
    per shard; example, segment and token levels."""

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

    def score(self, shard_indices: Sequence[int], per_token: bool = False) -> torch.Tensor:
        p = self.prepared
        items = [p.train_items[i] for i in shard_indices]
        if per_token and p.pad_shard is not None:
            items = p.pad_shard(items)
        return self.scorer.score(p.target_items, items, per_token=per_token)
