"""Attribution stages (storage/stage.py contract): `attribute` (scores of a training dataset on a target
dataset) and `unlearn` (remove a forget set from a fine-tuned model). Importing the package registers
both."""

from __future__ import annotations

from attribution.stages.attribute import Attribute, run_attribution
from attribution.stages.unlearn import Unlearn, run_unlearning

__all__ = ["Attribute", "Unlearn", "run_attribution", "run_unlearning"]
