"""Stages `ppp` and `presto` and their commands: lake outputs, ladders, reruns, user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from assay_testing import stage
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from curation.corpus import humaneval_records, math_problems
from curation.dart.replay import write_demo_replay
from curation.stages.presto import PrestoParams, dart_rungs, influence_rungs, merge_small_rungs, orient
from flows.commands.stages import register
from storage import Lake, UserError
from storage.ingest import ColumnMap, ingest_records, normalize
from storage.stage import StageContext


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, Path]:
    """30 math problems (levels 1-5) and 20 HumanEval problems, a DART run over them, attribution scores."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cluster-stages")
    rows = math_problems(6, seed=0) + humaneval_records()[:20]
    lake = Lake(root / "lake")
    ingest_records(lake, normalize(rows, "toy", ColumnMap(), "toy.jsonl"), "toy", ColumnMap(), "toy.jsonl")
    replay = write_demo_replay(lake.examples("toy"), root / "replay.jsonl", per_query=8, seed=1)
    run_stage(lake, "dart", strategy="vrt", n_per_query=8, replay=str(replay))
    # scores of a made-up attribution run: code examples help, math ones do not
    ids = lake.examples("toy")["example_id"].tolist()
    with lake.run(kind="attribute", method="test-scores", params={}, inputs={"toy": "v"}) as run:
        run.write(
            "scores",
            pd.DataFrame(
                {
                    "train_id": ids * 2,
                    "target_id": ["t1"] * len(ids) + ["t2"] * len(ids),
                    "score": [
                        (1.0 if i.startswith("HumanEval") else 0.0) + 0.01 * k for k, i in enumerate(ids * 2)
                    ],
                }
            ),
        )
    return lake, root


def run_stage(lake: Lake, name: str, **params) -> str:
    with threadpool_limits(1):
        return stage(name)(StageContext(lake=lake, datasets=["toy"], quiet=True), params)


def labels(lake: Lake, run_id: str, name: str) -> pd.Series:
    frame = lake.table("labels", "run_id = ? AND name = ?", [run_id, name])
    return frame.set_index("example_id")["value"]


def test_ppp_stage_writes_a_cluster_per_example_and_separates_domains(toy) -> None:
    lake, _ = toy
    run_id = run_stage(lake, "ppp")
    clusters = labels(lake, run_id, "ppp_cluster")
    examples = lake.examples("toy").set_index("example_id")
    assert len(clusters) == len(examples) and clusters.nunique() >= 2
    domain = examples.loc[clusters.index, "domain"]
    purity = pd.crosstab(clusters, domain).max(axis=1) / pd.crosstab(clusters, domain).sum(axis=1)
    assert (purity >= 0.9).all()
    metrics = lake.table("metrics", "run_id = ?", [run_id]).set_index(["name", "key"])["value"]
    assert metrics[("clusters", "all")] == clusters.nunique()
    assert run_stage(lake, "ppp") == run_id  # identical parameters: the same, complete run


def test_presto_on_the_dart_ladder(toy) -> None:
    lake, _ = toy
    run_id = run_stage(lake, "presto", ladder="dart", cv=3, n_components=8)
    p_rare = labels(lake, run_id, "presto_p_rare")
    rung = labels(lake, run_id, "presto_rung")
    assert len(p_rare) == len(lake.examples("toy"))
    assert p_rare.between(1e-8 * (1 - 1e-6), 1.0).all()
    samples = lake.table("samples")
    assert set(rung.index) == set(samples["query_id"])
    # the rare rung's examples get a higher probability of it than the others, on average
    rare = rung.max()
    assert p_rare[rung.index[rung == rare]].mean() > p_rare[rung.index[rung < rare]].mean()
    metrics = lake.table("metrics", "run_id = ?", [run_id]).set_index(["name", "key"])["value"]
    assert metrics[("with_rung", "all")] == len(rung)


def test_presto_on_influence_quantile_bins(toy) -> None:
    lake, _ = toy
    run_id = run_stage(lake, "presto", ladder="influence", quantiles=[0.5, 0.8], cv=3, n_components=8)
    p_rare = labels(lake, run_id, "presto_p_rare")
    code = p_rare.index.str.startswith("HumanEval")
    assert p_rare[code].mean() > p_rare[~code].mean()  # the helpful (rare, top) bin is all code


