"""traker adapter: a causal-LM model output (traker has none) and ensembles over checkpoints.

Output function of one SFT example: the mean over its response tokens of the margin
log p_t - log(1 - p_t) (TRAK's classification margin, per token); out-to-loss term: mean of (1 - p_t).
Positive scores = helpful (the training example raises the target's margin), as for influence.

Workarounds for traker 0.3.2, each tested in tests/attribution/test_attr_workarounds.py:
- no causal-LM output: `CausalLMModelOutput` below.
- features are computed under `torch.func.vmap`, which transformers' sdpa attention rejects
  (data-dependent control flow): `use_eager_attention` switches a loaded model to eager attention.
- `BasicProjector` with proj_dim <= its block size (one block) loses its matrix in
  `finalize_features` and fails when scoring: the block size is kept below proj_dim.
- `BasicProjector` (traker's projector on CPU, and on CUDA without fast_jl) regenerates its random
  matrix block by block for every batch: on the CPU that was ~80% of TRAK's time. `CachedProjector`
  keeps the whole matrix (the same blocks from the same generator states: the same projection)
  while it fits in `TrakConfig.projection_cache_mb`, with Gaussian entries as traker uses on CPU.
- the kernel (X^T X) is singular with fewer training examples than proj_dim and traker's scores then
  collapse to ~0: `lambda_reg` defaults to a small ridge in that case.
- `finalize_scores` builds the full train x targets matrix in memory: targets are scored in chunks
  (one traker experiment each), so memory holds train x chunk.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from trak import TRAKer
from trak.modelout_functions import AbstractModelOutput
from trak.projectors import BasicProjector, ProjectionType
from trak.utils import vectorize

from attribution.lm_data import IGNORE_INDEX
from attribution.scoring import Scorer, ShardScores, TokenTargets

if TYPE_CHECKING:
    from attribution.sources import Prepared


def token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log p and log(1 - p) of each next token (..., T-1), and the mask of scored positions."""
    logits = logits[..., :-1, :].float()
    targets = labels[..., 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    logp_all = torch.log_softmax(logits, -1)
    logp = torch.gather(logp_all, -1, safe.unsqueeze(-1)).squeeze(-1)
    # log(1 - p) as the logsumexp of the *other* tokens' log-probabilities (stable, vmap-safe)
    onehot = torch.zeros_like(logp_all, dtype=torch.bool).scatter(-1, safe.unsqueeze(-1), True)
    log_rest = torch.logsumexp(logp_all.masked_fill(onehot, float("-inf")), -1)
    return logp, log_rest, mask


class CausalLMModelOutput(AbstractModelOutput):
    """traker model output for SFT examples given as (input_ids, attention_mask, labels) batches."""

    def __init__(self) -> None:
        super().__init__()

    @staticmethod
    def get_output(
        model: nn.Module,
        weights: dict,
        buffers: dict,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
    ) -> Tensor:
        kwargs = {"input_ids": input_ids.unsqueeze(0), "attention_mask": attention_mask.unsqueeze(0)}
        logits = torch.func.functional_call(model, (weights, buffers), args=(), kwargs=kwargs).logits
        logp, log_rest, mask = token_logps(logits, labels.unsqueeze(0))
        margins = (logp - log_rest) * mask
        return margins.sum() / mask.sum().clamp(min=1)

    def get_out_to_loss_grad(
        self, model: nn.Module, weights: dict, buffers: dict, batch: Iterable[Tensor]
    ) -> Tensor:
        input_ids, attention_mask, labels = batch
        logits = torch.func.functional_call(
            model,
            (weights, buffers),
            args=(),
            kwargs={"input_ids": input_ids, "attention_mask": attention_mask},
        ).logits
        logp, _, mask = token_logps(logits, labels)
        one_minus_p = (1 - logp.exp()) * mask
        return (one_minus_p.sum(-1) / mask.sum(-1).clamp(min=1)).detach().unsqueeze(-1)


def lm_batch(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """A collated SFT batch as the positional tuple traker passes to the model output."""
    return batch["input_ids"], batch["attention_mask"], batch["labels"]


@dataclass
class TrakConfig:
    proj_dim: int = 2048
    lambda_reg: float | None = None  # None: 1e-3 when train examples < proj_dim (singular kernel), else 0
    batch_size: int = 8
    target_chunk: int = 256
    half_precision: bool | None = None  # None: on CUDA only
    modules: Sequence[str] | str | None = None  # parameters of these modules only (None: all)
    projection_cache_mb: int = 1024  # keep the random projection in memory up to this size

    def params(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


class CachedProjector(BasicProjector):
    """traker's BasicProjector with its full matrix generated once per model id and kept.

    The blocks come from BasicProjector's own generator states, so the projection is the one
    BasicProjector computes; only the per-batch regeneration is gone. Above `cache_bytes` (grad_dim x
    proj_dim x dtype size) it behaves exactly as BasicProjector. traker's `free_memory` (called in
    finalize_features, just before scoring needs the matrix again) drops only the block buffer.
    """

    def __init__(self, *args: Any, cache_bytes: int = 1 << 30, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache_bytes = cache_bytes
        self._full: Tensor | None = None
        self._full_model_id: int | None = None

    def fits(self) -> bool:
        return (
            self.grad_dim * self.proj_dim * torch.empty((), dtype=self.dtype).element_size()
            <= self.cache_bytes
        )

    def _matrix(self, model_id: int) -> Tensor:
        if self._full is None or self._full_model_id != model_id:
            if model_id != self.model_id:
                self.model_id = model_id
                self.get_generator_states()
            self._full = None  # the old matrix goes before the new one is built
            full = torch.empty(self.grad_dim, self.proj_dim, dtype=self.dtype, device=self.device)
            for ind in range(self.num_blocks):
                self.generate_sketch_matrix(self.generator_states[ind])
                st, ed = ind * self.block_size, min((ind + 1) * self.block_size, self.proj_dim)
                full[:, st:ed] = self.proj_matrix[:, : ed - st]
            self._full, self._full_model_id = full, model_id
        return self._full

    def project(self, grads: Tensor | dict, model_id: int) -> Tensor:
        if not self.fits():
            return super().project(grads, model_id)
        if isinstance(grads, dict):
            grads = vectorize(grads, device=self.device)
        grads = grads.to(dtype=self.dtype)
        return grads @ self._matrix(model_id)


def make_projector(
    grad_dim: int, proj_dim: int, device: torch.device, dtype: torch.dtype, cache_mb: int = 1024
) -> Any:
    if device.type == "cuda":
        try:
            from trak.projectors import CudaProjector

            return CudaProjector(
                grad_dim=grad_dim,
                proj_dim=proj_dim,
                seed=0,
                proj_type=ProjectionType.rademacher,
                device=device,
                max_batch_size=8,
            )
        except (ImportError, ValueError, RuntimeError) as exc:  # no fast_jl, or an unsupported proj_dim
            logging.getLogger(__name__).info("CudaProjector unavailable (%s); using BasicProjector", exc)
    # traker's BasicProjector keeps a single block's matrix only until finalize_features frees it;
    # with proj_dim <= block_size (one block) scoring then fails. Two blocks or more regenerate it.
    if proj_dim < 2:
        raise ValueError("proj_dim must be at least 2")
    # Gaussian entries, as traker picks on CPU: torch draws normals ~4x faster than Bernoulli signs there
    return CachedProjector(
        grad_dim=grad_dim,
        proj_dim=proj_dim,
        seed=0,
        proj_type=ProjectionType.normal,
        device=device,
        dtype=dtype,
        block_size=min(100, proj_dim - 1),
        cache_bytes=cache_mb * 2**20,
    )


def use_eager_attention(model: nn.Module) -> nn.Module:
    """Switch a transformers model to eager attention (sdpa fails under torch.func.vmap)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", "eager") != "eager":
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        else:
            config._attn_implementation = "eager"
    return model


class TrakScorer:
    """TRAK scores of training items on targets, averaged over `checkpoints` (state dicts)."""

    def __init__(
        self,
        model: nn.Module,
        output: AbstractModelOutput,
        work_dir: str | Path,
        config: TrakConfig,
        device: torch.device,
        to_tuple: Callable[[Any], tuple] = tuple,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        grad_wrt: list[str] | None = None,
        progress: bool = False,
    ):
        self.model = use_eager_attention(model).to(device).eval()
        self.output, self.config, self.device = output, config, device
        self.work_dir = Path(work_dir)
        self.to_tuple = to_tuple
        self.collate_fn = collate_fn or torch.utils.data.default_collate
        self.grad_wrt, self.progress = grad_wrt, progress
        self._scores: list[tuple[int, np.ndarray]] = []  # (first target index, train x chunk memmap)

    def _batches(self, items: Sequence[Any]) -> Iterable[tuple[int, tuple]]:
        bs = self.config.batch_size
        for start in range(0, len(items), bs):
            batch = self.collate_fn(list(items[start : start + bs]))
            batch = tuple(t.to(self.device) for t in self.to_tuple(batch))
            yield start, batch

    def fit(
        self,
        train_items: Sequence[Any],
        target_items: Sequence[Any],
        checkpoints: Sequence[dict[str, Tensor]],
    ) -> None:
        """Featurize the training set and score every target chunk under each checkpoint."""
        n, cfg = len(train_items), self.config
        lam = cfg.lambda_reg if cfg.lambda_reg is not None else (1e-3 if n < cfg.proj_dim else 0.0)
        if n < cfg.proj_dim:
            # Not an error: on the demo LM a large projection with the ridge ranks better (LDS) than a
            # small invertible one, but the ridge's size then matters and the user should know.
            logging.getLogger(__name__).info(
                "TRAK: %d training examples < proj_dim %d: the kernel is singular; lambda_reg %g regularises it",
                n,
                cfg.proj_dim,
                lam,
            )
        half = cfg.half_precision if cfg.half_precision is not None else self.device.type == "cuda"
        params = dict(self.model.named_parameters())
        grad_dim = sum(params[k].numel() for k in (self.grad_wrt or params))
        dtype = torch.float16 if half else torch.float32
        shutil.rmtree(self.work_dir, ignore_errors=True)  # traker refuses to re-featurize a model id
        traker = TRAKer(
            model=self.model,
            task=self.output,
            train_set_size=n,
            save_dir=str(self.work_dir),
            device=str(self.device),
            proj_dim=cfg.proj_dim,
            use_half_precision=half,
            lambda_reg=lam,
            projector=make_projector(grad_dim, cfg.proj_dim, self.device, dtype, cfg.projection_cache_mb),
            grad_wrt=self.grad_wrt,
            logging_level=logging.WARNING,
        )
        for model_id, ckpt in enumerate(checkpoints):
            traker.load_checkpoint(ckpt, model_id=model_id)
            for start, batch in self._batches(train_items):
                traker.featurize(batch=batch, inds=np.arange(start, start + batch[0].shape[0]))
        traker.finalize_features()
        for first in range(0, len(target_items), cfg.target_chunk):
            chunk = target_items[first : first + cfg.target_chunk]
            name = f"targets_{first}"
            for model_id, ckpt in enumerate(checkpoints):
                traker.start_scoring_checkpoint(
                    exp_name=name, checkpoint=ckpt, model_id=model_id, num_targets=len(chunk)
                )
                for start, batch in self._batches(chunk):
                    traker.score(batch=batch, inds=np.arange(start, start + batch[0].shape[0]))
            scores = traker.finalize_scores(exp_name=name)
            self._scores.append((first, scores))
        self.traker = traker

    def score(self, train_indices: Sequence[int]) -> torch.Tensor:
        """(n_targets x len(train_indices)) rows of the finished score matrices."""
        idx = np.asarray(train_indices)
        parts = [np.asarray(mat[idx], dtype=np.float32).T for _, mat in self._scores]
        return torch.from_numpy(np.concatenate(parts, axis=0))


class TrakMethod(Scorer):
    """TRAK (traker): features and scores of every target computed in `fit`, averaged over
    `checkpoints` (default: the model); example level only."""

    methods = ("trak",)
    config_class = TrakConfig

    def fit(self, prepared: Prepared) -> None:
        import copy

        if prepared.trak_output is None:
            raise ValueError("trak on a plain module needs a traker model output (trak_output=...)")
        self.scorer = TrakScorer(
            copy.deepcopy(prepared.model),
            prepared.trak_output,
            self.work_dir / "trak",
            self.config,
            self.device,
            prepared.to_tuple,
            prepared.collate_fn,
            prepared.param_names(),
            self.progress,
        )
        checkpoints = list(self.checkpoints or [prepared.model.state_dict()])
        self.scorer.fit(prepared.train_items, prepared.target_items, checkpoints)

    def score(self, shard_indices: Sequence[int], per_token: TokenTargets | None = None) -> ShardScores:
        return ShardScores(self.scorer.score(shard_indices))
