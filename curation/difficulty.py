"""Infra (arXiv 2505.19949) curation by difficulty and by influence. Pure: frames in, frames out.

Difficulty flip: a replacement, not a duplication (METHODS.md). Per domain with a direction, `hard`
replaces a `fraction` of the mix's easy examples by hard examples of the same domain from a candidate
pool that are not already in the mix (the paper's math); `easy` replaces hard examples by easy ones (the
paper's code). Every domain keeps its number of distinct examples; no example is repeated. Easy / hard
bands come from thresholds on the numeric `difficulty` (higher = harder), per domain; by default the
mix's lower and upper tertiles (ours: the paper's exact counts are unconfirmed), applied to the pool too.

Influence reweighting: an example's influence on each target group is the mean of its scores over
that group's targets (positive = helpful, assay's sign convention); groups combine with weights.
The aggregate is standardised (median / MAD), mapped to weights by exp(z / temperature) (or
1 + z / temperature, `transform="linear"`), then scaled and clipped so that they lie in
[clip_min, clip_max] with mean 1. The stage applies them on one channel (curation/curated.py): as loss
weights, or as integer copies (`copies_from_weights`: largest remainder, never below `min_copies`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


class PoolTooSmall(ValueError):
    """The candidate pool holds fewer fresh examples of a band than the flip replaces."""

    def __init__(self, domain: str, band: str, needed: int, available: int, replaced_band: str):
        super().__init__(
            f"the pool has {available} {band} {domain} examples not already in the mix; replacing "
            f"{needed} {replaced_band} {domain} examples needs {needed}"
        )
        self.domain, self.band, self.needed, self.available = domain, band, needed, available


def _threshold(value: float | Mapping[str, float] | None, domain: str) -> float | None:
    if isinstance(value, Mapping):
        return value.get(domain)
    return value


def band_thresholds(
    examples: pd.DataFrame,
    easy_max: float | Mapping[str, float] | None = None,
    hard_min: float | Mapping[str, float] | None = None,
) -> dict[str, tuple[float, float]]:
    """Per domain: (easy_max, hard_min). Thresholds are scalars or per-domain mappings; a missing one is
    the domain's 1/3 (easy_max) or 2/3 (hard_min) quantile of `examples`. Domains whose thresholds meet
    (one level) are left out: nothing to flip there."""
    out = {}
    for domain, group in examples.groupby(examples["domain"].fillna("(none)"), sort=False):
        known = pd.to_numeric(group["difficulty"], errors="coerce").dropna()
        if known.empty:
            continue
        lo, hi = _threshold(easy_max, domain), _threshold(hard_min, domain)
        lo = float(known.quantile(1 / 3, interpolation="lower")) if lo is None else float(lo)
        hi = float(known.quantile(2 / 3, interpolation="higher")) if hi is None else float(hi)
        if lo < hi:
            out[str(domain)] = (lo, hi)
    return out


def assign_bands(examples: pd.DataFrame, thresholds: Mapping[str, tuple[float, float]]) -> pd.Series:
    """`easy` / `medium` / `hard` per example by its domain's thresholds (None: no difficulty or no
    thresholds for its domain)."""
    domain = examples["domain"].fillna("(none)").astype(str).to_numpy(dtype=object)
    level = pd.to_numeric(examples["difficulty"], errors="coerce").to_numpy(dtype=np.float64)
    lo = np.array([thresholds.get(d, (np.nan, np.nan))[0] for d in domain], dtype=np.float64)
    hi = np.array([thresholds.get(d, (np.nan, np.nan))[1] for d in domain], dtype=np.float64)
    band = np.where(level <= lo, "easy", np.where(level >= hi, "hard", "medium")).astype(object)
    band[np.isnan(level) | np.isnan(lo)] = None
    return pd.Series(band, index=examples.index, dtype=object)


def difficulty_bands(
    examples: pd.DataFrame,
    easy_max: float | Mapping[str, float] | None = None,
    hard_min: float | Mapping[str, float] | None = None,
) -> pd.Series:
    """`easy` / `medium` / `hard` per example by its own domain's thresholds (`band_thresholds`)."""
    return assign_bands(examples, band_thresholds(examples, easy_max, hard_min))


@dataclass
class Flip:
    """The outcome of a flip. `removed`: mix rows replaced; `added`: pool rows that replace them (in the
    same order: added[k] takes removed[k]'s place and copies); bands of both; per-domain counts."""

    mix_bands: pd.Series
    pool_bands: pd.Series
    removed: np.ndarray
    added: np.ndarray
    counts: pd.DataFrame


