"""Unlearning benchmark: Datamodel Matching (DMM) against the baselines, scored by KLoM on CPU, over seeds.

Setting (a reproduction in miniature of "Attribute-to-Delete", arXiv 2410.23232): scikit-learn's digits
(1797 8x8 images, 10 classes; 1200 train / 597 validation), a one-hidden-layer MLP (64 units, Adam,
30 epochs). N models are trained on all 1200 examples with different seeds; for each forget set two
independent groups of N oracles are retrained without it: group A is what every method is scored
against, group B gives Oracle Matching its targets and the oracle-vs-oracle floor (B scored against
A, same sample sizes as the methods). KLoM95 per METHODS.md over the forget set, the retain set and the
validation set. Two forget sets of 40: random, and the 40 hardest training examples (lowest mean margin
under the full models) of the hardest class.

Methods, each unlearning all N models (a stacked ensemble, members exactly as alone):
do-nothing; gradient ascent on F; gradient descent on the retain set; both together; DMM with a
regression datamodel (`fit_context_datamodel`: single effects from a ridge on class-heterogeneous
subset masks, each subset keeping each class at its own density uniform in [0.5, 1],
`class_heterogeneous_masks`; plus, per example, an interaction with the share of its class
neighbourhood removed with it (neighbourhoods by the full models' margin ranking and by input
distance), fitted to what the single effects leave unexplained on those subsets and as many that
also drop 1-3 whole groups, `group_removal_masks`; fitted once to every training point's 10 logits,
shared by all models, as the authors share theirs); DMM with its default settings (`DMMConfig()`, untuned); DMM
with the previous design's datamodel (a linear ridge on the class-heterogeneous subsets alone, in the
same run); DMM with the authors' default optimiser settings; Oracle Matching toward
group B's mean logits; and (ASSAY_BENCH_EKFAC=1) DMM with an EK-FAC per-logit datamodel from
`attribution.api.attribute` on one separately trained model, scaled to leave-one-out units by 1 / n_train
or by a factor fitted on the subset models.

The last table (benchmarks/unlearning/speed.py) times the LM unlearning path's optimisations on the
quick demo's corpus, each against its unoptimised peer in the same run.

Seeds: the whole benchmark (data split, models, subset models, forget sets, oracles) runs once per seed
(3 full, 2 quick); tables show the mean over seeds and its standard error (sd / sqrt(seeds)).
DMM's settings are tuned within a budget of a quarter of retraining's examples (at most 8 epochs of
the fine-tuning set); Oracle Matching, the reference, keeps its full grid (up to 20 epochs).

Hyper-parameters of every method come from a small grid, chosen on separate tuning models (their own
seeds) scored against oracle group B by the largest of the three KLoM95s; the table then reports the
chosen setting on the N evaluation models against group A. Compute is the unlearning's examples
processed (forward + backward passes over examples) and its wall time for one model, each as a
fraction of retraining one model without F with the same recipe; datamodel fitting is a separate,
amortised cost, reported in the notes.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attribution.unlearning import (
    DMMConfig,
    OptimConfig,
    ascent_descent,
    dmm_classifier,
    finetune_points,
    fit_regression_datamodel,
    gradient_ascent,
    gradient_descent,
    klom,
    margins,
    oracle_matching,
    per_logit_datamodel,
)
from attribution.unlearning.datamodels import (
    Datamodel,
    class_heterogeneous_masks,
    class_neighbourhoods,
    fit_context_datamodel,
    group_removal_masks,
)
from attribution.unlearning.dmm import AUTHORS_OPTIM
from attribution.unlearning.ensemble import EnsembleMLP, Recipe, logits_of, subset_logits, train_ensemble

N_TRAIN, FORGET_SIZE = 1200, 40
RECIPE = Recipe(hidden=64, epochs=30, batch_size=64, lr=2e-3)
SETTINGS = {
    True: {"models": 40, "tune": 12, "subsets": 1000, "seeds": (0, 1)},
    False: {"models": 100, "tune": 20, "subsets": 3000, "seeds": (0, 1, 2)},
}
EKFAC = os.environ.get("ASSAY_BENCH_EKFAC") == "1"  # minutes of kronfluence per forget set and seed
# Class densities of the subset models, uniform in [low, high] per subset and class (see
# class_heterogeneous_masks for why, and the notes for what else was tried).
CLASS_DENSITY = (0.5, 1.0)
# Neighbourhood size of the context datamodel's interaction terms (fit_context_datamodel); 5 and 10
# did about as well on digits, 20 worse on the hardest-examples forget sets.
CONTEXT_K = 5
# Ridge strength of the regression datamodel: tuned with DMM's other settings. Leave-one-out CV picks the
# strongest (best at predicting held-out subset outputs), which shrinks the effects DMM subtracts.
RIDGE_ALPHAS = (1.0, 10.0, 100.0)
# DMM's budget: at most this share of retraining's examples per request (8 epochs of 1,000 = 0.23)
BUDGET = 0.25
GROUPS = ("forget", "retain", "val")


@dataclass
class Data:
    x: torch.Tensor  # all points: train then validation
    y: torch.Tensor
    n_train: int

    @property
    def x_train(self) -> torch.Tensor:
        return self.x[: self.n_train]

    @property
    def y_train(self) -> torch.Tensor:
        return self.y[: self.n_train]


def load_data(seed: int = 0) -> Data:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    return Data(torch.tensor(x[order] / 16.0, dtype=torch.float32), torch.tensor(y[order]), N_TRAIN)


def forget_sets(data: Data, full_margins: np.ndarray, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean_margin = full_margins[:, : data.n_train].mean(0)
    labels = data.y_train.numpy()
    hardest_class = min(range(10), key=lambda c: mean_margin[labels == c].mean())
    members = np.flatnonzero(labels == hardest_class)
    hardest = members[np.argsort(mean_margin[members])[:FORGET_SIZE]]
    return {
        "random": np.sort(rng.choice(data.n_train, FORGET_SIZE, replace=False)),
        f"class {hardest_class}, hardest": np.sort(hardest),
    }


@dataclass
class Context:
    data: Data
    forget: np.ndarray
    retain: np.ndarray
    datamodels: dict[str, Datamodel]
    oracle_logits: np.ndarray  # group B's mean logits on the training points
    groups: dict[str, np.ndarray] = field(default_factory=dict)


Apply = Callable[[Any, Context, dict], Any]


DEFAULT_RIDGE = 10.0  # the ridge alpha of the untuned "DMM (default settings)" row


def _dmm(name: str) -> Apply:
    def apply(model: Any, ctx: Context, cfg: dict) -> Any:
        if "lr" in cfg:
            config = DMMConfig(optim=OptimConfig(lr=cfg["lr"], epochs=cfg["epochs"], batch_size=cfg["batch"]))
        elif cfg.get("authors"):
            config = DMMConfig(optim=AUTHORS_OPTIM)
        else:
            config = DMMConfig()
        key = f"{name} {cfg['ridge']:g}" if "ridge" in cfg else name
        return dmm_classifier(model, ctx.data.x_train, ctx.forget, ctx.datamodels[key], config, ctx.retain)

    return apply


def _om(model: Any, ctx: Context, cfg: dict) -> Any:
    optim = OptimConfig(lr=cfg["lr"], epochs=cfg["epochs"], batch_size=cfg["batch"])
    return oracle_matching(
        model, ctx.data.x_train, ctx.forget, ctx.oracle_logits, DMMConfig(optim=optim), ctx.retain
    )


def _ga(model: Any, ctx: Context, cfg: dict) -> Any:
    optim = OptimConfig(lr=cfg["lr"], epochs=cfg["epochs"], batch_size=cfg["batch"], lr_decay=1.0)
    return gradient_ascent(model, ctx.data.x_train, ctx.data.y_train, ctx.forget, optim)


def _gd(model: Any, ctx: Context, cfg: dict) -> Any:
    optim = OptimConfig(lr=cfg["lr"], epochs=cfg["epochs"], batch_size=cfg["batch"], lr_decay=1.0)
    return gradient_descent(model, ctx.data.x_train, ctx.data.y_train, ctx.retain, optim)


def _gagd(model: Any, ctx: Context, cfg: dict) -> Any:
    optim = OptimConfig(lr=cfg["lr"], epochs=cfg["epochs"], batch_size=cfg["batch"], lr_decay=1.0)
    return ascent_descent(model, ctx.data.x_train, ctx.data.y_train, ctx.forget, ctx.retain, optim)


def _grid(lrs: tuple, epochs: tuple, batch: int, ridges: tuple = ()) -> list[dict]:
    grid = [{"lr": lr, "epochs": e, "batch": batch} for lr in lrs for e in epochs]
    return [{**cfg, "ridge": r} for cfg in grid for r in ridges] if ridges else grid


def methods(quick: bool, ekfac: bool) -> dict[str, tuple[Apply | None, list[dict]]]:
    match_grid = _grid((1e-3, 3e-3, 1e-2), (4, 10) if quick else (4, 10, 20), 128)
    budget_grid = _grid((1e-3, 3e-3, 1e-2), (4, 8), 128)  # 8 epochs of 1,000 examples: 0.23 of retraining
    out: dict[str, tuple[Apply | None, list[dict]]] = {
        "do-nothing": (None, [{}]),
        "gradient ascent (F)": (_ga, _grid((1e-4, 3e-4, 1e-3), (1, 3), 16)),
        "gradient descent (retain)": (_gd, _grid((1e-4, 3e-4, 1e-3), (1, 3), 64)),
        "ascent + descent": (_gagd, _grid((1e-4, 3e-4, 1e-3), (1, 3), 64)),
        "DMM (regression datamodel)": (
            _dmm("ridge"),
            [{**c, "ridge": r} for c in budget_grid for r in RIDGE_ALPHAS],
        ),
        "DMM (linear, class-heterogeneous subsets: the previous design)": (
            _dmm("classhet"),
            [{**c, "ridge": r} for c in budget_grid for r in RIDGE_ALPHAS],
        ),
        "DMM (default settings, untuned)": (_dmm("ridge"), [{"ridge": DEFAULT_RIDGE}]),
        "DMM, authors' optimiser": (_dmm("ridge"), [{"authors": 1, "ridge": r} for r in RIDGE_ALPHAS]),
        "Oracle Matching": (_om, match_grid),
    }
    if ekfac:
        out["DMM (EK-FAC datamodel, scale 1/n)"] = (_dmm("ekfac"), budget_grid)
        out["DMM (EK-FAC datamodel, scale fitted)"] = (_dmm("ekfac fitted"), budget_grid)
    return out


def _epochs(cfg: dict) -> int:
    if "epochs" in cfg:
        return int(cfg["epochs"])
    return AUTHORS_OPTIM.epochs if cfg.get("authors") else DMMConfig().optim.epochs


def examples_processed(name: str, cfg: dict, ctx: Context) -> int:
    """Forward + backward passes over examples that the method makes for one model."""
    if not cfg:
        return 0
    n_f, n_r = len(ctx.forget), len(ctx.retain)
    if name.startswith(("DMM", "Oracle")):
        sequence, _ = finetune_points(ctx.forget, ctx.retain)
        return len(sequence) * _epochs(cfg)
    if name.startswith("gradient ascent"):
        return n_f * cfg["epochs"]
    if name.startswith("gradient descent"):
        return n_r * cfg["epochs"]
    steps = -(-n_r // cfg["batch"])  # ascent + descent: each retain batch pairs with a forget batch
    return (n_r + steps * min(cfg["batch"], n_f)) * cfg["epochs"]


def unlearned_margins(apply: Apply | None, ensemble: EnsembleMLP, ctx: Context, cfg: dict) -> np.ndarray:
    model = copy.deepcopy(ensemble)
    if apply is not None:
        apply(model, ctx, cfg)
    return margins(logits_of(model, ctx.data.x), ctx.data.y)


def datamodel_errors(
    ctx: Context, full: EnsembleMLP, oracle_margins: np.ndarray
) -> dict[str, tuple[float, float]]:
    """Per datamodel: the share of retraining's change in the forget set's mean margin that it predicts,
    and the RMS error of its predicted change in each fine-tuning point's mean margin (beside retraining's
    RMS change, as the last entry)."""
    _, points = finetune_points(ctx.forget, ctx.retain)
    index = torch.as_tensor(points)
    logits, labels = logits_of(full, ctx.data.x_train[index]), ctx.data.y_train[index]
    before = margins(logits, labels).mean(0)
    actual = oracle_margins[:, points].mean(0) - before
    out = {}
    for key, dm in ctx.datamodels.items():
        effect = dm.removal_effect([str(i) for i in ctx.forget], [str(p) for p in points])
        predicted = margins(logits - effect, labels).mean(0) - before
        k = len(ctx.forget)
        out[key] = (
            predicted[:k].mean() / actual[:k].mean(),
            float(np.sqrt(np.mean((predicted - actual) ** 2))),
        )
    out["retraining"] = (1.0, float(np.sqrt(np.mean(actual**2))))
    return out


def seconds_for_one(apply: Apply | None, ensemble: EnsembleMLP, ctx: Context, cfg: dict) -> float:
    if apply is None:
        return 0.0
    model = ensemble.member(0)
    started = time.perf_counter()
    apply(model, ctx, cfg)
    return time.perf_counter() - started


def _fmt_cfg(cfg: dict) -> str:
    if not cfg:
        return "-"
    words = ["authors' optimiser" if k == "authors" else f"{k} {v:g}" for k, v in cfg.items()]
    return ", ".join(words)


def fitted_scale(dm: Datamodel, subsets: tuple[np.ndarray, np.ndarray], points: np.ndarray) -> float:
    """One factor s >= 0 for attribution-based weights, by least squares on the subset models' outcomes:
    centred logits on the points against s x the centred sum of the weights of the examples each subset
    kept (the LM stage's `scale="auto"` does the same with a few retrains)."""
    masks, outcomes = subsets
    y = outcomes[:, points].reshape(len(masks), -1).astype(np.float64)
    x = masks.astype(np.float64) @ dm.weights[:, dm.target_positions([str(p) for p in points])].reshape(
        dm.weights.shape[0], -1
    )
    y, x = y - y.mean(0), x - x.mean(0)
    return max(0.0, float((x * y).sum() / (x * x).sum()))


def evaluate_forget_set(
    label: str,
    forget: np.ndarray,
    data: Data,
    full: EnsembleMLP,
    tune: EnsembleMLP,
    regression: dict[str, Datamodel],
    subsets: tuple[np.ndarray, np.ndarray],
    settings: dict,
    quick: bool,
    seed: int,
) -> tuple[dict, dict]:
    n = data.n_train
    keep = np.ones(n, bool)
    keep[forget] = False
    n_models = settings["models"]
    masks = np.tile(keep, (n_models, 1))
    oracle_a = train_ensemble(data.x_train, data.y_train, masks, list(range(seed, seed + n_models)), RECIPE)
    oracle_b = train_ensemble(
        data.x_train, data.y_train, masks, list(range(seed + 10_000, seed + 10_000 + n_models)), RECIPE
    )
    started = time.perf_counter()  # retraining one model without F, the compute unit
    train_ensemble(data.x_train, data.y_train, keep[None, :], [seed + 20_000], RECIPE)
    retrain_seconds = time.perf_counter() - started
    retain = np.flatnonzero(keep)
    groups = {"forget": forget, "retain": retain, "val": np.arange(n, len(data.x))}
    ctx = Context(
        data,
        forget,
        retain,
        dict(regression),
        logits_of(oracle_b, data.x_train).mean(0),
        groups,
    )
    facts = {"retrain_seconds": retrain_seconds}
    if EKFAC:
        started = time.perf_counter()
        _, points = finetune_points(forget, retain)
        reference = train_ensemble(data.x_train, data.y_train, np.ones((1, n), bool), [seed + 30_000], RECIPE)
        ctx.datamodels["ekfac"] = per_logit_datamodel(
            reference.member(0),
            data.x_train,
            data.y_train,
            data.x_train[torch.as_tensor(points)],
            point_ids=[str(p) for p in points],
            method="ekfac",
            method_params={"train_batch_size": 200, "query_batch_size": 4096},
        )
        facts["ekfac_seconds"] = time.perf_counter() - started
        scale = fitted_scale(ctx.datamodels["ekfac"], subsets, points)
        ekfac = ctx.datamodels["ekfac"]
        ctx.datamodels["ekfac fitted"] = Datamodel(ekfac.weights * scale, ekfac.train_ids, ekfac.target_ids)
        facts["ekfac_scale"] = scale / n  # the weights above are already in units of 1/n
    margins_a = margins(logits_of(oracle_a, data.x), data.y)
    margins_b = margins(logits_of(oracle_b, data.x), data.y)
    floor = klom(margins_b, margins_a, groups)
    facts["datamodels"] = datamodel_errors(ctx, full, margins_a)
    retrain_examples = RECIPE.epochs * len(retain)
    rows = [["oracle vs oracle (floor)", "-", *[floor[g] for g in GROUPS], 1.0, 1.0]]
    for name, (apply, grid) in methods(quick, EKFAC).items():
        best, best_score = grid[0], float("inf")
        if len(grid) > 1:
            for cfg in grid:
                report = klom(unlearned_margins(apply, tune, ctx, cfg), margins_b, groups)
                score = max(report[g] for g in GROUPS)
                if score < best_score:
                    best, best_score = cfg, score
        report = klom(unlearned_margins(apply, full, ctx, best), margins_a, groups)
        rows.append(
            [
                name,
                _fmt_cfg(best),
                *[report[g] for g in GROUPS],
                examples_processed(name, best, ctx) / retrain_examples,
                seconds_for_one(apply, full, ctx, best) / retrain_seconds,
            ]
        )
    facts["label"] = f"{label} (|F| = {len(forget)})"
    return rows, facts


def one_seed(quick: bool, seed: int) -> tuple[list[list], list[dict], dict]:
    """The whole benchmark on one data split: per forget set, its rows and facts; and facts of the seed."""
    settings = SETTINGS[quick]
    base = 1_000_000 * seed  # every model seed of this run
    data = load_data(seed)
    n = data.n_train
    started = time.perf_counter()
    everything = np.ones((settings["models"], n), bool)
    full = train_ensemble(
        data.x_train, data.y_train, everything, list(range(base, base + settings["models"])), RECIPE
    )
    tune = train_ensemble(
        data.x_train,
        data.y_train,
        np.ones((settings["tune"], n), bool),
        list(range(base + 50_000, base + 50_000 + settings["tune"])),
        RECIPE,
    )
    full_seconds = time.perf_counter() - started
    accuracy = float((logits_of(full, data.x[n:]).argmax(-1) == data.y[n:].numpy()).mean())
    full_margins = margins(logits_of(full, data.x), data.y)
    labels = data.y_train.numpy()
    started = time.perf_counter()
    masks = class_heterogeneous_masks(labels, settings["subsets"], *CLASS_DENSITY, seed=7 + seed)
    outcomes = subset_logits(data.x_train, data.y_train, masks, data.x_train, RECIPE, seed=base + 100_000)
    # groups drawn from the full models' margins and the inputs, knowing no forget set
    structure = {"scores": full_margins[:, :n].mean(0), "features": data.x_train.numpy()}
    low, high = CLASS_DENSITY
    groups = group_removal_masks(labels, settings["subsets"], **structure, low=low, high=high, seed=11 + seed)
    group_outcomes = subset_logits(
        data.x_train, data.y_train, groups, data.x_train, RECIPE, seed=base + 300_000
    )
    neighbourhoods = class_neighbourhoods(labels, **structure, k=CONTEXT_K)
    regression = {
        f"ridge {a:g}": fit_context_datamodel(
            (masks, outcomes), (groups, group_outcomes), neighbourhoods, alpha=a
        )
        for a in RIDGE_ALPHAS
    }
    datamodel_seconds = time.perf_counter() - started
    # the previous design, in the same run: linear, on the class-heterogeneous subsets alone
    regression |= {
        f"classhet {a:g}": fit_regression_datamodel(masks, outcomes, alpha=a) for a in RIDGE_ALPHAS
    }
    sets = forget_sets(data, full_margins, seed=1 + seed)
    per_set, set_facts = [], []
    for k, (label, forget) in enumerate(sets.items()):
        rows, facts = evaluate_forget_set(
            label,
            forget,
            data,
            full,
            tune,
            regression,
            (masks, outcomes),
            settings,
            quick,
            base + 1_000 + 100_000 * (k + 1),
        )
        per_set.append(rows)
        set_facts.append(facts)
    seed_facts = {"accuracy": accuracy, "full_seconds": full_seconds, "datamodel_seconds": datamodel_seconds}
    return per_set, set_facts, seed_facts


def _mean_se(values: list[float]) -> str:
    values = np.asarray(values, dtype=float)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():.3g} ± {se:.2g}"