def test_ladders_from_samples_and_scores() -> None:
    samples = pd.DataFrame(
        {"query_id": list("aaaabbbbccccdddd"), "correct": [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1]}
    )
    assert dart_rungs(samples).to_dict() == {"a": 0, "b": 1, "c": 2, "d": 3}
    scores = pd.DataFrame({"train_id": [f"e{i}" for i in range(10)], "score": np.arange(10.0)})
    assert influence_rungs(scores, [0.5, 0.8]).tolist() == [0] * 5 + [1] * 3 + [2] * 2
    y, names = orient(np.array([0, 0, 0, 1, 2, 3, 3, 3, 3]), ["a", "b", "c", "d"], "auto")
    assert y.tolist() == [3, 3, 3, 2, 1, 0, 0, 0, 0] and names == ["d", "c", "b", "a"]
    # rung a (1 example) joins b; d is empty and disappears
    y, names = merge_small_rungs(np.array([0, 1, 1, 1, 2, 2, 2, 2]), ["a", "b", "c", "d"], 3)
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and names == ["a + b", "c"]


@pytest.mark.parametrize(
    ("stage_name", "params"),
    [
        ("presto", {"ladder": "votes"}),
        ("presto", {"colour": "blue"}),
        ("presto", {"quantiles": [0.8, 0.5]}),
        ("presto", {"ladder": "dart", "cv": 40}),
        ("presto", {"ladder": "dart", "cv": 8, "merge_small": False}),
        ("presto", {"ladder": "label:nothing_like_this"}),
        ("presto", {"ladder": "dart", "source_run": "no-such-run"}),
        ("presto", {"rare": "middle"}),
        ("ppp", {"model": "/nonexistent/model"}),
        ("ppp", {"covariance_type": "tied"}),
        ("ppp", {"min_agreement": 2}),
    ],
)
def test_bad_parameters_are_user_errors_and_write_nothing(toy, stage_name: str, params: dict) -> None:
    lake, _ = toy
    before = len(lake.runs())
    with pytest.raises(UserError):
        run_stage(lake, stage_name, **params)
    assert len(lake.runs()) == before


def test_the_commands(toy) -> None:
    lake, _ = toy
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    ran = runner.invoke(app, ["ppp", "-d", "toy", "--lake", str(lake.root)])
    assert ran.exit_code == 0, ran.output
    assert "clusters" in ran.output
    ran = runner.invoke(
        app,
        [
            "presto",
            "-d",
            "toy",
            "--ladder",
            "influence",
            "--quantiles",
            "0.5,0.8",
            "--cv",
            "3",
            "--n-components",
            "8",
            "--lake",
            str(lake.root),
        ],
    )
    assert ran.exit_code == 0, ran.output
    assert "highest P(rare)" in ran.output
    shorthand = PrestoParams(ladder="label:difficulty_band:run-1")
    assert (shorthand.ladder, shorthand.source_run) == ("label:difficulty_band", "run-1")
    assert (PrestoParams(ladder="dart").ladder, PrestoParams(ladder="dart").source_run) == ("dart", "auto")
    with pytest.raises(UserError):
        PrestoParams(ladder="label")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["presto", "-d", "toy", "--ladder", "votes"],
            "error: --ladder: expected dart, influence or label:NAME",
        ),
        (["presto", "-d", "toy", "--device", "tpu"], "error: --device 'tpu': expected cpu, cuda or cuda:N"),
        (["ppp", "-d", "toy", "--device", "tpu"], "error: --device 'tpu': expected cpu, cuda or cuda:N"),
    ],
)
def test_a_bad_option_exits_with_status_2_and_one_line(toy, argv, message) -> None:
    lake, _ = toy
    env = {**os.environ, "ASSAY_PREFECT": "0", "ASSAY_LAKE": str(lake.root)}
    before = sorted(p.relative_to(lake.root) for p in lake.root.rglob("*"))
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(message)
    assert sorted(p.relative_to(lake.root) for p in lake.root.rglob("*")) == before
