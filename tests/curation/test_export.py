"""Export: records in three styles with copies and loss_weight kept apart, the training order of a Cooldown
mix in the exported FILE, the dataset card, and `assay export` round trips through datasets and pandas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from assay_testing import stage, tree_digest
from typer.testing import CliRunner

from curation import export, mixing
from curation.exporter import export_run
from flows.commands.export import register
from storage import Lake, UserError
from storage.ingest import ColumnMap, ingest_records, normalize
from storage.stage import StageContext

# ---- records --------------------------------------------------------------------------------------------


def toy_examples() -> pd.DataFrame:
    """As the lake holds them: prompt / response always, messages with a system prompt and two turns."""
    return pd.DataFrame(
        {
            "dataset": ["d"] * 4,
            "example_id": ["a", "b", "c", "z"],
            "prompt": ["1+1?", "2+2?", "hi", "3+3?"],
            "response": ["2", "4", "hello", "6"],
            "messages": [
                None,
                np.array([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]),
                json.dumps(
                    [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hey"},
                        {"role": "user", "content": "again"},
                        {"role": "assistant", "content": "hello"},
                    ]
                ),
                None,
            ],
        }
    )


def toy_weights() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["d"] * 4,
            "example_id": ["a", "b", "c", "z"],
            "copies": [3, 0, 2, 1],
            "loss_weight": [0.5, 1.0, 2.0, 0.0],
        }
    )


def test_chat_records_keep_the_conversation_and_the_two_channels_apart() -> None:
    rec = export.build_records(toy_examples(), toy_weights(), pd.Series(["x", "y", "z", "x"]), style="chat")
    assert rec["example_id"].tolist() == ["a", "c", "z"]  # b has 0 copies; z's loss weight 0 is kept
    assert rec["messages"][0] == [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    assert [m["role"] for m in rec["messages"][1]] == ["system", "user", "assistant", "user", "assistant"]
    assert rec["copies"].tolist() == [3, 2, 1] and rec["loss_weight"].tolist() == [0.5, 2.0, 0.0]
    assert "weight" not in rec.columns and rec["group"].tolist() == ["x", "z", "x"]


def test_prompt_completion_and_text_records_flatten_the_conversation_like_lm_data() -> None:
    from attribution.lm_data import encode_sft

    rec = export.build_records(toy_examples(), toy_weights(), style="prompt_completion")
    assert list(rec.columns[:2]) == ["prompt", "completion"]
    assert rec.loc[0, "prompt"] == "1+1?\n" and rec.loc[0, "completion"] == "2"
    # The whole conversation before the last answer, contents one per line: the system prompt stays.
    assert rec.loc[1, "prompt"] == "be brief\nhi\nhey\nagain\n" and rec.loc[1, "completion"] == "hello"
    text = export.build_records(toy_examples(), toy_weights(), style="text")
    assert text["text"].tolist() == [p + c for p, c in zip(rec["prompt"], rec["completion"], strict=True)]
    # The text the attribution encoding trains on for the same conversation (no chat template).
    from attribution.reference_model import build_tokenizer

    tokenizer = build_tokenizer(["be brief hi hey again hello 1+1? 2"], vocab_size=300)
    tokenizer.chat_template = None
    conversation = json.loads(toy_examples().loc[2, "messages"])
    ids = encode_sft(tokenizer, {"messages": conversation}, 64)["input_ids"].tolist()
    assert tokenizer.decode(ids) == rec.loc[1, "prompt"] + rec.loc[1, "completion"] + tokenizer.eos_token
    assert export.style_name("prompt_response") == "prompt_completion"  # the old name still works
    with pytest.raises(ValueError):
        export.build_records(toy_examples(), toy_weights(), style="alpaca")


def test_training_order_follows_the_draws_and_numbers_each_examples_copies() -> None:
    rec = export.build_records(toy_examples(), toy_weights())
    draws = pd.DataFrame(
        {
            "step": [1, 0, 0, 1, 2, 2],
            "slot": [0, 1, 0, 1, 0, 1],
            "dataset": "d",
            "example_id": ["c", "a", "z", "a", "a", "c"],
        }
    )
    rows = export.training_order(rec, draws, phase_of_step=np.array([0, 0, 1]))
    assert rows["example_id"].tolist() == ["z", "a", "c", "a", "a", "c"]
    assert rows["step"].tolist() == [0, 0, 1, 1, 2, 2] and rows["slot"].tolist() == [0, 1, 0, 1, 0, 1]
    assert rows["copy"].tolist() == [0, 0, 0, 1, 2, 1] and rows["phase"].tolist() == [0, 0, 0, 0, 1, 1]
    assert rows.loc[rows["example_id"] == "c", "loss_weight"].tolist() == [2.0, 2.0]
    assert "copies" not in rows.columns  # each row is one draw
    unknown = draws.assign(example_id=["b", "a", "z", "a", "a", "c"])
    with pytest.raises(ValueError, match="not in the set"):
        export.training_order(rec, unknown)


def test_without_draws_the_order_is_a_seeded_shuffle_of_every_copy() -> None:
    rec = export.build_records(toy_examples(), toy_weights())
    rows = export.training_order(rec, None, seed=4)
    assert rows["example_id"].value_counts().to_dict() == {"a": 3, "c": 2, "z": 1}
    assert rows["step"].tolist() == list(range(6)) and set(rows["phase"]) == {0}
    pd.testing.assert_frame_equal(rows, export.training_order(rec, None, seed=4))


def test_the_card_summary_uses_the_one_effective_epochs_definition() -> None:
    weights = toy_weights()
    groups = pd.Series(["x", "x", "y", "y"])
    summary = export.group_summary(groups, weights)
    by_definition = mixing.effective_epochs(groups.to_numpy(), weights["copies"].to_numpy())
    pd.testing.assert_series_equal(summary["effective_epochs"], by_definition["effective_epochs"])
    # By hand: x = a (3 copies, weight 0.5) and b (0 copies); y = c (2 copies, weight 2) and z (1, weight 0).
    assert summary.loc["x"].to_dict() == pytest.approx(
        {
            "examples": 2,
            "kept": 1,
            "draws": 3,
            "effective_epochs": 1.5,
            "loss_weight_per_draw": 0.5,
            "loss_share": 1.5 / 5.5,
        }
    )
    assert summary.loc["y", "loss_weight_per_draw"] == pytest.approx(4 / 3)
    assert [export.size_category(n) for n in (0, 999, 1000, 12_345, 5_000_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
    ]


# ---- a lake, a Cooldown mix and its export --------------------------------------------------------------

TEMPLATES = {
    "math": lambda i: (
        f"What is {i} * {i + 3}?",
        f"{i} * {i + 3} = {i * (i + 3)}. The answer is {i * (i + 3)}.",
    ),
    "code": lambda i: (f"Write a function sq{i}(x).", f"def sq{i}(x):\n    return x * x + {i}"),
    "proof": lambda i: (
        f"Show that {i} + 1 > {i}.",
        f"Since 1 > 0, adding {i} to both sides gives {i} + 1 > {i}.",
    ),
    "chat": lambda i: (f"Say hello to user {i}.", f"Hello, user {i}!"),
}


def make_lake(root: Path, sizes: dict[str, int], name: str = "toy") -> Lake:
    rows = []
    for domain, n in sizes.items():
        for i in range(n):
            prompt, response = TEMPLATES[domain](i)
            rows.append({"id": f"{domain}-{i}", "domain": domain, "prompt": prompt, "response": response})
    lake = Lake(root)
    ingest_records(
        lake, normalize(rows, name, ColumnMap(), f"{name}.jsonl"), name, ColumnMap(), f"{name}.jsonl"
    )
    return lake


def p_tau(sizes: dict[str, int], tau: float) -> pd.Series:
    """p_i(tau) = n_i^(1/tau) / sum_j n_j^(1/tau), written out (not the module's function)."""
    n = pd.Series(sizes, dtype=float)
    return (n ** (1 / tau) / (n ** (1 / tau)).sum()).sort_index()


COOLDOWN_MIXES = [
    # The issue's case: 60 math / 10 code, default batch 16, Cooldown 5 -> 1 at the midpoint.
    ({"math": 60, "code": 10}, {"epochs": 4.0}),
    ({"math": 300, "code": 40, "proof": 12}, {"batch_size": 32, "epochs": 2.0}),
    ({"math": 20, "code": 20, "proof": 5, "chat": 3}, {"batch_size": 24, "tau": 3.0, "epochs": 10.0}),
    ({"math": 500, "code": 25}, {"batch_size": 64, "tau": 10.0, "tau_end": 2.0}),
]


@pytest.mark.parametrize("sizes,params", COOLDOWN_MIXES)
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_cooldown_mix_exported_materialised_has_the_schedules_shares_in_each_half_of_the_file(
    tmp_path: Path, sizes: dict[str, int], params: dict, fmt: str
) -> None:
    lake = make_lake(tmp_path / "lake", sizes)
    params = {"schedule": "cooldown", "switch": 0.5, **params}
    batch = params.get("batch_size", 16)
    # An even number of steps, so that the switch falls between the two halves of the file.
    params["steps"] = 2 * math.ceil(params.pop("epochs", 1.0) * sum(sizes.values()) / (2 * batch))
    run_id = stage("mix")(StageContext(lake, ["toy"], quiet=True), params)
    export_run(lake, run_id, tmp_path / "out", fmt=fmt, materialise=True)

    data = tmp_path / "out" / "data"
    read = (lambda p: pd.read_json(p, lines=True)) if fmt == "jsonl" else pd.read_parquet
    rows = read(data / f"train.{fmt}")
    assert len(rows) == params["steps"] * batch
    assert rows["step"].is_monotonic_increasing
    half = len(rows) // 2
    first = rows["group"].iloc[:half].value_counts(normalize=True).reindex(sorted(sizes), fill_value=0.0)
    second = rows["group"].iloc[half:].value_counts(normalize=True).reindex(sorted(sizes), fill_value=0.0)
    start, end = p_tau(sizes, params.get("tau", 5.0)), p_tau(sizes, params.get("tau_end", 1.0))
    assert (first - start).abs().max() < 0.05, (first.to_dict(), start.to_dict())
    assert (second - end).abs().max() < 0.05, (second.to_dict(), end.to_dict())
    # The per-phase files hold the same rows, split at the switch.
    phase_0, phase_1 = read(data / f"phase_0.{fmt}"), read(data / f"phase_1.{fmt}")
    assert len(phase_0) == len(phase_1) == half
    assert phase_0["example_id"].tolist() == rows["example_id"].iloc[:half].tolist()
    assert phase_1["example_id"].tolist() == rows["example_id"].iloc[half:].tolist()
    # Each example appears as many times as the run's copies say.
    weights = lake.table("weights", "run_id = ?", [run_id]).set_index("example_id")["copies"]
    counts = rows["example_id"].value_counts()
    assert counts.to_dict() == weights[weights > 0].to_dict()


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """A group, so the command is called by name as in `assay export`."""

    return app


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, str]:
    lake = make_lake(tmp_path_factory.mktemp("lake"), {"math": 90, "code": 10})
    run_id = stage("mix")(StageContext(lake, ["toy"], quiet=True), {"epochs": 4, "batch_size": 10})
    return lake, run_id


