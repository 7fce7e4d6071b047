"""The stage contract, checked over every registered stage: parameters refused with one line naming the
field (recipe, Python and command line alike), `plan` without side effects, the planned run id is the run's
id, and one generated command per stage whose options are the Params fields."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from assay_testing import tree_digest
from flows_testlake import POOL, TARGETS, TRAIN, add_pool, make_lake
from typer.testing import CliRunner

from flows.commands import stages as stage_commands
from flows.registry import build_stage, load_stages
from storage import UserError
from storage.params import (
    Choice,
    Flag,
    Interval,
    Items,
    MapOf,
    OneOf,
    ParamError,
    Params,
    Text,
    cli_names,
    constraint_of,
    is_required,
    param,
)
from storage.stage import STAGES, StageContext

REGISTERED = sorted(load_stages())
# Values that satisfy the required parameters (enough to build the stage; plan checks them further).
REQUIRED = {
    "model": "/models/sft",
    "targets": TARGETS,
    "out": "/tmp/out",
    "forget_ids": ["t0001"],
    "scores": "r1",
}


def base_params(name: str) -> dict:
    params = {f.name: REQUIRED[f.name] for f in STAGES[name].Params.fields() if is_required(f)}
    if name == "unlearn":
        params.update(forget_ids=["t0001"], scores="r1")
    if name == "dart":
        params.update(replay="replay.jsonl")
    return params


def bad_values(constraint) -> list:
    """Values the constraint must refuse: a structure no parameter takes, and out-of-range / wrong-kind
    values for its own kind."""
    values: list = [[{"nested": True}]]
    inner = (
        constraint.options[0]
        if isinstance(constraint, OneOf) and len(constraint.options) == 1
        else constraint
    )
    if isinstance(inner, Interval):
        values += [inner.low - 1, inner.high * 10 + 1, math.nan, True, "7"]
        if inner.kind is int:
            values.append(1.5)
    elif isinstance(inner, Choice):
        values += ["no-such-choice", 3]
    elif isinstance(inner, Flag):
        values += ["yes", 1]
    elif isinstance(inner, Text):
        values += ["", 12, "x" * (inner.max_length + 1)]
    elif isinstance(inner, MapOf):
        values += ["text", {"": 1}]
    elif isinstance(inner, Items):
        values += [{"a": 1}]
    return values


@pytest.mark.parametrize("name", REGISTERED)
def test_defaults_satisfy_the_constraints_and_every_field_is_documented(name: str) -> None:
    cls = STAGES[name]
    stage = cls(base_params(name))
    assert stage.params.to_dict()  # built and checked
    for f in cls.Params.fields():
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
        assert f.metadata.get("check") is not None
    assert cls.summary_line() and cls.writes, name


@pytest.mark.parametrize("name", REGISTERED)
def test_every_parameter_refuses_bad_values_with_one_line_naming_it(name: str) -> None:
    cls = STAGES[name]
    refused = 0
    for f in cls.Params.fields():
        for value in bad_values(constraint_of(f)):
            params = {**base_params(name), f.name: value}
            where = f"recipe r.yaml: stages[3] ({name}).params"
            with pytest.raises(UserError) as err:
                cls(params, where=where)
            message = str(err.value)
            assert "\n" not in message and len(message) < 400, message
            assert message.startswith(f"{where}.{f.name}: "), (f.name, value, message)
            refused += 1
    assert refused >= 2 * len(cls.Params.fields())


@pytest.mark.parametrize("name", REGISTERED)
def test_unknown_and_missing_parameters_are_refused(name: str) -> None:
    cls = STAGES[name]
    with pytest.raises(UserError, match=r"^stage \w+: unknown parameter 'colour'; known: "):
        cls({**base_params(name), "colour": "blue"})
    for f in cls.Params.fields():
        if is_required(f):
            params = {k: v for k, v in base_params(name).items() if k != f.name}
            with pytest.raises(UserError, match=rf"^stage {name}\.{f.name}: missing \(required\)$"):
                cls(params)


def test_the_attribute_stage_offers_the_engines_methods() -> None:
    """The stage keeps the method names as constants (building it must not import torch): they must be the
    scorer registry's."""
    from attribution.engine import LEVELS, METHODS
    from attribution.scoring import SCORERS
    from attribution.stages import attribute

    assert set(attribute.METHODS) == set(METHODS) == set(SCORERS) and attribute.LEVELS == LEVELS
    assert {m for m in METHODS if SCORERS[m].token_level} == set(attribute.KRONFLUENCE)


def test_absurd_sizes_are_refused_before_any_run() -> None:
    for name, params in [
        ("mix", {"batch_size": 10**20}),
        ("mix", {"epochs": 1e12}),
        ("mix", {"steps": 10**8, "batch_size": 1000}),
        ("dart", {"replay": "r.jsonl", "n_max": 10**12}),
        ("attribute", {"model": "m", "targets": "t", "shard_size": 0}),
    ]:
        with pytest.raises(UserError, match=r"(batch_size|epochs|steps|n_max|shard_size): "):
            build_stage(name, params)


def test_params_dataclass_checks_direct_construction_too() -> None:
    from dataclasses import dataclass

    @dataclass
    class ToyParams(Params):
        size: int = param(3, "how many", Interval(int, 1, 10))
        kind: str = param("a", "which", Choice(("a", "b")))

    assert ToyParams().size == 3 and ToyParams(size=10).size == 10
    with pytest.raises(ParamError, match=r"^size: expected an integer in \[1, 10\], got 11$"):
        ToyParams(size=11)
    with pytest.raises(UserError, match=r"^here\.kind: expected one of a, b, got 'c'$"):
        ToyParams.from_mapping({"kind": "c"}, "here")
    long = "x" * 10_000
    with pytest.raises(UserError) as err:
        ToyParams.from_mapping({"kind": long}, "here")
    assert len(str(err.value)) < 160  # the value is quoted at most 80 characters long


