"""Infra (arXiv 2505.19949) curation by difficulty and by influence. Pure: frames in, frames out.

Difficulty flip: a replacement, not a duplication (METHODS.md). Per domain with a direction,
`hard` moves a `fraction` of the easy examples' weight onto the hard examples (the paper's math),
`easy` moves a fraction of the hard examples' weight onto the easy ones (the paper's code); medium
examples and domains without a direction keep weight 1, so every domain keeps its size and the set
keeps its size. Easy / hard bands come from thresholds on the numeric `difficulty` (higher =
harder), per domain; by default the domain's lower and upper tertiles (ours: the paper's exact
counts are unconfirmed).

Influence reweighting: an example's influence on each target group is the mean of its scores over
that group's targets (positive = helpful, assay's sign convention); groups combine with weights.
The aggregate is standardised (median / MAD), mapped to weights by exp(z / temperature) (or
1 + z / temperature, `transform="linear"`), then scaled and clipped so that they lie in
[clip_min, clip_max] with mean 1. Integer `copies` (largest remainder; they sum to the set size, or to
`total`) serve materialised upsampling.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

DIRECTIONS = ("hard", "easy", "none")
BANDS = ("easy", "medium", "hard")
TRANSFORMS = ("exp", "linear")


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers proportional to `weights` that sum to `total` (Hamilton's method;
    ties go to the earlier index, so the result is deterministic)."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = w / w.sum() * total
    base = np.floor(exact + 1e-9).astype(np.int64)
    short = int(total - base.sum())
    if short > 0:
        order = np.lexsort((np.arange(len(w)), -(exact - base)))
        base[order[:short]] += 1
    return base


# ---- difficulty flip ----------------------------------------------------------------------------


def _threshold(value: float | Mapping[str, float] | None, domain: str) -> float | None:
    if isinstance(value, Mapping):
        return value.get(domain)
    return value


def difficulty_bands(
    examples: pd.DataFrame,
    easy_max: float | Mapping[str, float] | None = None,
    hard_min: float | Mapping[str, float] | None = None,
) -> pd.Series:
    """`easy` / `medium` / `hard` per example (None without a difficulty). Thresholds are scalars or
    per-domain mappings; a missing one is the domain's 1/3 (easy_max) or 2/3 (hard_min) quantile."""
    bands = pd.Series([None] * len(examples), index=examples.index, dtype=object)
    for domain, group in examples.groupby(examples["domain"].fillna("(none)"), sort=False):
        d = pd.to_numeric(group["difficulty"], errors="coerce")
        known = d.dropna()
        if known.empty:
            continue
        lo = _threshold(easy_max, domain)
        hi = _threshold(hard_min, domain)
        lo = float(known.quantile(1 / 3, interpolation="lower")) if lo is None else float(lo)
        hi = float(known.quantile(2 / 3, interpolation="higher")) if hi is None else float(hi)
        if lo >= hi:  # a domain with one level (or thresholds that meet): nothing to flip
            continue
        for index, value in d.items():
            if not pd.isna(value):
                bands.at[index] = "easy" if value <= lo else "hard" if value >= hi else "medium"
    return bands


