"""Curation stages: thin wrappers that read the lake, call a method, write results, register a run.

A stage is a function `(ctx: StageContext, params: dict) -> run_id`, registered under a name with
`@stage("name")`. Recipes (`recipes/*.yaml`) list stages by that name; `assay curate` runs them
in order, passing each the run ids of the stages before it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from storage import Lake

StageFn = Callable[["StageContext", dict], str]
STAGES: dict[str, StageFn] = {}


@dataclass
class StageContext:
    lake: Lake
    datasets: list[str]  # the examples datasets this recipe curates
    previous: dict[str, str] = field(default_factory=dict)  # stage name -> run_id, earlier stages
    device: str = "cpu"
    quiet: bool = False

    def dataset_versions(self, stage_name: str) -> dict[str, str]:
        """The latest version of each dataset the recipe curates; none named is the user's error."""
        from storage import UserError

        if not self.datasets:
            raise UserError(f"stage {stage_name}: the recipe names no datasets")
        return {name: self.lake.dataset_version(name) for name in self.datasets}


def with_defaults(stage_name: str, params: dict | None, defaults: dict) -> dict:
    """A stage's parameters over its defaults; an unknown parameter is the user's error."""
    from storage import UserError

    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise UserError(
            f"stage {stage_name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(defaults)}"
        )
    return {**defaults, **params}


def positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def stage(name: str) -> Callable[[StageFn], StageFn]:
    def register(fn: StageFn) -> StageFn:
        STAGES[name] = fn
        return fn

    return register


def load_stages() -> dict[str, StageFn]:
    """Import every module in this package so that its @stage functions register."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return STAGES
