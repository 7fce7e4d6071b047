"""Unlearning: Datamodel Matching (DMM), baselines, datamodels, and the KLoM evaluation.

Pure methods (tensors / arrays in and out). The lake stage for causal LMs is attribution/stages/unlearn.py.
"""

from attribution.unlearning.baselines import (
    ascent_descent,
    do_nothing,
    gradient_ascent,
    gradient_descent,
    oracle_matching,
)
from attribution.unlearning.datamodels import (
    Datamodel,
    class_heterogeneous_masks,
    class_neighbourhoods,
    fit_context_datamodel,
    fit_regression_datamodel,
    group_removal_masks,
    per_logit_datamodel,
    regression_datamodel,
)
from attribution.unlearning.dmm import DMMConfig, dmm_classifier, finetune_points, predicted_outputs
from attribution.unlearning.health import unlearning_problem
from attribution.unlearning.klom import klom, klom_per_example, margins, oracle_floor
from attribution.unlearning.loop import OptimConfig

__all__ = [
    "DMMConfig",
    "Datamodel",
    "OptimConfig",
    "ascent_descent",
    "class_heterogeneous_masks",
    "class_neighbourhoods",
    "dmm_classifier",
    "do_nothing",
    "finetune_points",
    "fit_context_datamodel",
    "fit_regression_datamodel",
    "gradient_ascent",
    "gradient_descent",
    "group_removal_masks",
    "klom",
    "klom_per_example",
    "margins",
    "oracle_floor",
    "oracle_matching",
    "per_logit_datamodel",
    "predicted_outputs",
    "regression_datamodel",
    "unlearning_problem",
]
