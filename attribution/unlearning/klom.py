"""KLoM (KL divergence of margins), the unlearning metric of "Attribute-to-Delete" (arXiv 2410.23232).

Margin of a classifier on (x, y): `phi(x) = z_y - logsumexp_{j != y} z_j`. Given margins of N models
trained on all data and then unlearned, and of N oracles retrained without the forget set, for each
example: clip both samples to [-100, 100], histogram them into 20 bins spanning their combined range,
replace the oracle histogram's empty bins with 1e-5, renormalise, and take KL(unlearned || oracle).
The score of a method on a set of points is the 95th percentile of the per-example values.

Binning follows numpy's histogram: 20 equal bins from the combined minimum to maximum, the last bin
closed (the authors' code digitises against the same edges and so drops samples equal to the maximum;
ours keeps them). With every sample in one place (zero range) the range is widened to one unit, as
theirs. Because empty oracle bins get 1e-5 before renormalising, KL is capped near log(1e5) = 11.51:
that is what fully disjoint samples score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLIP, BINS, EMPTY = 100.0, 20, 1e-5


def margins(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """`z_y - logsumexp_{j != y} z_j` for logits (..., n, C) and labels (n,): shape (..., n)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long).to(z.device)
    index = y.expand(z.shape[:-1]).unsqueeze(-1)
    correct = torch.gather(z, -1, index).squeeze(-1)
    others = z.scatter(-1, index, float("-inf"))
    return (correct - torch.logsumexp(others, -1)).cpu().numpy()


def klom_per_example(
    unlearned: np.ndarray, oracle: np.ndarray, bins: int = BINS, clip: float = CLIP, empty: float = EMPTY
) -> np.ndarray:
    """KL(unlearned || oracle) per example from margin samples (n_models x n_examples each).

    The two sides may hold different numbers of models.
    """
    p_samples = np.clip(np.asarray(unlearned, dtype=np.float64), -clip, clip)
    q_samples = np.clip(np.asarray(oracle, dtype=np.float64), -clip, clip)
    if p_samples.ndim != 2 or q_samples.ndim != 2 or p_samples.shape[1] != q_samples.shape[1]:
        raise ValueError(
            f"margins must be (n_models x n_examples) on both sides, got {p_samples.shape} "
            f"and {q_samples.shape}"
        )
    lo = np.minimum(p_samples.min(0), q_samples.min(0))
    hi = np.maximum(p_samples.max(0), q_samples.max(0))
    hi = np.where(hi > lo, hi, lo + 1.0)
    p = _histograms(p_samples, lo, hi, bins)
    q = _histograms(q_samples, lo, hi, bins)
    q = np.where(q > 0, q, empty)
    q = q / q.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(1)


def _histograms(samples: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Per-example bin probabilities (n_examples x bins) over [lo, hi], last bin closed."""
    position = (samples - lo) / (hi - lo) * bins
    index = np.clip(np.floor(position).astype(np.int64), 0, bins - 1)
    n_models, n = samples.shape
    counts = np.zeros((n, bins))
    np.add.at(counts, (np.broadcast_to(np.arange(n), (n_models, n)), index), 1.0)
    return counts / n_models


def klom95(per_example: np.ndarray, q: float = 95.0) -> float:
    return float(np.percentile(per_example, q)) if len(per_example) else float("nan")


@dataclass
class KLoMReport:
    """KLoM95 on each group of points, and the per-example values behind it."""

    groups: dict[str, float]
    per_example: np.ndarray

    def __getitem__(self, group: str) -> float:
        return self.groups[group]


def klom(
    unlearned: np.ndarray, oracle: np.ndarray, groups: dict[str, np.ndarray], q: float = 95.0
) -> KLoMReport:
    """KLoM (the q-th percentile, 95 by default) over each group of example indices, e.g.
    {"forget": ..., "retain": ..., "val": ...}, from margins (n_models x n_examples)."""
    values = klom_per_example(unlearned, oracle)
    return KLoMReport({name: klom95(values[np.asarray(idx)], q) for name, idx in groups.items()}, values)


def oracle_floor(
    oracle_a: np.ndarray, oracle_b: np.ndarray, groups: dict[str, np.ndarray], q: float = 95.0
) -> KLoMReport:
    """The floor: one set of oracles scored against another (KL(a || b)); as low as any method can get
    with this many models."""
    return klom(oracle_a, oracle_b, groups, q)
