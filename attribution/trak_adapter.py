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
- `featurize` / `score` project each call's gradients at once: on 8-row batches the projection matmul
  runs far below the machine's rate, and an uncached projector regenerates its matrix per call. Ours
  calls them on chunks of `projection_rows` examples (64; fewer when 64 rows of gradients exceed
  GRADIENT_BUFFER_MB) and `ChunkedGradientComputer` takes the per-example gradients `batch_size` at a
  time, so activation memory stays that of one small batch.

Projections (`TrakConfig.projection`): "dense" is traker's Gaussian JL matrix (grad_dim x proj_dim),
kept in memory while it fits `projection_cache_mb` and regenerated block by block per chunk beyond;
"factored" (`FactoredProjector`) projects each parameter's gradient matrix G (d_out x d_in) as
A G B^T with small Gaussian A (k_out x d_out) and B (k_in x d_in): a Kronecker-structured JL map whose
matrices take kilobytes at any model size and whose cost is a fraction of the dense one's, at the
price of a noisier embedding for the same proj_dim (benchmarks/attribution measures both).
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from trak import TRAKer
from trak.gradient_computers import FunctionalGradientComputer
from trak.modelout_functions import AbstractModelOutput
from trak.projectors import AbstractProjector, BasicProjector, ProjectionType
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


PROJECTIONS = ("dense", "factored")
# Per-example gradients buffered for one projection chunk (rows x grad_dim floats) stay under this.
GRADIENT_BUFFER_MB = 1024


