"""Export: record building, the dataset card, and `assay export` round trips through datasets and pandas."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from assay_testing import stage
from typer.testing import CliRunner

from curation import export
from curation.exporter import export_run
from flows.commands.export import register
from storage import Lake, UserError
from storage.ingest import ColumnMap, ingest_records, normalize
from storage.stage import StageContext


def toy_examples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["d"] * 3,
            "example_id": ["a", "b", "c"],
            "prompt": ["1+1?", "2+2?", None],
            "response": ["2", "4", None],
            "messages": [
                None,
                np.array([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]),
                json.dumps(
                    [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                    ]
                ),
            ],
        }
    )


def toy_weights() -> pd.DataFrame:
    return pd.DataFrame(
        {"dataset": ["d"] * 3, "example_id": ["a", "b", "c"], "weight": [0.5, 1.0, 2.0], "copies": [3, 0, 2]}
    )


def test_chat_records_come_from_messages_or_prompt_and_response() -> None:
    rec = export.build_records(toy_examples(), toy_weights(), pd.Series(["x", "y", "z"]), style="chat")
    assert rec["example_id"].tolist() == ["a", "c"]  # b has zero copies
    assert rec["messages"][0] == [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    assert rec["messages"][1][0] == {"role": "system", "content": "be brief"}
    # Unmaterialised: one row per example, weight = curation weight x copies.
    assert rec["weight"].tolist() == [1.5, 4.0] and rec["copies"].tolist() == [3, 2]
    assert rec["group"].tolist() == ["x", "z"]


def test_prompt_response_records_fall_back_to_the_conversation() -> None:
    rec = export.build_records(toy_examples(), toy_weights(), style="prompt_response")
    assert rec.loc[1, "prompt"] == "be brief\nhi" and rec.loc[1, "response"] == "hello"
    assert rec.loc[0, "prompt"] == "1+1?" and "messages" not in rec.columns
    with pytest.raises(ValueError):
        export.build_records(toy_examples(), toy_weights(), style="alpaca")


def test_materialised_records_repeat_each_example_by_its_copies() -> None:
    rec = export.build_records(toy_examples(), toy_weights(), materialise=True, seed=4)
    assert len(rec) == 5
    assert rec["example_id"].value_counts().to_dict() == {"a": 3, "c": 2}
    assert sorted(rec.loc[rec["example_id"] == "a", "copy"]) == [0, 1, 2]
    assert set(rec.loc[rec["example_id"] == "c", "weight"]) == {2.0}
    again = export.build_records(toy_examples(), toy_weights(), materialise=True, seed=4)
    pd.testing.assert_frame_equal(rec, again)


def test_group_summary_counts_before_and_after() -> None:
    groups = pd.Series(["x", "x", "y"])
    rec = export.build_records(toy_examples(), toy_weights(), groups)
    summary = export.group_summary(groups, rec, materialised=False)
    assert summary.loc["x"].to_dict() == {
        "examples_before": 2,
        "examples_after": 1,
        "rows": 1,
        "draws": 3,
        "weight_sum": 1.5,
        "effective_epochs": 1.5,
    }
    assert summary.loc["y", "draws"] == 2


def make_lake(root: Path) -> Lake:
    rng = random.Random(0)
    rows = []
    for i in range(90):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append(
            {"id": f"m{i}", "domain": "math", "prompt": f"What is {a} + {b}?", "response": str(a + b)}
        )
    for i in range(10):
        rows.append(
            {
                "id": f"c{i}",
                "domain": "code",
                "prompt": f"Write f{i}.",
                "response": f"def f{i}(x):\n    return x * {i}",
            }
        )
    lake = Lake(root)
    ingest_records(lake, normalize(rows, "toy", ColumnMap(), "toy.jsonl"), "toy", ColumnMap(), "toy.jsonl")
    return lake


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, str]:
    lake = make_lake(tmp_path_factory.mktemp("lake"))
    run_id = stage("mix")(
        StageContext(lake=lake, datasets=["toy"], quiet=True),
        {"schedule": "cooldown", "epochs": 4, "batch_size": 10},
    )
    return lake, run_id


def test_mix_stage_writes_weights_schedule_and_metrics(mixed: tuple[Lake, str]) -> None:
    lake, run_id = mixed
    weights = lake.table("weights", "run_id = ?", [run_id])
    assert len(weights) == 100 and weights["copies"].sum() == 40 * 10
    code = weights[weights["example_id"].str.startswith("c")]["copies"].mean()
    math_ = weights[weights["example_id"].str.startswith("m")]["copies"].mean()
    assert code > math_  # the small group is upsampled
    schedule = lake.table("mixture_schedule", "run_id = ?", [run_id])
    assert len(schedule) == 40 * 2
    assert set(schedule.loc[schedule["step"] < 20, "tau"]) == {5.0}
    assert set(schedule.loc[schedule["step"] >= 20, "tau"]) == {1.0}
    epochs = lake.table("metrics", "run_id = ? AND name = 'effective_epochs'", [run_id])
    assert set(epochs["key"]) == {"code", "math"}


def test_mix_stage_rejects_bad_parameters_before_writing(mixed: tuple[Lake, str]) -> None:
    lake, _ = mixed
    mix = stage("mix")
    ctx = StageContext(lake=lake, datasets=["toy"], quiet=True)
    before = len(lake.runs())
    for bad in (
        {"by": "colour"},
        {"tau": -1},
        {"method": "scalarization"},
        {"schedule": "step"},
        {"by": "label:ppp_cluster"},
        {"weights_from": "dart"},
        {"batchsize": 3},
    ):
        with pytest.raises(UserError):
            mix(ctx, bad)
    assert len(lake.runs()) == before


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """A group, so the command is called by name as in `assay export`."""

    return app


def load_with_datasets(path: Path, builder: str, cache: Path) -> pd.DataFrame:
    import datasets

    ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache))
    return ds.to_pandas()


@pytest.mark.parametrize("fmt,builder", [("jsonl", "json"), ("parquet", "parquet")])
def test_export_round_trips_through_datasets_and_pandas(
    mixed: tuple[Lake, str], tmp_path: Path, fmt: str, builder: str
) -> None:
    lake, run_id = mixed
    out = tmp_path / "export"
    result = CliRunner().invoke(
        cli(), ["export", run_id, "--format", fmt, "--out", str(out), "--lake", str(lake.root)]
    )
    assert result.exit_code == 0, result.output
    data = out / "data" / f"train.{fmt}"
    by_pandas = pd.read_json(data, lines=True) if fmt == "jsonl" else pd.read_parquet(data)
    by_datasets = load_with_datasets(data, builder, tmp_path / "cache")
    weights = lake.table("weights", "run_id = ?", [run_id])
    kept = weights[weights["copies"] > 0]
    for frame in (by_pandas, by_datasets):
        assert len(frame) == len(kept)
        assert {"messages", "example_id", "dataset", "group", "weight", "copies"} <= set(frame.columns)
        first = frame.sort_values("example_id").iloc[0]
        messages = [dict(m) for m in first["messages"]]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert dict(zip(frame["example_id"], frame["copies"], strict=True)) == dict(
            zip(kept["example_id"], kept["copies"], strict=True)
        )
    # The card's front matter names the data files, so the folder itself loads too.
    import datasets

    whole = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache2"))
    assert whole.num_rows == len(kept) and "messages" in whole.column_names
    card = (out / "README.md").read_text()
    assert run_id in card and "ingest-examples-" in card  # lineage reaches the dataset version
    assert "| code | 10 | 10 |" in card
    schedule = pd.read_csv(out / "mixture_schedule.csv")
    assert list(schedule.columns) == ["step", "group", "tau", "probability"]
    np.testing.assert_allclose(schedule.groupby("step")["probability"].sum(), 1.0)


def test_materialised_prompt_response_export_and_hf_format(mixed: tuple[Lake, str], tmp_path: Path) -> None:
    import datasets

    lake, run_id = mixed
    out = tmp_path / "hf"
    result = CliRunner().invoke(
        cli(),
        [
            "export",
            run_id,
            "--format",
            "hf",
            "--out",
            str(out),
            "--materialise",
            "--prompt-response",
            "--lake",
            str(lake.root),
        ],
    )
    assert result.exit_code == 0, result.output
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 400 and {"prompt", "response", "weight", "copy"} <= set(ds.column_names)
    assert (out / "README.md").exists() and (out / "mixture_schedule.csv").exists()


def test_export_refuses_to_overwrite_without_force(mixed: tuple[Lake, str], tmp_path: Path) -> None:
    lake, run_id = mixed
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--force"):
        export_run(lake, run_id, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_run(lake, run_id, out, fmt="parquet", force=True)
    assert not (out / "keep.txt").exists() and (out / "data" / "train.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary folders left behind
    with pytest.raises(UserError, match="not found"):
        export_run(lake, "curate-mix-000000000000", tmp_path / "other")
    with pytest.raises(UserError, match="--format"):
        export_run(lake, run_id, tmp_path / "other", fmt="csv")
    assert not (tmp_path / "other").exists()


def test_mix_stage_groups_by_an_earlier_label_and_builds_on_earlier_weights(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    examples = lake.examples("toy")
    version = lake.dataset_version("toy")
    # An earlier stage's cluster labels (3 clusters) and weights that drop the first 20 math examples.
    with lake.run(kind="curate", method="ppp", params={}, inputs={"datasets": {"toy": version}}) as run:
        run.write(
            "labels",
            pd.DataFrame(
                {
                    "dataset": "toy",
                    "example_id": examples["example_id"],
                    "name": "ppp_cluster",
                    "value": np.arange(100) % 3 * 1.0,
                }
            ),
        )
        labels_run = run.run_id
    dropped = {f"m{i}" for i in range(20)}
    with lake.run(kind="curate", method="filter", params={}, inputs={"datasets": {"toy": version}}) as run:
        run.write(
            "weights",
            pd.DataFrame(
                {
                    "dataset": "toy",
                    "example_id": examples["example_id"],
                    "weight": [0.0 if e in dropped else 2.0 for e in examples["example_id"]],
                    "copies": 1,
                }
            ),
        )
        weights_run = run.run_id
    ctx = StageContext(
        lake=lake, datasets=["toy"], previous={"ppp": labels_run, "filter": weights_run}, quiet=True
    )
    run_id = stage("mix")(
        ctx, {"by": "label:ppp_cluster", "schedule": "constant", "tau": 2.0, "epochs": 2, "batch_size": 8}
    )
    weights = lake.table("weights", "run_id = ?", [run_id]).set_index("example_id")
    assert (weights.loc[sorted(dropped), "copies"] == 0).all()
    kept = weights.drop(index=sorted(dropped))
    assert kept["copies"].sum() == 20 * 8 and set(kept.loc[kept["copies"] > 0, "weight"]) == {2.0}
    schedule = lake.table("mixture_schedule", "run_id = ?", [run_id])
    assert set(schedule["group_name"]) == {"0", "1", "2"}
    record = lake.run_record(run_id)
    assert json.loads(record["inputs"]) == {
        "datasets": {"toy": version},
        "labels": labels_run,
        "weights": weights_run,
    }
    # Export groups by the same labels.
    result = export_run(lake, run_id, tmp_path / "out")
    assert set(result.summary.index) == {"0", "1", "2"} and result.rows == int((kept["copies"] > 0).sum())
