"""Domain mixing: temperature sampling, scalarization and Cooldown ("Upsample or Upweight?", 2410.04579).

Groups are any per-example column (domain, language, source, a PPP cluster, a difficulty bin).
With group sizes n_i:

- temperature sampling draws group i with `p_i(tau) = n_i^(1/tau) / sum_j n_j^(1/tau)`;
- scalarization samples proportionally (`p_i(1)`) and weights each example's loss by
  `p_i(tau) / p_i(1)`: the same expected gradient, a larger variance by the factor
  `F(tau) = sum_i p_i(tau)^2 / p_i(1)` (>= 1);
- Cooldown is a temperature schedule over training steps: tau 5 until the midpoint, then 1.

Everything here is pure: arrays / pandas in and out. Materialisation turns a mixture into per-example
loss weights, per-example copies (an epoch), or a seeded sequence of example indices per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SCHEDULES = ("constant", "cooldown", "linear", "cosine")


# --- group probabilities ------------------------------------------------------------------------------


def group_counts(groups: Sequence | pd.Series | np.ndarray) -> pd.Series:
    """Examples per group, indexed by group value in sorted order (a stable order for every output)."""
    counts = pd.Series(np.asarray(groups, dtype=object)).value_counts(dropna=False)
    try:
        counts = counts.sort_index()
    except TypeError:  # mixed types (e.g. numbers and None): order by their text
        counts = counts.sort_index(key=lambda idx: idx.map(str))
    counts.index.name = "group"
    return counts.astype(np.int64).rename("examples")


def temperature_probs(counts: pd.Series, tau: float) -> pd.Series:
    """`p_i(tau) = n_i^(1/tau) / sum_j n_j^(1/tau)` per group. tau = 1 is proportional; tau -> inf uniform."""
    if not tau > 0:  # also rejects NaN; tau = inf is the uniform limit
        raise ValueError(f"tau must be positive, got {tau}")
    n = counts.to_numpy(dtype=np.float64)
    if (n <= 0).any():
        raise ValueError("every group needs at least one example")
    if np.isinf(tau):
        p = np.full(len(n), 1.0 / len(n))
    else:
        # Work in logs so that large counts with small tau do not overflow.
        logits = np.log(n) / tau
        p = np.exp(logits - logits.max())
        p /= p.sum()
    return pd.Series(p, index=counts.index, name="probability")


def scalarization_weights(counts: pd.Series, tau: float) -> pd.Series:
    """Per-group loss weight `p_i(tau) / p_i(1)` for proportional sampling. Its mean over examples is 1."""
    w = temperature_probs(counts, tau) / temperature_probs(counts, 1.0)
    return w.rename("weight")


def variance_factor(counts: pd.Series, tau: float) -> float:
    """`F(tau) = sum_i p_i(tau)^2 / p_i(1)`: scalarization's gradient-variance multiplier (>= 1)."""
    p_tau, p_one = temperature_probs(counts, tau), temperature_probs(counts, 1.0)
    return float((p_tau**2 / p_one).sum())


# --- schedules ----------------------------------------------------------------------------------------