def test_mix_stage_writes_weights_schedule_draws_and_metrics(mixed: tuple[Lake, str]) -> None:
    lake, run_id = mixed
    weights = lake.table("weights", "run_id = ?", [run_id])
    assert len(weights) == 100 and weights["copies"].sum() == 40 * 10 and set(weights["loss_weight"]) == {1.0}
    code = weights[weights["example_id"].str.startswith("code")]["copies"].mean()
    math_ = weights[weights["example_id"].str.startswith("math")]["copies"].mean()
    assert code > math_  # the small group is upsampled
    schedule = lake.table("mixture_schedule", "run_id = ?", [run_id])
    assert len(schedule) == 40 * 2
    assert set(schedule.loc[schedule["step"] < 20, "tau"]) == {5.0}
    assert set(schedule.loc[schedule["step"] >= 20, "tau"]) == {1.0}
    draws = lake.table("mixture_draws", "run_id = ?", [run_id])
    assert len(draws) == 400 and draws.groupby("step").size().eq(10).all()
    assert (
        draws["example_id"].value_counts().to_dict()
        == weights.set_index("example_id")["copies"][weights.set_index("example_id")["copies"] > 0].to_dict()
    )
    metrics = lake.table("metrics", "run_id = ?", [run_id])
    epochs = metrics[metrics["name"] == "effective_epochs"].set_index("key")["value"]
    assert epochs.to_dict() == pytest.approx(
        {
            "code": weights.loc[weights["example_id"].str.startswith("code"), "copies"].sum() / 10,
            "math": weights.loc[weights["example_id"].str.startswith("math"), "copies"].sum() / 90,
        }
    )


