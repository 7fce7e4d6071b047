"""Recipes: the format, whole-recipe validation before anything runs, and `assay curate` (Prefect off)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from assay_testing import REPO, run_cli, tree_digest
from flows_testlake import TRAIN, make_lake, recipe

from flows.recipes import load_recipe, parse_recipe
from storage import Lake, UserError


def write(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def test_demo_recipe_is_valid_and_uses_registered_stages() -> None:
    spec = load_recipe(REPO / "recipes" / "demo.yaml")
    assert spec.name == "demo" and spec.datasets == ["demo_train"]
    assert [s.stage for s in spec.stages][-1] == "mix"
    assert spec.export is not None and spec.export.run == "mix"


def test_parse_fills_names_and_overrides_datasets() -> None:
    spec = parse_recipe(recipe(), datasets=["other"])
    assert spec.datasets == ["other"]
    assert [s.name for s in spec.stages] == ["influence_reweight", "mix"]
    assert spec.stages[1].params["weights_from"] == "influence_reweight"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": [{"stage": "no_such_stage"}]}, "stages[0].stage: unknown stage 'no_such_stage'"),
        (
            {"stages": [{"stage": "mix", "params": {"tau": -1}}]},
            "stages[0] (mix).params.tau: expected a number in (0, 1000000], got -1",
        ),
        ({"stages": [{"stage": "mix", "params": {"bogus": 1}}]}, "stages[0] (mix).params: unknown parameter"),
        ({"stages": [{"stage": "mix", "params": [1, 2]}]}, "stages[0] (mix).params: expected a mapping"),
        ({"stages": [{"stage": "mix", "extra": 1}]}, "stages[0].extra: unknown field"),
        ({"stages": [{"params": {}}]}, "stages[0].stage: missing"),
        (
            {"stages": [{"stage": "mix"}, {"stage": "mix"}]},
            "stages[1] (mix).name: 'mix' is used by an earlier",
        ),
        ({"stages": []}, "stages: expected a non-empty list"),
        ({"datasets": "  "}, "datasets: expected a non-empty list of distinct dataset names"),
        ({"datasets": []}, "datasets: expected a non-empty list"),
        ({"datasets": ["a", "a"]}, "datasets: expected a non-empty list of distinct dataset names"),
        ({"name": "bad name"}, "name: expected a name (letters, digits, _ . -)"),
        ({"name": "demo\n"}, "name: expected a name (letters, digits, _ . -)"),
        ({"export": {"format": "csv", "out": "x"}}, "export.format: expected one of jsonl, parquet, hf"),
        ({"export": {"format": "jsonl"}}, "export.out: missing"),
        ({"export": {"out": "x", "run": "nope"}}, "export.run: 'nope' is not a stage"),
        ({"export": {"out": "x", "materialise": "yes"}}, "export.materialise: expected true or false"),
        ({"colour": "blue"}, "colour: unknown field"),
    ],
)
def test_invalid_recipes_name_the_stage_and_field(change: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_recipe(recipe(**change), source="r.yaml")
    assert str(err.value).startswith("recipe r.yaml: ")
    assert message in str(err.value)


def test_missing_fields_and_bad_yaml(tmp_path: Path) -> None:
    doc = recipe()
    del doc["stages"]
    with pytest.raises(UserError, match="stages: missing"):
        parse_recipe(doc)
    with pytest.raises(UserError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_recipe(write(tmp_path / "bad.yaml", "name: x\nstages: [unclosed\n"))
    with pytest.raises(UserError, match="no such file"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(UserError, match="expected a mapping"):
        load_recipe(write(tmp_path / "list.yaml", "- a\n- b\n"))


def test_recipes_are_read_by_the_safe_loader(tmp_path: Path) -> None:
    # aliases (a "billion laughs" expands a small file), duplicate keys (PyYAML keeps the last one
    # silently) and Python tags are refused with the line they are on
    laughs = "name: x\na: &a [1, 1]\nb: &b [*a, *a]\nstages: [*b, *b]\n"
    with pytest.raises(UserError, match=r"laughs.yaml: line 2: .*alias|laughs.yaml: line 2: .*anchor"):
        load_recipe(write(tmp_path / "laughs.yaml", laughs))
    twice = "name: x\ndatasets: [a]\nname: y\nstages: []\n"
    with pytest.raises(UserError, match=r"twice.yaml: line 3: .*duplicate"):
        load_recipe(write(tmp_path / "twice.yaml", twice))
    with pytest.raises(UserError, match=r"tag.yaml: line 1"):
        load_recipe(write(tmp_path / "tag.yaml", "name: !!python/object:os.system x\n"))
    with pytest.raises(UserError, match="over the limit"):
        load_recipe(write(tmp_path / "big.yaml", "name: x\n# " + "a" * (1 << 20) + "\n"))


def test_cli_refuses_a_bad_recipe_and_writes_nothing(tmp_path: Path) -> None:
    lake, _ = make_lake(tmp_path / "lake")
    before = tree_digest(lake.root)
    bad = write(
        tmp_path / "bad.yaml",
        recipe(
            stages=[{"stage": "influence_reweight"}, {"stage": "mix", "params": {"schedule": "sometimes"}}]
        ),
    )
    result = run_cli("--lake", str(lake.root), "curate", str(bad), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "stages[1] (mix).params.schedule: expected one of constant, cooldown" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = run_cli(
        "--lake",
        str(lake.root),
        "curate",
        str(write(tmp_path / "ok.yaml", recipe())),
        "--dataset",
        "nope",
        cwd=tmp_path,
    )
    assert unknown.returncode == 2 and "unknown dataset 'nope'" in unknown.stderr
    assert tree_digest(lake.root) == before


def test_cli_runs_a_recipe_in_order_and_exports(tmp_path: Path) -> None:
    lake, scores_run = make_lake(tmp_path / "lake")
    path = write(tmp_path / "tiny.yaml", recipe(export={"out": "out/tiny", "format": "jsonl"}))
    (tmp_path / "out").mkdir()
    result = run_cli("--lake", str(lake.root), "curate", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = {r["method"]: r for r in Lake(lake.root).runs() if r["kind"] == "curate"}
    assert set(runs) == {"influence_reweight", "mix"} and all(
        r["status"] == "complete" for r in runs.values()
    )
    # each stage got the run ids of the ones before it
    assert json.loads(runs["influence_reweight"]["inputs"])["scores"] == scores_run
    assert json.loads(runs["mix"]["inputs"])["weights"] == runs["influence_reweight"]["run_id"]
    assert runs["mix"]["run_id"] in result.stdout
    exported = (tmp_path / "out" / "tiny" / "data" / "train.jsonl").read_text().splitlines()
    assert exported and all(json.loads(line)["dataset"] == TRAIN for line in exported)
    counted = run_cli(
        "--lake",
        str(lake.root),
        "sql",
        f"SELECT count(*) AS n FROM weights WHERE run_id = '{runs['mix']['run_id']}'",
        "--format",
        "csv",
        cwd=tmp_path,
    )
    assert counted.stdout.split() == ["n", "60"]
    again = run_cli("--lake", str(lake.root), "curate", str(path), cwd=tmp_path)  # a no-op rerun
    assert again.returncode == 0, again.stderr
    assert len([r for r in Lake(lake.root).runs() if r["kind"] == "curate"]) == 2


def test_unlearn_flow_passes_user_errors_through_before_writing(tmp_path: Path) -> None:
    from flows.unlearn import unlearn_flow

    lake, _ = make_lake(tmp_path / "lake")
    before = tree_digest(lake.root)
    with pytest.raises(UserError, match="not a Hugging Face model directory"):
        unlearn_flow.fn(
            str(tmp_path / "no-model"),
            TRAIN,
            str(tmp_path / "out"),
            lake_root=str(lake.root),
            forget_ids=["t0001"],
            method="ga",
        )
    with pytest.raises(UserError, match="method dmm needs scores"):
        unlearn_flow.fn(
            str(tmp_path / "no-model"),
            TRAIN,
            str(tmp_path / "out"),
            lake_root=str(lake.root),
            forget_ids=["t0001"],
        )
    with pytest.raises(UserError, match="unknown parameter 'no_such_knob'"):
        unlearn_flow.fn(
            str(tmp_path / "no-model"),
            TRAIN,
            str(tmp_path / "out"),
            lake_root=str(lake.root),
            forget_ids=["t0001"],
            settings={"no_such_knob": 1},
        )
    assert tree_digest(lake.root) == before