def tau_schedule(
    steps: int,
    kind: str = "cooldown",
    tau_start: float = 5.0,
    tau_end: float = 1.0,
    switch: float = 0.5,
) -> np.ndarray:
    """Temperature per step (length `steps`).

    - constant: `tau_start` throughout;
    - cooldown: `tau_start` for steps < switch * steps, then `tau_end` (the paper's single switch);
    - linear:   `tau_start` to `tau_end` in a straight line over all steps;
    - cosine:   `tau_end + (tau_start - tau_end) * (1 + cos(pi t)) / 2`, t from 0 to 1.
    `switch` is a fraction of training in [0, 1]; it only matters for cooldown.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; one of {', '.join(SCHEDULES)}")
    if tau_start <= 0 or tau_end <= 0:
        raise ValueError("temperatures must be positive")
    if not 0.0 <= switch <= 1.0:
        raise ValueError("switch is a fraction of training, between 0 and 1")
    t = np.arange(steps) / max(steps - 1, 1)
    if kind == "constant":
        return np.full(steps, float(tau_start))
    if kind == "cooldown":
        return np.where(np.arange(steps) < switch * steps, float(tau_start), float(tau_end))
    if kind == "linear":
        return tau_start + (tau_end - tau_start) * t
    return tau_end + (tau_start - tau_end) * (1.0 + np.cos(np.pi * t)) / 2.0


def schedule_probabilities(counts: pd.Series, taus: np.ndarray) -> pd.DataFrame:
    """Group probabilities per step: a steps x groups frame (columns in `counts` order), rows sum to 1."""
    rows = {}
    # Steps share few distinct temperatures (a Cooldown has two): compute each once.
    for tau in np.unique(taus):
        rows[float(tau)] = temperature_probs(counts, float(tau)).to_numpy()
    probs = np.stack([rows[float(t)] for t in taus])
    frame = pd.DataFrame(probs, columns=counts.index)
    frame.index.name = "step"
    return frame


def schedule_phases(taus: np.ndarray) -> np.ndarray:
    """Phase number of each step: a new phase starts wherever the temperature changes (a Cooldown has
    two; a constant schedule one; a gradual decay one per distinct step)."""
    taus = np.asarray(taus, dtype=np.float64)
    if len(taus) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(taus[1:] != taus[:-1])]).astype(np.int64)


def schedule_long(probs: pd.DataFrame, taus: np.ndarray) -> pd.DataFrame:
    """The per-step frame as long rows (step, group, tau, probability): the exported schedule file."""
    long = probs.reset_index().melt(id_vars="step", var_name="group", value_name="probability")
    long["group"] = long["group"].astype(str)
    long["tau"] = np.asarray(taus, dtype=np.float64)[long["step"].to_numpy()]
    return long.sort_values(["step", "group"], kind="stable").reset_index(drop=True)[
        ["step", "group", "tau", "probability"]
    ]


# --- materialisation ----------------------------------------------------------------------------------


def _codes(groups: Sequence | pd.Series | np.ndarray, counts: pd.Series) -> np.ndarray:
    codes = pd.Index(counts.index).get_indexer(pd.Series(np.asarray(groups, dtype=object)))
    if (codes < 0).any():
        raise ValueError("an example's group is missing from counts")
    return codes


def example_weights(groups: Sequence | pd.Series | np.ndarray, tau: float) -> np.ndarray:
    """Scalarization as per-example loss weights `p_g(tau) / p_g(1)` (mean 1 over the examples)."""
    counts = group_counts(groups)
    return scalarization_weights(counts, tau).to_numpy()[_codes(groups, counts)]


def expected_copies(
    groups: Sequence | pd.Series | np.ndarray, probs: pd.Series, counts: pd.Series, total: float
) -> np.ndarray:
    """Expected copies of each example when `total` draws follow group probabilities `probs`
    and examples are uniform within their group: `total * p_g / n_g`."""
    per_example = (probs.reindex(counts.index).to_numpy() * total) / counts.to_numpy(dtype=np.float64)
    return per_example[_codes(groups, counts)]


def _hash_uniform(example_ids: Sequence | pd.Series | np.ndarray, seed: int) -> np.ndarray:
    # A uniform in [0, 1) per example from a keyed hash of its id: the same id gets the same number
    # whichever chunk or worker sees it, so chunked (Dask) and in-memory materialisation agree.
    key = f"{seed & 0xFFFFFFFFFFFFFFFF:016x}"[-16:]
    ids = np.asarray(example_ids).astype(str).astype(object)
    h = pd.util.hash_array(ids, hash_key=key, categorize=False)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def round_copies(
    example_ids: Sequence | pd.Series | np.ndarray, expected: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Integer copies by unbiased stochastic rounding: floor(e) plus 1 with probability frac(e).
    The coin for each example is a keyed hash of its id, so the result does not depend on chunking."""
    expected = np.asarray(expected, dtype=np.float64)
    if (expected < 0).any():
        raise ValueError("expected copies must be non-negative")
    base = np.floor(expected)
    return (base + (_hash_uniform(example_ids, seed) < (expected - base))).astype(np.int64)


