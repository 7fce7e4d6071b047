"""Curation stages: each module holds Stage subclasses (storage/stage.py) that read the lake, call a
method of curation/, write results and register a run. Recipes (`recipes/*.yaml`) list stages by name;
`assay curate` runs them in order, each given the run ids of the stages before it, and every stage is
also an `assay <name>` command.
"""

from __future__ import annotations

import importlib
import pkgutil

import pandas as pd

from storage import Lake
from storage.stage import STAGES, RunSpec, Stage, StageContext

__all__ = ["STAGES", "RunSpec", "Stage", "StageContext", "load_examples", "load_stages"]


def load_examples(lake: Lake, versions: dict[str, str]) -> pd.DataFrame:
    """The examples of the given dataset versions, in (dataset as listed, row_index) order."""
    frames = [
        lake.query(
            "SELECT * FROM examples_all WHERE dataset = ? AND version = ? ORDER BY row_index", [name, version]
        )
        for name, version in versions.items()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_stages() -> dict[str, type[Stage]]:
    """Import every module of this package so that its stages register."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return STAGES