def aggregate(rows_per_seed: list[list[list]]) -> list[list]:
    """One row per method: the seeds' chosen settings, KLoM95 mean ± standard error, mean cost ratios."""
    out = []
    for i, row in enumerate(rows_per_seed[0]):
        runs = [rows[i] for rows in rows_per_seed]
        chosen = "; ".join(r[1] for r in runs) if any(r[1] != "-" for r in runs) else "-"
        out.append(
            [
                row[0],
                chosen,
                *[_mean_se([r[2 + g] for r in runs]) for g in range(len(GROUPS))],
                float(np.mean([r[5] for r in runs])),
                float(np.mean([r[6] for r in runs])),
            ]
        )
    return out


def comparison(rows_per_seed: list[list[list]]) -> list:
    """DMM's forget-set KLoM95 over Oracle Matching's, per seed, and DMM's cost."""
    names = [r[0] for r in rows_per_seed[0]]
    dmm, om = names.index("DMM (regression datamodel)"), names.index("Oracle Matching")
    ratios = [rows[dmm][2] / rows[om][2] for rows in rows_per_seed]
    return [
        _mean_se([rows[dmm][2] for rows in rows_per_seed]),
        _mean_se([rows[om][2] for rows in rows_per_seed]),
        ", ".join(f"{r:.2f}" for r in ratios),
        _mean_se(ratios),
        float(np.mean([rows[dmm][5] for rows in rows_per_seed])),
    ]