def difficulty_flip(
    examples: pd.DataFrame,
    directions: Mapping[str, str],
    fraction: float = 1.0,
    easy_max: float | Mapping[str, float] | None = None,
    hard_min: float | Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Weights and copies per example (aligned with `examples`: columns domain, difficulty).

    Returns band, weight (mean 1 within each domain) and copies (summing to the domain's size)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    for domain, direction in directions.items():
        if direction not in DIRECTIONS:
            raise ValueError(
                f"direction for {domain!r} must be one of {', '.join(DIRECTIONS)}, got {direction!r}"
            )
    bands = difficulty_bands(examples, easy_max, hard_min)
    weight = np.ones(len(examples))
    copies = np.ones(len(examples), dtype=np.int64)
    domains = examples["domain"].fillna("(none)").to_numpy(dtype=object)
    band = bands.to_numpy(dtype=object)
    for domain, direction in directions.items():
        in_domain = domains == domain
        if direction == "none" or not in_domain.any():
            continue
        source, dest = ("easy", "hard") if direction == "hard" else ("hard", "easy")
        src, dst = in_domain & (band == source), in_domain & (band == dest)
        if not src.any() or not dst.any():
            continue  # nothing to move, or nowhere to move it: the domain stays as it is
        moved = fraction * src.sum()
        weight[src] = 1.0 - fraction
        weight[dst] = 1.0 + moved / dst.sum()
        copies[in_domain] = largest_remainder(weight[in_domain], int(in_domain.sum()))
    return pd.DataFrame(
        {"band": bands.to_numpy(dtype=object), "weight": weight, "copies": copies}, index=examples.index
    )


# ---- influence reweighting ----------------------------------------------------------------------


def aggregate_influence(
    scores: pd.DataFrame,
    target_groups: Mapping[str, str] | pd.Series,
    group_weights: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Per training example: its mean score over each group's targets, and their weighted mean.

    `scores`: train_id, target_id, score. `target_groups`: target_id -> group; targets without a
    group are ignored. `group_weights`: group -> weight (default: equal); groups absent from the
    scores are ignored. Returns a frame indexed by train_id with one column per group and `influence`.
    """
    groups = (
        pd.Series(target_groups, dtype=object) if not isinstance(target_groups, pd.Series) else target_groups
    )
    frame = scores[["train_id", "target_id", "score"]].copy()
    frame["group"] = frame["target_id"].astype(str).map(groups.astype(object))
    frame = frame.dropna(subset=["group"])
    if frame.empty:
        raise ValueError("no score has a target in the given groups")
    per_group = frame.pivot_table(index="train_id", columns="group", values="score", aggfunc="mean")
    chosen = (
        {g: 1.0 for g in per_group.columns}
        if group_weights is None
        else {g: float(w) for g, w in group_weights.items() if g in per_group.columns}
    )
    if not chosen or sum(chosen.values()) <= 0:
        raise ValueError(
            f"no weighted group among the scored groups ({', '.join(map(str, per_group.columns))})"
        )
    cols = list(chosen)
    w = np.array([chosen[g] for g in cols])
    values = per_group[cols].to_numpy()
    present = ~np.isnan(values)
    # a train example scored on only some groups: average over the groups it has
    total = np.where(present, values, 0.0) @ w
    norm = present.astype(float) @ w
    out = per_group.copy()
    out.columns = [str(c) for c in out.columns]
    out["influence"] = np.where(norm > 0, total / np.where(norm > 0, norm, 1.0), np.nan)
    return out


def influence_weights(
    influence: pd.Series,
    *,
    temperature: float = 1.0,
    transform: str = "exp",
    clip_min: float = 0.25,
    clip_max: float = 4.0,
    total: int | None = None,
) -> pd.DataFrame:
    """Weights (mean 1, within [clip_min, clip_max]) and integer copies from aggregated influence.

    Examples with no influence (NaN) get weight 1 before normalisation. Returns z, weight, copies
    indexed like `influence`."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    if not 0 <= clip_min <= 1 <= clip_max:
        raise ValueError(f"need 0 <= clip_min <= 1 <= clip_max, got [{clip_min}, {clip_max}]")
    x = influence.to_numpy(dtype=np.float64)
    known = ~np.isnan(x)
    z = np.zeros(len(x))
    if known.sum() >= 2:
        median = np.median(x[known])
        spread = 1.4826 * np.median(np.abs(x[known] - median))  # MAD, scaled to a normal's std
        if spread <= 0:
            spread = np.std(x[known])
        if spread > 0:
            z[known] = (x[known] - median) / spread
    raw = np.exp(np.clip(z / temperature, -50, 50)) if transform == "exp" else 1.0 + z / temperature
    w = np.where(known, np.clip(raw, clip_min, clip_max), 1.0)
    w = _clip_normalise(w, clip_min, clip_max)
    n = len(w) if total is None else int(total)
    copies = largest_remainder(w, n)
    return pd.DataFrame({"z": z, "weight": w, "copies": copies}, index=influence.index)


def _clip_normalise(w: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """clip(s * w, lo, hi) with the scale s that makes the mean 1 (bisection: the mean grows with s)."""
    w = np.asarray(w, dtype=np.float64)
    if len(w) == 0 or w.max() <= 0:
        return np.ones(len(w))

    def mean_at(scale: float) -> float:
        return float(np.clip(scale * w, lo, hi).mean())

    low, high = 0.0, 1.0
    while mean_at(high) < 1.0 and high < 1e12:
        high *= 2.0
    if mean_at(high) < 1.0:  # too few positive weights to reach mean 1 under the cap
        return w / w.mean()
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if mean_at(mid) < 1.0 else (low, mid)
        if high - low <= 1e-15 * high:
            break
    return np.clip(high * w, lo, hi)
