"""Curation recipes: a YAML file naming datasets and an ordered list of curation stages.

```yaml
name: demo                      # required: letters, digits, _ . -
description: what it is for     # optional
datasets: [demo_train]          # required: the examples datasets to curate (`--dataset` overrides)
stages:                         # required, run in order
  - stage: influence_reweight   # a registered stage (curation/stages)
    params: {temperature: 1.0}  # optional mapping, checked by the stage's own parameter check
  - stage: mix
    name: final_mix             # optional key of this stage's run id for later stages (default: stage)
    params: {by: domain, weights_from: influence_reweight}
export:                         # optional: export the last stage's run (or `run: NAME`)
  out: exports/demo             # required folder (relative paths: from the working directory)
  format: jsonl                 # jsonl | parquet | hf
  materialise: false            # repeat examples by their copies
  style: chat                   # chat | prompt_response
  run: final_mix                # optional: which stage's run to export
```

Each stage receives the run ids of the stages before it (`StageContext.previous`, keyed by `name`).
The whole recipe is checked before anything runs: a wrong field, type, unknown stage or stage
parameter is a `UserError` naming the file, the stage index and the field.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from storage import UserError

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
TOP_FIELDS = {"name", "description", "datasets", "stages", "export"}
STAGE_FIELDS = {"stage", "name", "params"}
EXPORT_FIELDS = {"out", "format", "materialise", "style", "run", "force"}
EXPORT_FORMATS = ("jsonl", "parquet", "hf")
EXPORT_STYLES = ("chat", "prompt_response")
# The parameter check of a stage whose module holds more than one stage; the others use their
# module's `resolve_params`. A stage without a check is checked when it runs.
PARAM_CHECKS = {"difficulty_flip": "resolve_flip", "influence_reweight": "resolve_reweight"}


@dataclass
class StageSpec:
    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # key of its run id in StageContext.previous

    def __post_init__(self) -> None:
        self.name = self.name or self.stage


@dataclass
class ExportSpec:
    out: str
    format: str = "jsonl"
    materialise: bool = False
    style: str = "chat"
    run: str | None = None  # a stage name; default: the last stage
    force: bool = False


@dataclass
class Recipe:
    name: str
    datasets: list[str]
    stages: list[StageSpec]
    export: ExportSpec | None = None
    description: str = ""
    source: str = "<recipe>"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "datasets": list(self.datasets),
            "stages": [{"stage": s.stage, "name": s.name, "params": s.params} for s in self.stages],
        }
        if self.export is not None:
            out["export"] = dict(vars(self.export))
        return out


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The YAML document of a recipe file (a mapping), or a UserError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"recipe {path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"recipe {path}:{where}: invalid YAML ({problem})") from None
    if not isinstance(doc, dict):
        raise UserError(f"recipe {path}: expected a mapping with name, datasets and stages")
    return doc


def parse_recipe(
    doc: dict[str, Any],
    source: str = "<recipe>",
    datasets: list[str] | None = None,
    stages: dict[str, Callable] | None = None,
) -> Recipe:
    """Check every field (and every stage's parameters) of a recipe document; nothing runs here.

    `datasets` overrides the recipe's datasets; `stages` is the stage registry (default: load_stages())."""
    if stages is None:
        from curation.stages import load_stages

        stages = load_stages()

    def fail(where: str, message: str) -> UserError:
        return UserError(f"recipe {source}: {where}: {message}")

    if not isinstance(doc, dict):
        raise UserError(f"recipe {source}: expected a mapping with name, datasets and stages")
    unknown = sorted(set(map(str, doc)) - TOP_FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field; fields are {', '.join(sorted(TOP_FIELDS))}")
    for required in ("name", "datasets", "stages"):
        if required not in doc:
            raise fail(required, "missing (required)")
    name = doc["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise fail("name", f"expected letters, digits, _ . - only, got {name!r}")
    description = doc.get("description") or ""
    if not isinstance(description, str):
        raise fail("description", f"expected text, got {type(description).__name__}")

    names = datasets if datasets else doc["datasets"]
    label = "--dataset" if datasets else "datasets"
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names:
        raise fail(label, "expected a non-empty list of dataset names")
    for i, ds in enumerate(names):
        if not _is_str(ds):
            raise fail(f"{label}[{i}]", f"expected a dataset name, got {ds!r}")
    if len(set(names)) != len(names):
        raise fail(label, "a dataset is listed twice")

    raw_stages = doc["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise fail("stages", "expected a non-empty list of {stage: NAME, params: {...}}")
    specs: list[StageSpec] = []
    for i, entry in enumerate(raw_stages):
        where = f"stages[{i}]"
        if isinstance(entry, str):
            entry = {"stage": entry}
        if not isinstance(entry, dict):
            raise fail(
                where, f"expected a mapping {{stage: NAME, params: {{...}}}}, got {type(entry).__name__}"
            )
        extra = sorted(set(map(str, entry)) - STAGE_FIELDS)
        if extra:
            raise fail(f"{where}.{extra[0]}", f"unknown field; fields are {', '.join(sorted(STAGE_FIELDS))}")
        if "stage" not in entry:
            raise fail(f"{where}.stage", "missing (required)")
        stage_name = entry["stage"]
        if not isinstance(stage_name, str) or stage_name not in stages:
            raise fail(f"{where}.stage", f"unknown stage {stage_name!r}; stages: {', '.join(sorted(stages))}")
        where = f"stages[{i}] ({stage_name})"
        params = entry.get("params")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise fail(f"{where}.params", f"expected a mapping, got {type(params).__name__}")
        key = entry.get("name") or stage_name
        if not isinstance(key, str) or not NAME.match(key):
            raise fail(f"{where}.name", f"expected letters, digits, _ . - only, got {key!r}")
        if key in {s.name for s in specs}:
            raise fail(f"{where}.name", f"{key!r} is used by an earlier stage; give this one its own name")
        _check_params(stages[stage_name], stage_name, params, lambda msg, w=where: fail(f"{w}.params", msg))
        specs.append(StageSpec(stage_name, dict(params), key))

    export = None
    if doc.get("export") is not None:
        export = _parse_export(doc["export"], [s.name for s in specs], fail)
    return Recipe(name, list(names), specs, export, description, source)


def _check_params(fn: Callable, stage_name: str, params: dict, fail: Callable[[str], UserError]) -> None:
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    check = getattr(module, PARAM_CHECKS.get(stage_name, "resolve_params"), None)
    if check is None:
        return
    try:
        check(dict(params))
    except UserError as exc:
        raise fail(str(exc).removeprefix(f"stage {stage_name}: ")) from None


def _parse_export(raw: Any, stage_names: list[str], fail: Callable[[str, str], UserError]) -> ExportSpec:
    if not isinstance(raw, dict):
        raise fail("export", f"expected a mapping {{out: FOLDER, format: jsonl}}, got {type(raw).__name__}")
    extra = sorted(set(map(str, raw)) - EXPORT_FIELDS)
    if extra:
        raise fail(f"export.{extra[0]}", f"unknown field; fields are {', '.join(sorted(EXPORT_FIELDS))}")
    if not _is_str(raw.get("out")):
        raise fail("export.out", "missing: the folder to write")
    spec = ExportSpec(
        out=str(raw["out"]),
        format=raw.get("format", "jsonl"),
        materialise=raw.get("materialise", False),
        style=raw.get("style", "chat"),
        run=raw.get("run"),
        force=raw.get("force", False),
    )
    if spec.format not in EXPORT_FORMATS:
        raise fail("export.format", f"expected one of {', '.join(EXPORT_FORMATS)}, got {spec.format!r}")
    if spec.style not in EXPORT_STYLES:
        raise fail("export.style", f"expected one of {', '.join(EXPORT_STYLES)}, got {spec.style!r}")
    for flag in ("materialise", "force"):
        if not isinstance(getattr(spec, flag), bool):
            raise fail(f"export.{flag}", f"expected true or false, got {getattr(spec, flag)!r}")
    if spec.run is not None and spec.run not in stage_names:
        raise fail("export.run", f"{spec.run!r} is not a stage of this recipe ({', '.join(stage_names)})")
    return spec


def load_recipe(
    path: str | Path, datasets: list[str] | None = None, stages: dict[str, Callable] | None = None
) -> Recipe:
    return parse_recipe(read_recipe(path), str(path), datasets, stages)


def check_datasets(lake: Any, recipe: Recipe) -> dict[str, str]:
    """The current version of every dataset the recipe curates (a UserError names a missing one)."""
    return {name: lake.dataset_version(name) for name in recipe.datasets}
