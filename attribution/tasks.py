"""kronfluence `Task`s: SFT of a causal LM, and any nn.Module given a per-example loss and target.

Sign convention used throughout assay: a score is Infra's I_f(z) = -grad f^T H^-1 grad L(z) with f
a "higher is better" target (the reference response's log-likelihood). Positive = helpful: upweighting
the training example raises f. kronfluence scores `grad m^T H^-1 grad L(z)` for a measurement m, so we
hand it m = -f (a loss); its scores then are ours with no sign flip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from kronfluence.task import Task
from torch import nn

from attribution.lm_data import IGNORE_INDEX
from attribution.lm_loss import Reduction, example_loss, forward_logits

# Infra's setting: EK-FAC over the MLP linear layers (Llama / Qwen2 / Mistral names, GPT-NeoX / OPT /
# Phi fc layers).
MLP_PATTERNS = (
    r"mlp\.(gate_proj|up_proj|down_proj)$",
    r"mlp\.(fc1|fc2|dense_h_to_4h|dense_4h_to_h)$",
    r"\.(fc1|fc2)$",
)

PerExample = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> (B,)
PerToken = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> (B x T)


class FunctionModule(nn.Module):
    """Runs a function of (model, batch) as a module, so torch.func can call it with other parameters
    (`functional_call(FunctionModule(model, fn), {"model." + name: tensor}, (batch,))`)."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)


def select_modules(model: nn.Module, patterns: Sequence[str] | str | None = "mlp") -> list[str] | None:
    """Names of the nn.Linear / nn.Conv2d modules to track.

    "mlp" (default): the MLP projections; "all" / None: every supported module; otherwise regular
    expressions searched in module names.
    """
    if patterns is None or patterns == "all":
        return None
    pats = (
        MLP_PATTERNS if patterns == "mlp" else ([patterns] if isinstance(patterns, str) else list(patterns))
    )
    names = [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and any(re.search(p, name) for p in pats)
    ]
    if not names:
        raise ValueError(f"no nn.Linear / nn.Conv2d module of the model matches {list(pats)}")
    return names


def sampled_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labels drawn from the model's own predictive distribution on the scored positions (true Fisher)."""
    with torch.no_grad():
        draws = torch.distributions.Categorical(logits=logits.detach().float()).sample()
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[..., 1:] = draws[..., :-1]  # the label at t+1 is predicted at position t
    return torch.where(labels != IGNORE_INDEX, shifted, labels)


class CausalLMTask(Task):
    """SFT loss on response tokens; measurement = minus the target response's log-likelihood.

    `train_reduction` must match how the model was trained ("mean" per example in `finetune_causal_lm`);
    `target_reduction` "mean" is the per-token averaged log-likelihood, "sum" the sequence total.
    """

    def __init__(
        self,
        tracked_modules: list[str] | None = None,
        train_reduction: Reduction = "mean",
        target_reduction: Reduction = "mean",
    ):
        self.tracked_modules = tracked_modules
        self.train_reduction, self.target_reduction = train_reduction, target_reduction

    def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
        logits = forward_logits(model, batch)
        labels = sampled_labels(logits, batch["labels"]) if sample else batch["labels"]
        return example_loss(logits, labels, self.train_reduction).sum()

    def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
        return example_loss(forward_logits(model, batch), batch["labels"], self.target_reduction).sum()

    def get_influence_tracked_modules(self) -> list[str] | None:
        return self.tracked_modules

    def get_attention_mask(self, batch: Any) -> torch.Tensor:
        return batch["attention_mask"]


class FunctionTask(Task):
    """A Task for any nn.Module from two per-example functions of (model, batch) -> (B,) tensors.

    `loss` is the training loss (lower is better); `target` the quantity f whose influence we measure
    (higher is better, e.g. log-probability of the correct label). `sample_loss`, when given, is the
    loss with labels sampled from the model (true Fisher); without it factors use the empirical Fisher.
    `token_loss`, for the segment and token levels, is each token's share of `loss`: (model, batch) ->
    (B x T) whose rows sum to `loss(model, batch)` (e.g. per-token cross-entropy / T for a mean).
    """

    def __init__(
        self,
        loss: PerExample,
        target: PerExample,
        tracked_modules: list[str] | None = None,
        sample_loss: PerExample | None = None,
        attention_mask: Callable[[Any], Any] | None = None,
        token_loss: PerToken | None = None,
    ):
        self.loss, self.target, self.sample_loss, self.token_loss = loss, target, sample_loss, token_loss
        self.tracked_modules, self.attention_mask = tracked_modules, attention_mask

    @property
    def empirical_fisher(self) -> bool:
        return self.sample_loss is None

    def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
        fn = self.sample_loss if sample and self.sample_loss is not None else self.loss
        return fn(model, batch).sum()

    def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
        return -self.target(model, batch).sum()

    def get_influence_tracked_modules(self) -> list[str] | None:
        return self.tracked_modules

    def get_attention_mask(self, batch: Any) -> Any:
        return self.attention_mask(batch) if self.attention_mask else None


def classification_task(tracked_modules: list[str] | None = None) -> FunctionTask:
    """Cross-entropy classification on (x, y) batches; target f = log p(correct label)."""

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none")

    def target(model: nn.Module, batch: Any) -> torch.Tensor:
        return -loss(model, batch)

    def sample_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x, _ = batch
        logits = model(x)
        with torch.no_grad():
            y = torch.distributions.Categorical(logits=logits.detach()).sample()
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")

    return FunctionTask(loss, target, tracked_modules, sample_loss)