TRIED = (
    "What was tried for the structured forget set (seed 0, 40 models, KLoM95 of the DMM *targets* "
    "themselves against the oracles, forget / retain; floor 2.2 / 2.3 at 40 models; do-nothing 9.9): "
    "the datamodel explains why DMM fails there: removing 10, 20, 30, 40 of the 40 moves the removed "
    "points' mean margin by -0.70, -1.02, -1.32, -1.76 where a Bernoulli(0.8) ridge datamodel predicts "
    "-0.71, -0.80, -0.94, -1.06 (a group's removal is super-additive; kept points were predicted within "
    "0.08); shifting each model's margins by the true mean change scores 1.9. Bernoulli(0.8) masks, "
    "3,000 subsets: share of the change predicted 0.63, KLoM 9.4 (ridge 1; 10: 9.5; 100: 9.5); x1.5 "
    "the removal effect: 4.8 (random set: 3.7 from 2.3, so no single scale serves both); "
    "Bernoulli(0.9): 0.85, 6.9; Bernoulli(0.95): 0.56, 9.6 (noise); class-heterogeneous densities "
    "(kept as the design): 0.87, 5.8, random set 2.3 at that seed and size (the diagnostics above, 100 "
    "models and 3 seeds, put its share at 0.72-0.76); + per-class quadratic terms 0.86, 5.8; + member x class-removal "
    "interactions 0.91, 4.7 but random set 3.1 (ridge 1); fitting a separate datamodel for a forget "
    "point on the subsets without it (0.76-0.87x the share: fewer rows, more shrinkage); amplifying "
    "the cross effects on removed points by a factor fitted on 100 input-space-neighbourhood or 200 "
    "influence-neighbourhood removals: the factor came out 0.74 and 0.55 (< 1), the opposite of the "
    "1.65 this set needs, so no generic calibration family transferred. EK-FAC per-logit datamodels "
    "(previous run): 9.4-9.8. What is kept (seeds 0 and 1, 40 models, 3,000 + 3,000 subsets; target "
    "KLoM95 forget, random | hardest-40; previous design 2.25 | 5.81 and 2.19 | 8.40; shifting by the "
    "true mean change 1.85 | 1.93 and 1.96 | 2.37; floor 1.87 | 2.18 and 2.12 | 2.25): subsets that "
    "also drop whole groups (group_removal_masks). A linear fit pooling them with the "
    "class-heterogeneous ones reaches 2.78 and 2.82 on the hardest-40 set but over-predicts the random "
    "set 1.4-1.5x; a context datamodel (fit_context_datamodel: single effects from the "
    "class-heterogeneous fit, neighbourhood interactions of 5 fitted to what they leave unexplained, "
    "ridge 10) 2.14 | 2.39 and 2.67 | 2.58. DMM itself with it (40 models, best of lr 0.003 / 0.01 and "
    "4 / 8 epochs on group A): hardest-40 3.2-3.7 and 3.4 (previous 6.7 and 9.0; Oracle Matching up "
    "to 20 epochs 2.5 and 3.9); random, mean over 4 retain samples at lr 0.003 / 0.01, 8 epochs: "
    "2.08 / 2.18 and 2.43 / 2.44 (previous design 2.34 / 2.13 and 2.19 / 2.35; one draw each varies "
    "by up to 0.7). Beyond the benchmark's two sets (target KLoM95, seed 0 | 1, previous design -> context "
    "datamodel): 40 input neighbours in a class 9.7 -> 3.2 | 9.8 -> 4.6; hardest 40 of the "
    "second-hardest class 10.1 -> 5.8 | 9.6 -> 2.9; 40 random of one class, the 40 with the most ink, "
    "the 40 easiest of a class 1.8-2.6 -> 2.2-2.9. Groups matter by kind: for a linear fit, "
    "neighbourhoods in the full models' logit space or in input space alone did nothing for the "
    "hardest-40 set (5.9-7.7), margin-ranked windows did; 1,000 instead of 3,000 group subsets: 3.75. "
    "A joint ridge of single effects and interactions on all subsets: targets as good, but single "
    "effects shrunk (0.8x on the random set) and DMM worse on both sets (random 2.2 and 2.8). Tried "
    "per request and dropped: a group feature (removed share of F, or its square, unpenalised) in the "
    "ridge: 6.3-7.1 (the square extrapolates, random set 4.8); weighting subsets by the share of F "
    "they removed: no better than unweighted at best, collapsing at sharper weights."
)