def difficulty_flip(
    mix: pd.DataFrame,
    pool: pd.DataFrame,
    directions: Mapping[str, str],
    fraction: float = 1.0,
    easy_max: float | Mapping[str, float] | None = None,
    hard_min: float | Mapping[str, float] | None = None,
    seed: int = 0,
) -> Flip:
    """Infra's flip as a replacement. `mix` and `pool`: frames with domain, difficulty and `key` (a content
    identity: a pool example whose key is in the mix is not fresh). Per domain with direction `hard`, a
    `fraction` of the mix's easy examples (chosen at random, seeded) are replaced by as many hard fresh pool
    examples of that domain (also chosen at random); `easy` the reverse; `none` nothing. Bands come from the
    mix's thresholds (`band_thresholds`), applied to the pool too. Every domain keeps its number of
    distinct examples. Raises PoolTooSmall when the pool lacks fresh examples of the wanted band."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    for domain, direction in directions.items():
        if direction not in DIRECTIONS:
            raise ValueError(
                f"direction for {domain!r} must be one of {', '.join(DIRECTIONS)}, got {direction!r}"
            )
    thresholds = band_thresholds(mix, easy_max, hard_min)
    mix_bands, pool_bands = assign_bands(mix, thresholds), assign_bands(pool, thresholds)
    rng = np.random.default_rng(seed)
    mix_domain = mix["domain"].fillna("(none)").astype(str).to_numpy(dtype=object)
    pool_domain = pool["domain"].fillna("(none)").astype(str).to_numpy(dtype=object)
    _, first = np.unique(pool["key"].to_numpy(dtype=object), return_index=True)
    fresh = np.zeros(len(pool), dtype=bool)
    fresh[first] = True  # a pool example listed twice counts once
    fresh &= ~pool["key"].isin(set(mix["key"])).to_numpy()
    removed, added, rows = [], [], []
    for domain, direction in sorted(directions.items()):
        in_domain = mix_domain == domain
        if direction == "none" or not in_domain.any():
            continue
        out_band, in_band = ("easy", "hard") if direction == "hard" else ("hard", "easy")
        source = np.flatnonzero(in_domain & (mix_bands.to_numpy(dtype=object) == out_band))
        candidates = np.flatnonzero(
            fresh & (pool_domain == domain) & (pool_bands.to_numpy(dtype=object) == in_band)
        )
        needed = int(np.floor(fraction * len(source) + 0.5))
        if len(candidates) < needed:
            raise PoolTooSmall(domain, in_band, needed, len(candidates), out_band)
        removed.append(np.sort(rng.choice(source, size=needed, replace=False)))
        added.append(rng.choice(candidates, size=needed, replace=False))
        rows.append((domain, direction, int(in_domain.sum()), len(source), len(candidates), needed))
    counts = pd.DataFrame(
        rows, columns=["domain", "direction", "examples", "source_band", "pool_candidates", "replaced"]
    ).set_index("domain")
    empty = np.zeros(0, dtype=np.int64)
    return Flip(
        mix_bands,
        pool_bands,
        np.concatenate(removed) if removed else empty,
        np.concatenate(added) if added else empty,
        counts,
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
) -> pd.DataFrame:
    """Weights (mean 1, within [clip_min, clip_max]) from aggregated influence.

    Examples with no influence (NaN) get weight 1 before normalisation. Returns z and weight, indexed
    like `influence`."""
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
    return pd.DataFrame({"z": z, "weight": w}, index=influence.index)


def copies_from_weights(
    weights: np.ndarray, copies: np.ndarray | None = None, min_copies: int = 1
) -> np.ndarray:
    """Integer copies in proportion to `weights` x `copies` (the examples' current copies; default 1 each),
    summing to the current total before the floor (largest remainder), then raised to `min_copies` for every
    example that had copies: reweighting never drops an example unless `min_copies` is 0. Examples with no
    copies keep none."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    current = np.ones(len(w), dtype=np.int64) if copies is None else np.asarray(copies, dtype=np.int64)
    if min_copies < 0:
        raise ValueError(f"min_copies must be at least 0, got {min_copies}")
    out = largest_remainder(w * current, int(current.sum()))
    return np.where(current > 0, np.maximum(out, min_copies), 0).astype(np.int64)


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