@pytest.fixture
def lake_with_scores(tmp_path: Path):
    lake, scores_run = make_lake(tmp_path / "lake", shards=2)
    add_pool(lake)
    return lake, scores_run


CURATION_PLANS = {
    "influence_reweight": {"scores_run": "auto"},
    "difficulty_flip": {"fraction": 0.5, "pool": POOL},
    "mix": {"weights_from": "none", "batch_size": 4},
    "presto": {"ladder": "influence", "quantiles": [0.5], "cv": 2, "n_components": 2},
}


@pytest.mark.parametrize("name", sorted(CURATION_PLANS))
def test_plan_has_no_side_effects_and_names_the_run_execute_writes(name: str, lake_with_scores) -> None:
    lake, _ = lake_with_scores
    stage = build_stage(name, CURATION_PLANS[name])
    ctx = StageContext(lake, [TRAIN], quiet=True)
    before = tree_digest(lake.root)
    spec = stage.plan(ctx)
    assert stage.plan(ctx).run_id == spec.run_id  # deterministic
    assert tree_digest(lake.root) == before  # nothing written, not even a lock or a staging folder
    run_id = stage.run(ctx)
    assert run_id == spec.run_id
    record = lake.require_run(run_id)
    assert record["kind"] == spec.kind and record["method"] == spec.method
    written = {t for t in stage.writes if lake.run_dir(t, run_id).is_dir()}
    assert written, f"{name} wrote none of the tables it declares"
    undeclared = {p.name for p in lake.root.iterdir() if (p / f"run_id={run_id}").is_dir()} - set(
        stage.writes
    )
    assert not undeclared, f"{name} wrote tables it does not declare: {undeclared}"
    assert stage.run(ctx) == run_id  # a finished run is reused


def test_every_stage_refuses_a_context_without_datasets_and_writes_nothing(lake_with_scores) -> None:
    lake, _ = lake_with_scores
    before = tree_digest(lake.root)
    for name in REGISTERED:
        params = {**base_params(name), **CURATION_PLANS.get(name, {})}
        with pytest.raises(UserError, match=rf"^stage {name}: no dataset given"):
            build_stage(name, params).plan(StageContext(lake, []))
    assert tree_digest(lake.root) == before


def test_the_attribute_stage_plans_without_side_effects(tmp_path: Path) -> None:
    from flows_testlake import records, tiny_model

    from storage import Lake
    from storage.ingest import ColumnMap, ingest_records, normalize

    train, targets = records(6, "t", 0), records(2, "q", 1)
    model = tiny_model(tmp_path / "model", [f"{r['prompt']}\n{r['response']}" for r in train])
    lake = Lake(tmp_path / "lake")
    ingest_records(lake, normalize(train, "tr", ColumnMap(), "t"), "tr", ColumnMap(), "t")
    ingest_records(lake, normalize(targets, "tg", ColumnMap(), "q"), "tg", ColumnMap(), "q")
    stage = build_stage(
        "attribute", {"model": str(model), "targets": "tg", "method": "identity", "shard_size": 4}
    )
    ctx = StageContext(lake, ["tr"], quiet=True)
    before = tree_digest(lake.root)
    spec = stage.plan(ctx)
    assert tree_digest(lake.root) == before
    assert stage.run(ctx) == spec.run_id
    assert len(lake.table("scores", "run_id = ?", [spec.run_id])) == 6 * 2


@pytest.mark.parametrize("name", REGISTERED)
def test_each_stage_has_a_generated_command_with_its_parameters(name: str) -> None:
    app = typer.Typer()
    stage_commands.register(app)
    result = CliRunner().invoke(app, [name.replace("_", "-"), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for f in STAGES[name].Params.fields():
        assert cli_names(f)[0] in result.output, (name, f.name)
    for flag in STAGES[name].dataset_flags:
        assert flag in result.output


def test_a_generated_command_runs_the_stage_and_reports(lake_with_scores) -> None:
    lake, _ = lake_with_scores
    app = typer.Typer()
    stage_commands.register(app)
    ran = CliRunner().invoke(
        app,
        [
            "reweight",
            "-d",
            TRAIN,
            "--groups",
            "{math: 2, code: 1}",
            "--clip-max",
            "3",
            "--lake",
            str(lake.root),
        ],
        env={"ASSAY_PREFECT": "0"},
    )
    assert ran.exit_code == 0, ran.output
    run_id = ran.output.split("influence_reweight run ")[1].split()[0]
    params = build_stage("influence_reweight", {}).Params.from_mapping(
        {k: v for k, v in json.loads(lake.require_run(run_id)["params"]).items() if k != "scores_run"}
    )
    assert params.groups == {"math": 2.0, "code": 1.0} and params.clip_max == 3.0
    weights = lake.table("weights", "run_id = ?", [run_id])
    assert weights["loss_weight"].max() <= 3.0 + 1e-9 and len(weights) == len(lake.examples(TRAIN))
    bad = CliRunner().invoke(app, ["mix", "-d", TRAIN, "--tau", "-1", "--lake", str(lake.root)])
    assert bad.exit_code != 0 and isinstance(bad.exception, UserError)
    assert str(bad.exception) == "--tau: expected a number in (0, 1000000], got -1.0"