def materialise_copies(
    example_ids: Sequence | pd.Series | np.ndarray,
    groups: Sequence | pd.Series | np.ndarray,
    tau: float,
    total: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Copies per example for one epoch of `total` draws (default: the number of examples) under
    temperature `tau`. Small groups are repeated, large groups subsampled."""
    counts = group_counts(groups)
    total = int(counts.sum()) if total is None else int(total)
    return round_copies(
        example_ids, expected_copies(groups, temperature_probs(counts, tau), counts, total), seed
    )


def step_group_counts(probs: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws per group at each step (steps x groups, each row summing to `batch_size`) by systematic
    sampling: the step's slots sit at u_b = (b + U) / batch_size, one uniform U per step, and slot b goes to
    the group whose cumulative-probability interval holds u_b. Each count is the floor or the ceiling of its
    expectation batch_size x p and equals it on average, so a phase of the schedule holds each group's
    share to within a draw per step (a multinomial would scatter it by sqrt(p (1 - p) / draws))."""
    probs = np.asarray(probs, dtype=np.float64)
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    cum[:, -1] = 1.0
    offset = rng.random(len(probs))[:, None]
    # Slots below a boundary c: #{b : (b + U) / B < c} = ceil(c B - U), within [0, B].
    below = np.clip(np.ceil(cum * batch_size - offset), 0, batch_size).astype(np.int64)
    return np.diff(below, axis=1, prepend=0)


def sample_steps(
    groups: Sequence | pd.Series | np.ndarray,
    step_probs: pd.DataFrame,
    batch_size: int,
    seed: int = 0,
    replace: bool = False,
) -> pd.DataFrame:
    """A seeded sequence of example indices, `batch_size` per step, following per-step group
    probabilities (`schedule_probabilities`). Returns rows (step, slot, index, group), step-major.

    Each step's group counts come from `step_group_counts` (systematic sampling: each count is the floor
    or the ceiling of batch_size x p, unbiased), then examples within each group: with `replace`,
    uniformly at random; without, by walking a shuffled order of the group and reshuffling when it is
    used up (so no example repeats before its whole group has been seen). Vectorised over steps: a
    million steps take seconds.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    counts = group_counts(groups)
    missing = [g for g in counts.index if g not in step_probs.columns]
    if missing:
        raise ValueError(f"step_probs lacks groups {missing}")
    rng = np.random.default_rng(seed)
    codes = _codes(groups, counts)
    probs = step_probs[list(counts.index)].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    per_step = step_group_counts(probs, batch_size, rng)  # steps x groups
    n_steps = len(probs)
    step_parts, index_parts, code_parts = [], [], []
    for k in range(len(counts)):
        need = int(per_step[:, k].sum())
        if need == 0:
            continue
        members = np.flatnonzero(codes == k)
        if replace:
            picked = members[rng.integers(0, len(members), size=need)]
        else:
            passes = -(-need // len(members))
            picked = np.concatenate([rng.permutation(members) for _ in range(passes)])[:need]
        # The group's draws go to steps in order, as many to each step as its multinomial says.
        step_parts.append(np.repeat(np.arange(n_steps), per_step[:, k]))
        index_parts.append(picked)
        code_parts.append(np.full(need, k))
    step = np.concatenate(step_parts)
    # Step-major, groups mixed within a step by a random key.
    order = np.lexsort((rng.random(len(step)), step))
    step, index, code = step[order], np.concatenate(index_parts)[order], np.concatenate(code_parts)[order]
    slot = np.arange(len(step)) - np.repeat(np.arange(n_steps) * batch_size, batch_size)
    return pd.DataFrame(
        {
            "step": step.astype(np.int64),
            "slot": slot.astype(np.int64),
            "index": index.astype(np.int64),
            "group": np.asarray(counts.index, dtype=object)[code],
        }
    )


def epoch_sequence(copies: np.ndarray, seed: int = 0) -> np.ndarray:
    """A seeded shuffled order of example indices in which example j appears `copies[j]` times."""
    copies = np.asarray(copies, dtype=np.int64)
    if (copies < 0).any():
        raise ValueError("copies must be non-negative")
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(copies)), copies))


def copies_from_sequence(indices: np.ndarray, n_examples: int) -> np.ndarray:
    """How many times each of `n_examples` examples appears in a sampled sequence."""
    return np.bincount(np.asarray(indices, dtype=np.int64), minlength=n_examples).astype(np.int64)


def effective_epochs(groups: Sequence | pd.Series | np.ndarray, copies: np.ndarray) -> pd.DataFrame:
    """Per group: examples, draws (sum of copies), effective epochs (draws / examples) and the share
    of examples never drawn. Effective epochs well above 1 flag over-repeated small groups, which
    temperature sampling overfits (the paper's caveat).

    The one definition of effective epochs: the mix stage's metrics, `assay mix`, `assay export` and the
    dataset card all call this on a run's `weights` rows (the examples of its set, one row each)."""
    frame = pd.DataFrame({"group": np.asarray(groups, dtype=object), "copies": np.asarray(copies)})
    out = frame.groupby("group", sort=True).agg(
        examples=("copies", "size"),
        draws=("copies", "sum"),
        unseen=("copies", lambda c: float((c == 0).mean())),
    )
    out["effective_epochs"] = out["draws"] / out["examples"]
    return out[["examples", "draws", "effective_epochs", "unseen"]]


def schedule_effective_epochs(counts: pd.Series, step_probs: pd.DataFrame, batch_size: int) -> pd.Series:
    """Expected effective epochs per group over a whole schedule: `batch_size * sum_t p_i(t) / n_i`."""
    draws = step_probs[list(counts.index)].sum(axis=0).to_numpy() * batch_size
    return pd.Series(draws / counts.to_numpy(dtype=np.float64), index=counts.index, name="effective_epochs")
