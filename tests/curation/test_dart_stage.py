"""The `dart` stage and `assay dart`: replay and transformers backends, lake outputs, export, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from assay_testing import stage
from typer.testing import CliRunner

from curation.corpus import humaneval_records, math_problems
from curation.dart.replay import demo_replay_records, write_demo_replay
from curation.exporter import export_run
from flows.commands import dart as dart_commands
from flows.commands import stages as stage_commands
from storage import Lake, UserError
from storage.ingest import ColumnMap, ingest_records, normalize
from storage.stage import StageContext


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, Path, list[dict]]:
    """A lake with 10 math problems (levels 1-5) and 4 HumanEval problems, and a replay file for them."""
    root = tmp_path_factory.mktemp("dart-stage")
    rows = math_problems(2, seed=0) + humaneval_records()[:4]
    lake = Lake(root / "lake")
    ingest_records(lake, normalize(rows, "toy", ColumnMap(), "toy.jsonl"), "toy", ColumnMap(), "toy.jsonl")
    replay = write_demo_replay(lake.examples("toy"), root / "replay.jsonl", per_query=6, seed=1)
    return lake, replay, rows


def run_dart(lake: Lake, **params) -> str:
    return stage("dart")(StageContext(lake=lake, datasets=["toy"], quiet=True), params)


def test_demo_replay_candidates_are_labelled_truthfully(toy) -> None:
    lake, _, _ = toy
    rows = demo_replay_records(lake.examples("toy"), per_query=6, seed=1)
    assert len(rows) == 14 * 6 and {r["label_source"] for r in rows} == {"constructed"}
    lake_rows = demo_replay_records(lake.examples("toy"), per_query=6, seed=1)
    assert rows == lake_rows
    # the stage with verify: verify re-checks every label with the real verifiers
    run_id = run_dart(lake, strategy="vrt", n_per_query=6, replay=str(toy[1]), verify="verify")
    samples = lake.table("samples", "run_id = ?", [run_id]).sort_values(["query_id", "trial"])
    labels = pd.DataFrame(rows).sort_values(["query_id", "trial"])
    assert samples["correct"].tolist() == labels["correct"].tolist()
    assert set(samples.loc[samples["query_id"].str.startswith("HumanEval"), "verdict"]) <= {
        "pass",
        "fail",
        "truncated",
    }


def test_replay_prop2diff_writes_samples_curated_examples_weights_labels_and_exports(
    toy, tmp_path: Path
) -> None:
    lake, replay, _ = toy
    run_id = run_dart(lake, strategy="prop2diff", replay=str(replay), k_p=4, n_d=2, n_max=6, batch=2)
    samples = lake.table("samples", "run_id = ?", [run_id])
    assert set(samples["phase"]) == {"difficulty", "sample"} and set(samples["generator"]) == {"replay"}
    weights = lake.table("weights", "run_id = ?", [run_id])
    assert len(weights) == int(samples["kept"].sum()) > 0
    assert (weights["copies"] == 1).all()
    out_name = weights["dataset"].iloc[0]
    curated = lake.examples(out_name)
    assert set(curated["example_id"]) == set(weights["example_id"])
    meta = json.loads(curated["meta"].iloc[0])
    assert {"query_id", "trial", "source_dataset", "generator"} <= set(meta)
    labels = lake.table("labels", "run_id = ?", [run_id]).pivot_table(
        index="example_id", columns="name", values="value"
    )
    assert (labels["dart_kept"] <= labels["dart_target"]).all() and (labels["dart_trials"] <= 6).all()
    uncovered = labels.index[labels["dart_covered"] == 0].tolist()
    metrics = lake.table("metrics", "run_id = ?", [run_id]).set_index(["name", "key"])["value"]
    assert metrics[("uncovered", "all")] == len(uncovered)
    result = export_run(lake, run_id, tmp_path / "export", fmt="jsonl")
    records = [
        json.loads(line) for line in (tmp_path / "export" / "data" / "train.jsonl").read_text().splitlines()
    ]
    assert result.rows == len(weights) == len(records)
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)
    # the same parameters again: the same run, already complete
    assert run_dart(lake, strategy="prop2diff", replay=str(replay), k_p=4, n_d=2, n_max=6, batch=2) == run_id


def test_samples_of_a_run_can_be_replayed_and_curated_again(toy) -> None:
    lake, replay, _ = toy
    first = run_dart(lake, strategy="vrt", n_per_query=6, replay=str(replay))
    again = run_dart(lake, strategy="uniform", k_u=1, n_max=6, batch=1, replay=f"run:{first}")
    kept = lake.table("samples", "run_id = ? AND kept", [again])
    assert kept.groupby("query_id").size().max() == 1
    assert set(kept["query_id"]) == set(lake.table("samples", "run_id = ? AND correct", [first])["query_id"])


def test_transformers_backend_samples_every_query(toy, dart_tiny_model_dir: Path) -> None:
    lake, _, _ = toy
    run_id = run_dart(
        lake,
        strategy="vrt",
        n_per_query=2,
        generator="transformers",
        model=str(dart_tiny_model_dir),
        max_new_tokens=8,
        domains=["math"],
        limit=3,
    )
    samples = lake.table("samples", "run_id = ?", [run_id])
    assert len(samples) == 6 and set(samples["generator"]) == {"transformers"}
    assert set(samples["verdict"]) <= {"pass", "fail", "unknown", "error", "truncated", "timeout"}
    record = lake.run_record(run_id)
    assert record["model"].startswith(str(dart_tiny_model_dir.resolve()))


@pytest.mark.parametrize(
    "params",
    [
        {"strategy": "best-of-n"},
        {"k_p": 0},
        {"generator": "transformers"},
        {"generator": "openai", "model": "m"},
        {"verify": "maybe"},
        {"top_p": 1.5},
        {"n_d": 100, "n_max": 10},
        {"colour": "blue"},
        {"replay": "/nonexistent/replay.jsonl"},
        {"generator": "transformers", "model": "/nonexistent"},
        {"difficulty": "labels", "domains": ["poetry"]},
        {"output_dataset": "bad name!"},
    ],
)
def test_bad_parameters_are_user_errors_and_write_nothing(toy, params: dict) -> None:
    lake, replay, _ = toy
    before = len(lake.runs())
    with pytest.raises(UserError):
        run_dart(lake, **{"replay": str(replay), **params})
    assert len(lake.runs()) == before


def test_the_cli_runs_dart_and_writes_a_replay_file(toy, tmp_path: Path) -> None:
    lake, _, _ = toy
    app = typer.Typer()
    dart_commands.register(app)
    stage_commands.register(app)
    runner = CliRunner()
    out = tmp_path / "candidates.jsonl"
    made = runner.invoke(
        app, ["dart-replay", "-d", "toy", "--out", str(out), "--per-query", "3", "--lake", str(lake.root)]
    )
    assert made.exit_code == 0, made.output
    assert "42 candidates for 14 queries" in made.output
    ran = runner.invoke(
        app,
        [
            "dart",
            "-d",
            "toy",
            "--replay",
            str(out),
            "--strategy",
            "uniform",
            "--k-u",
            "1",
            "--n-max",
            "3",
            "--batch",
            "1",
            "--lake",
            str(lake.root),
        ],
    )
    assert ran.exit_code == 0, ran.output
    run_id = ran.output.split("dart run ")[1].split()[0]
    assert lake.require_run(run_id)["method"] == "dart"


def test_a_bad_option_exits_with_status_2_and_one_line(toy) -> None:
    lake, replay, _ = toy
    env = {**os.environ, "ASSAY_PREFECT": "0", "ASSAY_LAKE": str(lake.root)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "dart",
            "-d",
            "toy",
            "--replay",
            str(replay),
            "--strategy",
            "magic",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --strategy: expected one of vrt, uniform, prop2diff")
    )


def test_abstentions_are_never_kept_and_are_counted_in_the_lake(toy, tmp_path: Path) -> None:
    """A response without a clear final answer is `unknown`: not kept, counted per query and in total."""
    lake, _, rows = toy
    math = [r for r in rows if r["domain"] == "math"][:3]
    replay = tmp_path / "replay.jsonl"
    lines = []
    for r in math:
        lines.append(
            {"query_id": r["id"], "trial": 0, "response": f"So the answer is \\boxed{{{r['answer']}}}."}
        )
        # hedged: two candidate answers and no commitment
        lines.append(
            {"query_id": r["id"], "trial": 1, "response": "It could be 3 or it could be 7; I am not sure."}
        )
    replay.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    run_id = run_dart(lake, strategy="vrt", n_per_query=2, replay=str(replay), verify="verify")
    samples = lake.table("samples", "run_id = ?", [run_id]).set_index(["query_id", "trial"])
    for r in math:
        assert samples.loc[(r["id"], 0), "verdict"] == "pass" and samples.loc[(r["id"], 0), "kept"]
        assert samples.loc[(r["id"], 1), "verdict"] == "unknown" and not samples.loc[(r["id"], 1), "kept"]
    metrics = lake.table("metrics", "run_id = ? AND key = 'all'", [run_id]).set_index("name")["value"]
    assert metrics["abstained"] == 3 and metrics["kept"] == 3 and metrics["verdict_unknown"] == 3
    labels = lake.table("labels", "run_id = ? AND name = 'dart_abstained'", [run_id])
    assert sorted(labels["value"]) == [1.0, 1.0, 1.0]


def test_a_judge_verifier_needs_its_endpoint_before_anything_runs(toy) -> None:
    lake, replay, _ = toy
    before = len(lake.runs())
    with pytest.raises(UserError, match="verifier judge needs judge_endpoint and judge_model"):
        run_dart(lake, replay=str(replay), verifier="judge")
    with pytest.raises(UserError, match="no answer"):
        run_dart(
            lake,
            replay=str(replay),
            verifier="rule+judge",
            judge_endpoint="http://127.0.0.1:9",
            judge_model="m",
        )
    assert len(lake.runs()) == before
