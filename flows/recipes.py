"""Recipes: a YAML file naming datasets and an ordered list of stages (any registered stage: attribution,
unlearning, curation), optionally followed by an export.

```yaml
name: demo                      # required: letters, digits, _ . -
description: what it is for     # optional
datasets: [demo_train]          # required: the datasets the stages work on (`--dataset` overrides)
stages:                         # required, run in order
  - stage: attribute            # a registered stage (`assay stages` lists them)
    params: {model: models/sft, targets: demo_targets, method: ekfac}
  - stage: influence_reweight   # scores_run: auto reads the scores of the attribute stage above
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
`overrides` (`assay curate --set NAME.PARAM=VALUE`) change one stage parameter without editing the file.
The whole recipe is checked before anything runs: a wrong field, type, unknown stage or stage parameter is
a `UserError` naming the file, the stage index and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.registry import build_stage, load_stages
from storage import UserError
from storage.errors import shorten
from storage.params import NAME, Choice, Flag, Items, Text
from storage.safe_yaml import MAX_BYTES, load_yaml

TOP_FIELDS = {"name", "description", "datasets", "stages", "export"}
STAGE_FIELDS = {"stage", "name", "params"}
EXPORT_FIELDS = {"out", "format", "materialise", "style", "run", "force"}
EXPORT_FORMATS = ("jsonl", "parquet", "hf")
DATASETS = Items(NAME, 1, 1000, unique=True)
DESCRIPTION = Text("text", max_length=10_000)


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


def export_styles() -> tuple[str, ...]:
    """The record styles `assay export --style` takes, with their aliases (curation/export.py)."""
    from curation.export import STYLE_ALIASES, STYLES

    return (*STYLES, *STYLE_ALIASES)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The YAML document of a recipe file (a mapping), or a UserError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path}: no such file")
    # storage/safe_yaml.py: plain data only (no aliases, tags or duplicate keys), size and depth bounded
    if path.stat().st_size > MAX_BYTES:
        raise UserError(f"recipe {path}: {path.stat().st_size:,} bytes is over the limit of {MAX_BYTES:,}")
    doc = load_yaml(path.read_bytes(), f"recipe {path}").data
    if not isinstance(doc, dict):
        raise UserError(f"recipe {path}: expected a mapping with name, datasets and stages")
    return doc


def _key(key: Any) -> str:
    """A mapping key as an error names it: plain when it is a plain word, else a bounded repr."""
    text = str(key)
    return text if len(text) <= 80 and text.replace("_", "").isalnum() else shorten(key)


class _Problems:
    """Builds the recipe's one-line errors: `recipe SOURCE: WHERE: MESSAGE`."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, where: str, message: str) -> UserError:
        return UserError(f"recipe {self.source}: {where}: {message}")

    def check(self, where: str, constraint: Any, value: Any) -> Any:
        try:
            return constraint.check(value)
        except ValueError as exc:
            raise self(where, str(exc)) from None


