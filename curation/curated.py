"""A curated set: the two channels of the `weights` table and how stages compose them.

Every curated example row carries
- `copies`: how often the example is drawn (sampling: temperature mixing, upsampling, a replacement;
  0 = never drawn: a mix that subsamples a large group, or a reweighting asked to drop);
- `loss_weight`: what its loss is multiplied by (scalarization, influence weights).
They are never multiplied into one number: a stage acts on one channel (its Params say which) and passes
the other through, so composing stages composes each channel once.

A stage builds on an earlier stage's weights with `weights_from` (auto | none | a stage name): it then
works on the examples those weights name, each drawn in proportion to its copies, with its loss weight;
without, on every example of the recipe's datasets once, loss weight 1.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from curation.stages import load_examples
from storage import Lake, UserError
from storage.params import NAME, optional
from storage.stage import StageContext

KEY = ["dataset", "example_id"]
COLUMNS = [*KEY, "copies", "loss_weight"]
CHANNELS = ("copies", "loss_weight")
WEIGHTS_FROM = optional(NAME)
WEIGHTS_FROM_HELP = (
    "earlier stage whose weights to build on (their copies and loss weights): auto (the latest earlier "
    "stage that wrote weights) | none (every example once) | a stage name"
)


# ---- pure ------------------------------------------------------------------------------------------


def channels_of(examples: pd.DataFrame, prior: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """(copies, loss_weight) of each example (aligned with `examples`): from the prior weights, else 1 and 1.
    An example the prior does not name has copies 0."""
    if prior is None:
        return np.ones(len(examples), dtype=np.int64), np.ones(len(examples))
    merged = examples[KEY].reset_index(drop=True).merge(prior[COLUMNS], on=KEY, how="left")
    return (
        merged["copies"].fillna(0).to_numpy(dtype=np.int64),
        merged["loss_weight"].fillna(1.0).to_numpy(dtype=np.float64),
    )


def drawable(copies: np.ndarray, loss_weight: np.ndarray) -> np.ndarray:
    """Which examples a sampler may draw: some copies, and a loss that counts (a zero-weight draw is a
    wasted slot)."""
    return (np.asarray(copies) > 0) & (np.asarray(loss_weight) > 0)


def weights_frame(keys: pd.DataFrame, copies: np.ndarray, loss_weight: np.ndarray) -> pd.DataFrame:
    """The `weights` rows of a stage."""
    out = keys[KEY].reset_index(drop=True).copy()
    out["copies"] = np.asarray(copies, dtype=np.int64)
    out["loss_weight"] = np.asarray(loss_weight, dtype=np.float64)
    return out


# ---- the lake --------------------------------------------------------------------------------------


def resolve_weights_from(ctx: StageContext, stage_name: str, choice: str | None) -> str | None:
    """The run whose weights a stage builds on: `auto` = the latest earlier stage of the recipe that wrote
    weights (None when there is none), `none` = none, else an earlier stage of the recipe by name."""
    if choice in (None, "none"):
        return None
    if choice == "auto":
        return ctx.earlier_run("weights")
    if choice in ctx.previous:
        if ctx.earlier_run("weights", "run_id = ?", [ctx.previous[choice]]) is None:
            raise UserError(f"stage {stage_name}: weights_from {choice!r}: that stage wrote no weights")
        return ctx.previous[choice]
    raise UserError(
        f"stage {stage_name}: weights_from {choice!r} is not an earlier stage of this recipe "
        f"({', '.join(ctx.previous) or 'none'}); use auto or none"
    )


def read_weights(lake: Lake, run_id: str) -> pd.DataFrame:
    return lake.query(
        "SELECT dataset, example_id, copies, loss_weight FROM weights WHERE run_id = ?", [run_id]
    )


def weights_versions(lake: Lake, run_id: str) -> dict[str, str]:
    """The dataset versions whose examples a weights run names: the `datasets` it recorded as inputs, the
    versions it wrote itself (DART's kept responses), else each dataset's latest version."""
    record = lake.require_run(run_id)
    inputs = json.loads(record.get("inputs") or "{}")
    recorded = inputs.get("datasets") if isinstance(inputs, dict) else None
    found = {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
    written = lake.query("SELECT DISTINCT dataset, version FROM examples_all WHERE run_id = ?", [run_id])
    named = lake.query("SELECT DISTINCT dataset FROM weights WHERE run_id = ?", [run_id])
    for name in sorted(named["dataset"].astype(str)):
        if name in found:
            continue
        own = written[written["dataset"] == name]
        found[name] = str(own["version"].iloc[0]) if len(own) else lake.dataset_version(name)
    return found


def stage_versions(ctx: StageContext, stage_name: str, prior_run: str | None) -> dict[str, str]:
    """The dataset versions a weights stage works on: the recipe's datasets, and with a prior, every
    dataset its weights name (a flip's pool, DART's responses) at the version that run read or wrote."""
    versions = ctx.dataset_versions(stage_name)
    if prior_run is not None:
        for name, version in weights_versions(ctx.lake, prior_run).items():
            versions.setdefault(name, version)
    return versions


def restrict_to(
    examples: pd.DataFrame, prior: pd.DataFrame | None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(examples, copies, loss_weight): with prior weights, the examples they name (order kept) and their
    channels; without, every example, copies 1 and loss weight 1."""
    if prior is not None:
        named = examples[KEY].merge(prior[KEY].drop_duplicates(), on=KEY, how="left", indicator=True)
        examples = examples[(named["_merge"] == "both").to_numpy()].reset_index(drop=True)
    copies, loss_weight = channels_of(examples, prior)
    return examples, copies, loss_weight


def load_curated(
    lake: Lake, versions: dict[str, str], prior_run: str | None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(examples, copies, loss_weight) a weights stage starts from (`restrict_to` over the examples of
    `versions`, in the order `load_examples` gives)."""
    prior = read_weights(lake, prior_run) if prior_run else None
    return restrict_to(load_examples(lake, versions), prior)


def drawable_count(lake: Lake, versions: dict[str, str], prior_run: str | None) -> int:
    """How many draws the pool of a stage holds (sum of drawable copies), without reading the texts."""
    if prior_run:
        found = lake.query(
            "SELECT coalesce(sum(copies), 0) AS n FROM weights WHERE run_id = ? AND copies > 0 "
            "AND loss_weight > 0",
            [prior_run],
        )
    else:
        sql = " UNION ALL ".join(
            "SELECT count(*) AS n FROM examples_all WHERE dataset = ? AND version = ?" for _ in versions
        )
        found = lake.query(f"SELECT sum(n) AS n FROM ({sql})", [v for item in versions.items() for v in item])
    return int(found["n"].iloc[0] or 0)