def test_mix_stage_rejects_bad_parameters_before_writing(mixed: tuple[Lake, str]) -> None:
    lake, _ = mixed
    mix = stage("mix")
    ctx = StageContext(lake, ["toy"], quiet=True)
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


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_every_format_loads_with_datasets_both_ways_and_carries_the_card(
    mixed: tuple[Lake, str], tmp_path: Path, fmt: str
) -> None:
    import datasets

    lake, run_id = mixed
    out = tmp_path / "new" / "nested" / "export"  # parent folders are created
    result = CliRunner().invoke(
        cli(),
        [
            "export",
            run_id,
            "--format",
            fmt,
            "--out",
            str(out),
            "--style",
            "prompt_completion",
            "--materialise",
            "--language",
            "en",
            "--lake",
            str(lake.root),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "training order of the mix (40 steps)" in result.output and "effective_epochs" in result.output
    whole = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(whole) == {"train", "phase_0", "phase_1"}
    train = whole["train"]
    assert train.num_rows == 400
    assert {"prompt", "completion", "loss_weight", "step", "slot", "phase", "copy", "group"} <= set(
        train.column_names
    )
    assert "weight" not in train.column_names and "response" not in train.column_names
    assert train["step"] == sorted(train["step"])
    if fmt == "hf":
        assert datasets.load_from_disk(str(out))["train"]["example_id"] == train["example_id"]
    else:
        first = out / "data" / f"train.{fmt}"
        builder = "json" if fmt == "jsonl" else "parquet"
        direct = datasets.load_dataset(
            builder, data_files=str(first), split="train", cache_dir=str(tmp_path / "c2")
        )
        assert direct["example_id"] == train["example_id"]

    from huggingface_hub import DatasetCard

    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["text-generation"]
    assert meta["language"] == ["en"] and "license" not in meta and meta["source_datasets"] == ["toy"]
    assert {c["split"] for c in meta["configs"][0]["data_files"]} == {"train", "phase_0", "phase_1"}
    assert f"Exported by assay from run `{run_id}`" in card.text and "ingest-examples-" in card.text
    assert "without shuffling" in card.text and "loss_weight" in card.text
    assert "| code | 10 | 10 |" in card.text
    schedule = pd.read_csv(out / "mixture_schedule.csv")
    assert list(schedule.columns) == ["step", "group", "tau", "probability"]
    np.testing.assert_allclose(schedule.groupby("step")["probability"].sum(), 1.0)


def test_an_unmaterialised_export_has_one_row_per_example_with_copies_and_loss_weight(
    mixed: tuple[Lake, str], tmp_path: Path
) -> None:
    lake, run_id = mixed
    result = export_run(lake, run_id, tmp_path / "out", style="text")
    rows = pd.read_json(tmp_path / "out" / "data" / "train.jsonl", lines=True)
    weights = lake.table("weights", "run_id = ?", [run_id])
    kept = weights[weights["copies"] > 0].set_index("example_id")
    assert len(rows) == result.rows == len(kept) and "text" in rows.columns and "step" not in rows.columns
    assert rows.set_index("example_id")["copies"].to_dict() == kept["copies"].to_dict()
    assert not (tmp_path / "out" / "data" / "phase_0.jsonl").exists()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "ScheduleSampler.from_export" in card
    # One definition of effective epochs: the mix's metrics (what `assay mix` prints) and the card's table.
    metrics = lake.table("metrics", "run_id = ? AND name = 'effective_epochs'", [run_id]).set_index("key")
    np.testing.assert_allclose(
        result.summary["effective_epochs"], metrics["value"].reindex(result.summary.index)
    )
    assert "| code | 10 | 10 |" in card


def test_export_refuses_bad_requests_and_writes_nothing(mixed: tuple[Lake, str], tmp_path: Path) -> None:
    lake, run_id = mixed
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (tmp_path / "a-file").write_text("not a folder")
    before = tree_digest(tmp_path)
    for kwargs, match in (
        ({"out": out}, "--force"),
        ({"out": tmp_path / "other", "run_id": "curate-mix-000000000000"}, "not found"),
        ({"out": tmp_path / "other", "fmt": "csv"}, "--format"),
        ({"out": tmp_path / "other", "style": "alpaca"}, "record style"),
        ({"out": tmp_path / "other", "languages": ["en\nlicense: mit"]}, "--language"),
        ({"out": tmp_path / "a-file" / "out"}, "is not a folder"),
    ):
        with pytest.raises(UserError, match=match):
            export_run(lake, kwargs.pop("run_id", run_id), **kwargs)
    # --force replaces only a folder assay wrote: the user's own folder is refused even then.
    with pytest.raises(UserError, match="assay did not write that folder"):
        export_run(lake, run_id, out, force=True)
    for protected in (lake.root, lake.root / "tables", lake.root.parent):
        with pytest.raises(UserError, match="refused"):
            export_run(lake, run_id, protected, force=True)
    assert tree_digest(tmp_path) == before
    mine = tmp_path / "export"
    export_run(lake, run_id, mine)
    with pytest.raises(UserError, match="--force"):
        export_run(lake, run_id, mine, fmt="parquet")
    export_run(lake, run_id, mine, fmt="parquet", force=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert (mine / "data" / "train.parquet").exists() and not (mine / "data" / "train.jsonl").exists()
    # no temporary folders left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "export", "taken"]


def test_mix_builds_on_earlier_labels_and_weights_composing_each_channel_once(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake", {"math": 90, "code": 10})
    examples = lake.examples("toy")
    version = lake.dataset_version("toy")
    ids = examples["example_id"]
    with lake.run(kind="curate", method="ppp", params={}, inputs={"datasets": {"toy": version}}) as run:
        run.write(
            "labels",
            pd.DataFrame(
                {
                    "dataset": "toy",
                    "example_id": ids,
                    "name": "ppp_cluster",
                    "value": np.arange(100) % 3 * 1.0,
                }
            ),
        )
        labels_run = run.run_id
    # An earlier stage: the first 20 math examples weigh 0 (out), the rest 2.5, and c0..c4 are drawn twice.
    dropped = {f"math-{i}" for i in range(20)}
    twice = {f"code-{i}" for i in range(5)}
    with lake.run(kind="curate", method="filter", params={}, inputs={"datasets": {"toy": version}}) as run:
        run.write(
            "weights",
            pd.DataFrame(
                {
                    "dataset": "toy",
                    "example_id": ids,
                    "copies": [2 if e in twice else 1 for e in ids],
                    "loss_weight": [0.0 if e in dropped else 2.5 for e in ids],
                }
            ),
        )
        weights_run = run.run_id
    ctx = StageContext(lake, ["toy"], previous={"ppp": labels_run, "filter": weights_run}, quiet=True)
    run_id = stage("mix")(
        ctx, {"by": "label:ppp_cluster", "schedule": "constant", "tau": 2.0, "epochs": 2, "batch_size": 8}
    )
    weights = lake.table("weights", "run_id = ?", [run_id]).set_index("example_id")
    assert not (set(weights.index) & dropped) and len(weights) == 80  # the pool's distinct examples
    assert weights["copies"].sum() == math.ceil(2 * 85 / 8) * 8  # 85 pool draws (5 counted twice)
    assert set(weights["loss_weight"]) == {2.5}  # passed through, never multiplied by the copies
    assert set(lake.table("mixture_schedule", "run_id = ?", [run_id])["group_name"]) == {"0", "1", "2"}
    assert json.loads(lake.run_record(run_id)["inputs"]) == {
        "datasets": {"toy": version},
        "labels": labels_run,
        "weights": weights_run,
    }
    result = export_run(lake, run_id, tmp_path / "out")
    assert set(result.summary.index) == {"0", "1", "2"} and result.rows == int((weights["copies"] > 0).sum())
    exported = pd.read_json(tmp_path / "out" / "data" / "train.jsonl", lines=True)
    assert set(exported["loss_weight"]) == {2.5}


def test_scalarization_acts_on_the_loss_weights_and_draws_proportionally(tmp_path: Path) -> None:
    sizes = {"math": 80, "code": 20}
    lake = make_lake(tmp_path / "lake", sizes)
    run_id = stage("mix")(
        StageContext(lake, ["toy"], quiet=True),
        {"method": "scalarization", "schedule": "constant", "tau": 5.0, "epochs": 2, "batch_size": 20},
    )
    weights = lake.table("weights", "run_id = ?", [run_id])
    group = weights["example_id"].str.split("-").str[0]
    ratio = p_tau(sizes, 5.0) / p_tau(sizes, 1.0)
    np.testing.assert_allclose(weights["loss_weight"], group.map(ratio), rtol=1e-12)
    assert weights["copies"].sum() == 200 and (weights["copies"] == 2).all()  # proportional: 2 epochs each
    schedule = lake.table("mixture_schedule", "run_id = ?", [run_id])
    assert set(schedule["tau"]) == {1.0}  # what the sampler draws from