def parse_overrides(values: Mapping[str, Any] | list[str] | None) -> dict[tuple[str, str], Any]:
    """`NAME.PARAM=VALUE` strings (VALUE read as YAML: numbers, true/false, lists) or a mapping
    {"NAME.PARAM": value} -> {(stage name, parameter): value}."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(values, Mapping):
        pairs = [(str(k), v) for k, v in values.items()]
    else:
        for text in values or []:
            key, sep, raw = str(text).partition("=")
            if not sep:
                raise UserError(f"--set {shorten(text)}: expected STAGE.PARAM=VALUE")
            pairs.append((key, load_yaml(raw, f"--set {shorten(key)[1:-1]}").data if raw.strip() else ""))
    out = {}
    for key, value in pairs:
        stage_name, dot, param_name = key.partition(".")
        if not dot or not stage_name or not param_name:
            raise UserError(
                f"--set {shorten(key)}: expected STAGE.PARAM=VALUE (STAGE: a recipe stage's name)"
            )
        out[(stage_name, param_name)] = value
    return out


def _stage_spec(entry: Any, i: int, taken: set[str], stage_names: list[str], fail: _Problems) -> StageSpec:
    """One `stages[i]` entry, its fields checked (not yet its parameters)."""
    where = f"stages[{i}]"
    if isinstance(entry, str):
        entry = {"stage": entry}
    if not isinstance(entry, dict):
        raise fail(where, f"expected a mapping {{stage: NAME, params: {{...}}}}, got {type(entry).__name__}")
    extra = sorted(set(map(str, entry)) - STAGE_FIELDS)
    if extra:
        raise fail(
            f"{where}.{_key(extra[0])}", f"unknown field; fields are {', '.join(sorted(STAGE_FIELDS))}"
        )
    if "stage" not in entry:
        raise fail(f"{where}.stage", "missing (required)")
    stage_name = entry["stage"]
    if not isinstance(stage_name, str) or stage_name not in stage_names:
        raise fail(f"{where}.stage", f"unknown stage {shorten(stage_name)}; stages: {', '.join(stage_names)}")
    where = f"stages[{i}] ({stage_name})"
    params = entry.get("params")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise fail(f"{where}.params", f"expected a mapping, got {type(params).__name__}")
    key = fail.check(f"{where}.name", NAME, entry.get("name") or stage_name)
    if key in taken:
        raise fail(f"{where}.name", f"{key!r} is used by an earlier stage; give this one its own name")
    return StageSpec(stage_name, dict(params), key)


def _datasets(doc: dict, datasets: list[str] | None, fail: _Problems) -> list[str]:
    label = "--dataset" if datasets else "datasets"
    if "datasets" not in doc and not datasets:
        raise fail("datasets", "missing (required)")
    names = datasets if datasets else doc["datasets"]
    try:
        return DATASETS.check(names)
    except ValueError as exc:
        raise fail(label, f"expected a non-empty list of distinct dataset names ({exc})") from None


def parse_recipe(
    doc: dict[str, Any],
    source: str = "<recipe>",
    datasets: list[str] | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
) -> Recipe:
    """Check every field (and every stage's parameters) of a recipe document; nothing runs here.
    `datasets` overrides the recipe's datasets; `overrides` change stage parameters (see parse_overrides)."""
    fail = _Problems(source)
    if not isinstance(doc, dict):
        raise UserError(f"recipe {source}: expected a mapping with name, datasets and stages")
    unknown = sorted(set(map(str, doc)) - TOP_FIELDS)
    if unknown:
        raise fail(_key(unknown[0]), f"unknown field; fields are {', '.join(sorted(TOP_FIELDS))}")
    for required in ("name", "stages"):
        if required not in doc:
            raise fail(required, "missing (required)")
    name = fail.check("name", NAME, doc["name"])
    description = fail.check("description", DESCRIPTION, doc["description"]) if doc.get("description") else ""
    names = _datasets(doc, datasets, fail)
    raw_stages = doc["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise fail("stages", "expected a non-empty list of {stage: NAME, params: {...}}")
    registry = sorted(load_stages())
    specs: list[StageSpec] = []
    for i, entry in enumerate(raw_stages):
        specs.append(_stage_spec(entry, i, {s.name for s in specs}, registry, fail))
    changes = parse_overrides(overrides)
    for (stage_name, param_name), value in changes.items():
        spec = next((s for s in specs if s.name == stage_name), None)
        if spec is None:
            raise UserError(
                f"--set {stage_name}.{param_name}: no stage named {stage_name!r} in recipe {source}"
            )
        spec.params[param_name] = value
    for i, spec in enumerate(specs):
        build_stage(spec.stage, spec.params, where=f"recipe {source}: stages[{i}] ({spec.stage}).params")
    export = (
        _parse_export(doc["export"], [s.name for s in specs], fail) if doc.get("export") is not None else None
    )
    return Recipe(name, list(names), specs, export, description, source)


def _parse_export(raw: Any, stage_names: list[str], fail: _Problems) -> ExportSpec:
    if not isinstance(raw, dict):
        raise fail("export", f"expected a mapping {{out: FOLDER, format: jsonl}}, got {type(raw).__name__}")
    extra = sorted(set(map(str, raw)) - EXPORT_FIELDS)
    if extra:
        raise fail(
            f"export.{shorten(extra[0])}", f"unknown field; fields are {', '.join(sorted(EXPORT_FIELDS))}"
        )
    if "out" not in raw:
        raise fail("export.out", "missing: the folder to write")
    spec = ExportSpec(
        out=fail.check("export.out", Text("a folder", max_length=4096), raw["out"]),
        format=fail.check("export.format", Choice(EXPORT_FORMATS), raw.get("format", "jsonl")),
        materialise=fail.check("export.materialise", Flag(), raw.get("materialise", False)),
        style=fail.check("export.style", Choice(export_styles()), raw.get("style", "chat")),
        run=raw.get("run"),
        force=fail.check("export.force", Flag(), raw.get("force", False)),
    )
    if spec.run is not None and spec.run not in stage_names:
        raise fail(
            "export.run", f"{shorten(spec.run)} is not a stage of this recipe ({', '.join(stage_names)})"
        )
    return spec


def load_recipe(
    path: str | Path,
    datasets: list[str] | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
) -> Recipe:
    return parse_recipe(read_recipe(path), str(path), datasets, overrides)


def resolve_recipe(
    recipe: str | dict,
    datasets: list[str] | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
) -> Recipe:
    """A recipe from a YAML path or from the recipe as a mapping."""
    if isinstance(recipe, dict):
        return parse_recipe(recipe, f"<{shorten(recipe.get('name', 'recipe'), 40)}>", datasets, overrides)
    return load_recipe(recipe, datasets, overrides)


def check_datasets(lake: Any, recipe: Recipe) -> dict[str, str]:
    """The current version of every dataset the recipe works on (a UserError names a missing one)."""
    return {name: lake.dataset_version(name) for name in recipe.datasets}
