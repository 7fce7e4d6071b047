"""Gradient similarity, the cheap baseline: dot or cosine of randomly projected per-example gradients.

score(z, target) = <P grad L(z), P grad(-f(target))> (or its cosine), i.e. influence with the Hessian
replaced by the identity, after a Johnson-Lindenstrauss projection P (traker's projector, or the
factored one: attribution.trak_adapter). Positive = helpful, as for the other methods. Target
gradients are kept (n_targets x proj_dim); training gradients are streamed shard by shard, taken
`batch_size` examples at a time and projected in chunks of `projection_rows` (as TRAK's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attribution.scoring import Scorer, ShardScores, TokenTargets
from attribution.tasks import FunctionModule, PerExample
from attribution.training import move_to_device
from attribution.trak_adapter import PROJECTIONS, chunk_rows, make_projector, use_eager_attention

if TYPE_CHECKING:
    from attribution.sources import Prepared


@dataclass
class GradSimConfig:
    # the cheap baseline: a smaller projection than TRAK's (memory and the one-off matrix grow with it)
    proj_dim: int = 512
    similarity: str = "cosine"  # or "dot"
    batch_size: int = 8  # examples per per-example-gradient pass
    projection_rows: int = 64  # examples projected together (trak_adapter.chunk_rows)
    projection: str = "dense"  # or "factored" (trak_adapter.FactoredProjector)

    def __post_init__(self) -> None:
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"unknown similarity {self.similarity!r}; use 'cosine' or 'dot'")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}; use one of {', '.join(PROJECTIONS)}")

    def params(self) -> dict:
        return asdict(self)


class GradSimScorer:
    def __init__(
        self,
        model: nn.Module,
        loss: PerExample,
        target: PerExample,
        config: GradSimConfig,
        device: torch.device,
        collate_fn: Callable[[list[Any]], Any],
        param_names: list[str] | None = None,
        seed: int = 0,
    ):
        self.model = use_eager_attention(model).to(device).eval()
        self.loss, self.target, self.config, self.device = loss, target, config, device
        self.collate_fn = collate_fn
        named = dict(self.model.named_parameters())
        self.names = param_names or [k for k, p in named.items() if p.requires_grad]
        self.frozen = {k: v.detach() for k, v in named.items() if k not in self.names}
        self.buffers = dict(self.model.named_buffers())
        shapes = {k: tuple(named[k].shape) for k in self.names}
        grad_dim = sum(named[k].numel() for k in self.names)
        torch.manual_seed(seed)
        self.projector = make_projector(
            grad_dim, config.proj_dim, device, torch.float32, projection=config.projection, shapes=shapes
        )
        self.rows = chunk_rows(grad_dim, config.projection_rows, config.batch_size)
        self._targets: torch.Tensor | None = None

    def _per_example(self, fn: PerExample, item_batch: Any) -> dict[str, torch.Tensor]:
        """Per-example gradients of fn over the selected parameters (torch.func, one vmap per batch)."""
        named = dict(self.model.named_parameters())
        params = {k: named[k].detach() for k in self.names}
        wrapper = FunctionModule(self.model, fn)
        fixed = {f"model.{k}": v for k, v in {**self.frozen, **self.buffers}.items()}

        def one(p: dict, single: Any) -> torch.Tensor:
            state = {**fixed, **{f"model.{k}": v for k, v in p.items()}}
            return torch.func.functional_call(wrapper, state, (_unsqueeze(single),)).sum()

        return torch.func.vmap(torch.func.grad(one), in_dims=(None, 0), randomness="different")(
            params, item_batch
        )

    def _project(self, items: Sequence[Any], fn: PerExample) -> torch.Tensor:
        """Projected gradients of fn, one projection per chunk of `self.rows` items."""
        out = []
        bs = self.config.batch_size
        for first in range(0, len(items), self.rows):
            parts = [
                self._per_example(
                    fn,
                    move_to_device(
                        self.collate_fn(list(items[a : min(a + bs, first + self.rows)])), self.device
                    ),
                )
                for a in range(first, min(len(items), first + self.rows), bs)
            ]
            grads = {k: torch.cat([p[k] for p in parts]).float() for k in self.names}
            out.append(self.projector.project(grads, model_id=0).float().cpu())
        feats = torch.cat(out)
        if self.config.similarity == "cosine":
            feats = torch.nn.functional.normalize(feats, dim=1)
        return feats

    def fit(self, target_items: Sequence[Any]) -> None:
        # grad of -f: same orientation as the training loss, so aligned gradients score positive.
        self._targets = self._project(target_items, lambda m, b: -self.target(m, b))

    def score(self, train_items: Sequence[Any]) -> torch.Tensor:
        """(n_targets x len(train_items)) similarities."""
        assert self._targets is not None, "call fit(target_items) first"
        return self._targets @ self._project(train_items, self.loss).T


def _unsqueeze(single: Any) -> Any:
    if isinstance(single, torch.Tensor):
        return single.unsqueeze(0)
    if isinstance(single, dict):
        return {k: _unsqueeze(v) for k, v in single.items()}
    if isinstance(single, (list, tuple)):
        return type(single)(_unsqueeze(v) for v in single)
    return single


class GradSimMethod(Scorer):
    """Gradient similarity: target gradients projected in `fit`, training gradients per shard; example
    level only."""

    methods = ("gradsim",)
    config_class = GradSimConfig

    def fit(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.scorer = GradSimScorer(
            prepared.model,
            prepared.loss,
            prepared.target,
            self.config,
            self.device,
            prepared.collate_fn,
            prepared.param_names(),
            seed=self.seed,
        )
        self.scorer.fit(prepared.target_items)

    def score(self, shard_indices: Sequence[int], per_token: TokenTargets | None = None) -> ShardScores:
        return ShardScores(self.scorer.score([self.prepared.train_items[i] for i in shard_indices]))