@dataclass
class TrakConfig:
    proj_dim: int = 2048
    lambda_reg: float | None = None  # None: 1e-3 when train examples < proj_dim (singular kernel), else 0
    batch_size: int = 8  # examples per per-example-gradient pass (activation memory grows with it)
    projection_rows: int = 64  # examples projected together (see chunk_rows)
    target_chunk: int = 256
    half_precision: bool | None = None  # None: on CUDA only
    modules: Sequence[str] | str | None = None  # parameters of these modules only (None: all)
    projection_cache_mb: int = 1024  # keep the dense random projection in memory up to this size
    projection: str = "dense"  # or "factored" (FactoredProjector)

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}; use one of {', '.join(PROJECTIONS)}")

    def params(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def chunk_rows(grad_dim: int, rows: int, batch_size: int, buffer_mb: float = GRADIENT_BUFFER_MB) -> int:
    """Examples per projection chunk: `rows`, fewer when their float32 gradients exceed `buffer_mb`,
    never fewer than one gradient batch."""
    fit = int(buffer_mb * 2**20) // max(1, 4 * grad_dim)
    return max(1, batch_size, min(rows, fit))


class ChunkedGradientComputer(FunctionalGradientComputer):
    """traker's FunctionalGradientComputer taking per-example gradients `micro_batch` examples at a time,
    so one featurize / score call (one projection) can cover a chunk of many examples while the
    activations are those of `micro_batch` examples. Pass it to TRAKer as
    `functools.partial(ChunkedGradientComputer, micro_batch=...)`."""

    def __init__(self, *args: Any, micro_batch: int = 8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.micro_batch = micro_batch

    def _parts(self, batch: Iterable[Tensor]) -> list[tuple[Tensor, ...]]:
        batch = tuple(batch)
        n, size = batch[0].shape[0], self.micro_batch
        return [tuple(t[a : a + size] for t in batch) for a in range(0, n, size)]

    def compute_per_sample_grad(self, batch: Iterable[Tensor]) -> dict[str, Tensor]:
        parts = [super(ChunkedGradientComputer, self).compute_per_sample_grad(b) for b in self._parts(batch)]
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def compute_loss_grad(self, batch: Iterable[Tensor]) -> Tensor:
        return torch.cat(
            [super(ChunkedGradientComputer, self).compute_loss_grad(b) for b in self._parts(batch)]
        )


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


def _as_matrix(shape: Sequence[int]) -> tuple[int, int]:
    """A parameter's gradient as a (d_out x d_in) matrix: a vector is one column, a convolution
    kernel's input dimensions are flattened."""
    return (int(shape[0]), 1) if len(shape) == 1 else (int(shape[0]), math.prod(shape[1:]))


def factored_dims(shapes: dict[str, Sequence[int]], proj_dim: int) -> dict[str, tuple[int, int, int]]:
    """(k, k_out, k_in) per parameter: proj_dim shared equally (a parameter with fewer entries than its
    share keeps them all and the rest goes to the others), each share k taken from a k_out x k_in grid
    as square as the parameter's shape allows."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    if proj_dim > sum(sizes.values()):
        raise ValueError(f"proj_dim {proj_dim} exceeds the {sum(sizes.values())} gradient entries")
    share, remaining = {}, proj_dim
    for i, name in enumerate(sorted(sizes, key=sizes.__getitem__)):
        share[name] = min(sizes[name], remaining // (len(sizes) - i))
        remaining -= share[name]
    plan = {}
    for name, shape in shapes.items():  # the parameters' own order: features are laid out in it
        k, (d_out, d_in) = share[name], _as_matrix(shape)
        k_in = min(d_in, math.ceil(math.sqrt(k)))
        k_out = min(d_out, math.ceil(k / k_in))
        k_in = min(d_in, math.ceil(k / k_out))
        plan[name] = (k, k_out, k_in)
    return plan


class FactoredProjector(AbstractProjector):
    """A Kronecker-structured Gaussian JL projection, parameter by parameter: a gradient matrix G
    (d_out x d_in) becomes the first k entries of A G B^T, A (k_out x d_out) and B (k_in x d_in) with
    N(0, 1) entries, so every feature is a^T G b with E[(a^T G b)^2] = ||G||^2 as for traker's dense
    Gaussian rows. Its matrices take (k_out d_out + k_in d_in) floats per parameter instead of
    k d_out d_in, and projecting costs d_out d_in k_in + k_out d_out k_in per example instead of
    d_out d_in k. Takes traker's per-parameter gradient dicts; one model id's matrices are kept."""

    def __init__(
        self,
        shapes: dict[str, Sequence[int]],
        proj_dim: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        grad_dim = sum(math.prod(s) for s in shapes.values())
        super().__init__(grad_dim, proj_dim, seed, ProjectionType.normal, device)
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.plan = factored_dims(self.shapes, proj_dim)
        self._model_id: int | None = None
        self._matrices: dict[str, tuple[Tensor, Tensor]] = {}

    def matrices(self, model_id: int) -> dict[str, tuple[Tensor, Tensor]]:
        if self._model_id != model_id:  # seeded per model id, as traker's projectors are
            generator = torch.Generator().manual_seed(self.seed + int(1e4) * model_id)
            self._matrices = {}
            for name, (_, k_out, k_in) in self.plan.items():
                d_out, d_in = _as_matrix(self.shapes[name])
                a = torch.randn(k_out, d_out, generator=generator)
                b = torch.randn(k_in, d_in, generator=generator)
                self._matrices[name] = (a.to(self.device), b.to(self.device))
            self._model_id = model_id
        return self._matrices

    def project(self, grads: Tensor | dict, model_id: int) -> Tensor:
        if not isinstance(grads, dict):
            raise TypeError(
                "FactoredProjector takes per-parameter gradients: a dict of name -> (batch x shape)"
            )
        parts = []
        for name, (a, b) in self.matrices(model_id).items():
            g = grads[name].to(dtype=a.dtype)
            g = g.reshape(g.shape[0], *_as_matrix(self.shapes[name]))
            sketch = torch.matmul(a, torch.matmul(g, b.T))  # (batch x k_out x k_in)
            parts.append(sketch.reshape(g.shape[0], -1)[:, : self.plan[name][0]])
        return torch.cat(parts, dim=1)


def make_projector(
    grad_dim: int,
    proj_dim: int,
    device: torch.device,
    dtype: torch.dtype,
    cache_mb: int = 1024,
    projection: str = "dense",
    shapes: dict[str, Sequence[int]] | None = None,
) -> Any:
    """traker's projector for `projection` "dense" (fast_jl's CudaProjector on CUDA when installed, else
    CachedProjector), or a FactoredProjector over the parameters' `shapes`."""
    if projection == "factored":
        if shapes is None:
            raise ValueError("a factored projection needs the parameters' shapes")
        return FactoredProjector(shapes, proj_dim, seed=0, device=device)
    if device.type == "cuda":
        try:
            from trak.projectors import CudaProjector

            return CudaProjector(
                grad_dim=grad_dim,
                proj_dim=proj_dim,
                seed=0,
                proj_type=ProjectionType.rademacher,
                device=device,
                max_batch_size=32,  # traker's default
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

    def _batches(self, items: Sequence[Any], rows: int) -> Iterable[tuple[int, tuple]]:
        """Chunks of `rows` items (one projection each; the gradient computer splits them further)."""
        for start in range(0, len(items), rows):
            batch = self.collate_fn(list(items[start : start + rows]))
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
        shapes = {k: tuple(params[k].shape) for k in (self.grad_wrt or params)}
        grad_dim = sum(math.prod(s) for s in shapes.values())
        dtype = torch.float16 if half else torch.float32
        rows = chunk_rows(grad_dim, cfg.projection_rows, cfg.batch_size)
        projector = make_projector(
            grad_dim, cfg.proj_dim, self.device, dtype, cfg.projection_cache_mb, cfg.projection, shapes
        )
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
            projector=projector,
            gradient_computer=functools.partial(ChunkedGradientComputer, micro_batch=cfg.batch_size),
            grad_wrt=self.grad_wrt,
            logging_level=logging.WARNING,
        )
        for model_id, ckpt in enumerate(checkpoints):
            traker.load_checkpoint(ckpt, model_id=model_id)
            for start, batch in self._batches(train_items, rows):
                traker.featurize(batch=batch, inds=np.arange(start, start + batch[0].shape[0]))
        traker.finalize_features()
        for first in range(0, len(target_items), cfg.target_chunk):
            chunk = target_items[first : first + cfg.target_chunk]
            name = f"targets_{first}"
            for model_id, ckpt in enumerate(checkpoints):
                traker.start_scoring_checkpoint(
                    exp_name=name, checkpoint=ckpt, model_id=model_id, num_targets=len(chunk)
                )
                for start, batch in self._batches(chunk, rows):
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