def run(quick: bool = True) -> list[dict]:
    torch.set_num_threads(1)  # tiny ops: a second thread only adds contention on a shared machine
    settings = SETTINGS[quick]
    results = [one_seed(quick, seed) for seed in settings["seeds"]]
    tables, summary = [], []
    for k, kind in enumerate(("random", "structured: the 40 hardest examples of the hardest class")):
        rows_per_seed = [per_set[k] for per_set, _, _ in results]
        labels = "; ".join(facts[k]["label"] for _, facts, _ in results)
        tables.append(
            {
                "title": f"KLoM95, forget set: {kind}, {settings['models']} models, {len(results)} seeds",
                "columns": [
                    "method",
                    "chosen setting (per seed)",
                    "KLoM95 forget",
                    "KLoM95 retain",
                    "KLoM95 val",
                    "examples / retraining",
                    "wall time / retraining",
                ],
                "rows": aggregate(rows_per_seed),
                "notes": f"Forget sets per seed: {labels}. KLoM95: mean over seeds ± standard error.",
            }
        )
        summary.append([kind, *comparison(rows_per_seed)])
    seeds = [facts for _, _, facts in results]
    accuracies = ", ".join(f"{s['accuracy']:.3f}" for s in seeds)
    fit_seconds = ", ".join(f"{s['datamodel_seconds']:.0f} s" for s in seeds)
    errors = " | ".join(
        ", ".join(
            f"{key} {100 * share:.0f}% / {rmse:.2f}"
            for key, (share, rmse) in f["datamodels"].items()
            if key != "retraining"
        )
        + f" (retraining's RMS change {f['datamodels']['retraining'][1]:.2f})"
        for _, facts, _ in results
        for f in facts
    )
    notes = (
        f"{'Quick' if quick else 'Full'} mode: N = {settings['models']} models and N + N oracles per forget set "
        f"(the paper uses 100; KLoM is stable from about 80), {settings['tune']} tuning models, seeds "
        f"{', '.join(map(str, settings['seeds']))} (each its own data split, models and forget sets). MLP "
        f"validation accuracy {accuracies}. Regression datamodel: "
        f"2 x {settings['subsets']} subset models per seed, each class kept at a density uniform in "
        f"[{CLASS_DENSITY[0]}, {CLASS_DENSITY[1]}], the second half also dropping 1-3 groups of 10-60 "
        f"(windows of a class's margin ranking or input neighbourhoods), context neighbourhoods of "
        f"{CONTEXT_K}, trained and fitted in {fit_seconds} (amortised: paid once for every "
        f"forget set and model; {2 * settings['subsets']} trainings = {2 * settings['subsets']} retrainings; "
        f"the previous design's row uses the first {settings['subsets']} only), "
        f"ridge alpha tuned over {', '.join(f'{a:g}' for a in RIDGE_ALPHAS)} with DMM's other settings. "
        f"DMM is tuned within {BUDGET:.0%} of retraining's examples. Datamodel diagnostics, share of "
        "retraining's change in the forget set's mean margin predicted / RMS error of the predicted change "
        f"in each fine-tuning point's mean margin, per seed (random | structured): {errors}. KLoM95 is 0 at "
        "best and log(1e5) = 11.5 for fully separated margins; the floor is what two groups of retrained "
        "oracles score against each other. Wall-time ratios time one model alone and are noisy on a shared "
        "machine. " + TRIED
    )
    for table in tables:
        table["notes"] += " " + notes
    tables.insert(
        0,
        {
            "title": "DMM against Oracle Matching on the forget set (KLoM95, lower is better)",
            "columns": [
                "forget set",
                "DMM (regression datamodel)",
                "Oracle Matching",
                "DMM / OM per seed",
                "DMM / OM",
                "DMM examples / retraining",
            ],
            "rows": summary,
            "notes": "Issue 21's target: DMM within 2x Oracle Matching's KLoM95 at no more than 0.25 of "
            "retraining's examples per request.",
        },
    )
    from benchmarks.unlearning.speed import speed_tables

    return tables + speed_tables(quick)
