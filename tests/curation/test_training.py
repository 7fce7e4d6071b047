"""The trainer side of an export (curation/training.py): TRL's SFTTrainer and transformers' Trainer run on
exports of a Cooldown mix, in the schedule's order, with each example's loss multiplied by its loss_weight.
The model is the project's reference architecture built from a config with a locally trained tokenizer."""

from __future__ import annotations

import math
import re
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from assay_testing import stage
from flows_testlake import tiny_causal_lm

from attribution.reference_model import build_tokenizer
from curation import mixing
from curation.exporter import export_run
from curation.training import (
    ScheduleSampler,
    WeightedLossCollator,
    WeightedTrainer,
    encode_export,
    read_schedule,
    weighted_causal_lm_loss,
)
from storage import Lake
from storage.ingest import ColumnMap, ingest_records, normalize
from storage.stage import StageContext

trl = pytest.importorskip("trl")
from curation.training import WeightedSFTTrainer  # needs TRL

# 24 steps of 16: each Cooldown phase holds 192 draws. The sampler's per-step group counts are within one
# draw of their expectation (systematic sampling), so a phase's share is off by sd <= 0.5 / (16 sqrt(12))
# = 0.009: the 0.05 bound below is 5 sd.
BATCH, STEPS = 16, 24
SIZES = {"math": 36, "code": 8}  # p_code: 0.18 at tau 1, 0.42 at tau 5


def rows() -> list[dict]:
    """Conversations: math as one user turn, code with a system prompt."""
    out = [
        {
            "id": f"m{i}",
            "domain": "math",
            "messages": [
                {"role": "user", "content": f"What is {i} + {2 * i}?"},
                {"role": "assistant", "content": f"{i} + {2 * i} = {3 * i}. The answer is {3 * i}."},
            ],
        }
        for i in range(SIZES["math"])
    ]
    out += [
        {
            "id": f"c{i}",
            "domain": "code",
            "messages": [
                {"role": "system", "content": "Answer with Python code only."},
                {"role": "user", "content": f"Write triple_{i}."},
                {"role": "assistant", "content": f"def triple_{i}(x):\n    return 3 * x"},
            ],
        }
        for i in range(SIZES["code"])
    ]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("training")
    lake = Lake(root / "lake")
    records = rows()
    ingest_records(lake, normalize(records, "toy", ColumnMap(), "toy.jsonl"), "toy", ColumnMap(), "toy.jsonl")
    mix = stage("mix")(
        StageContext(lake, ["toy"], quiet=True), {"batch_size": BATCH, "steps": STEPS, "seed": 3}
    )
    materialised, per_example = root / "materialised", root / "per_example"
    export_run(lake, mix, materialised, style="prompt_completion", materialise=True)
    export_run(lake, mix, per_example, style="prompt_completion", fmt="parquet")
    export_run(lake, mix, root / "chat", style="chat", materialise=True, fmt="hf")
    texts = [f"{e['prompt']}\n{e['response']}" for e in lake.examples("toy").to_dict("records")]
    tokenizer = build_tokenizer(texts, vocab_size=400)
    return {"root": root, "materialised": materialised, "per_example": per_example, "tokenizer": tokenizer}


def tiny_model(tokenizer, seed: int = 0):
    return tiny_causal_lm(tokenizer, seed)


def sft_config(root: Path, **extra):
    return trl.SFTConfig(
        output_dir=str(root / "out"),
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
        **extra,
    )


def load_split(folder: Path, root: Path, split: str = "train") -> datasets.Dataset:
    return datasets.load_dataset(str(folder), split=split, cache_dir=str(root / "hf-cache"))


class Recorder:
    """Wraps a trainer's compute_loss to keep the input ids of every batch it trains on."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []

    def record(self, inputs: dict) -> None:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        self.batches.append([row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)])


def recording(cls: type, recorder: Recorder) -> type:
    class Recording(cls):
        def compute_loss(self, model, inputs, *args, **kwargs):
            recorder.record(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    return Recording


def shares(groups: pd.Series) -> pd.Series:
    return groups.value_counts(normalize=True).reindex(list(SIZES), fill_value=0.0)


def p_tau(tau: float) -> pd.Series:
    n = pd.Series(SIZES, dtype=float)
    return n ** (1 / tau) / (n ** (1 / tau)).sum()


# ---- the loss ------------------------------------------------------------------------------------------


def encoded_batch(tokenizer, texts: list[tuple[str, str]], weights: list[float]) -> dict:
    from attribution.lm_data import collate, encode_sft, pad_id

    items = [encode_sft(tokenizer, {"prompt": p, "response": r}, 64) for p, r in texts]
    batch = collate(items, pad_id(tokenizer))
    batch.pop("offsets")
    return {**batch, "loss_weight": torch.tensor(weights)}


TEXTS = [("What is 1 + 2?\n", "3."), ("Write f.\n", "def f():\n    return 1"), ("Say hi.\n", "hi there")]


def test_weighted_loss_is_the_models_loss_with_unit_weights_and_weights_each_examples_tokens(setup) -> None:
    tokenizer = setup["tokenizer"]
    model = tiny_model(tokenizer)
    batch = encoded_batch(tokenizer, TEXTS, [1.0, 1.0, 1.0])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    own = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    ones = weighted_causal_lm_loss(logits, batch["labels"], batch["loss_weight"])
    torch.testing.assert_close(ones, own)
    # By hand: each example alone gives its mean token loss and its scored-token count.
    weights = [0.5, 2.0, 0.0]
    per_example = []
    for text in TEXTS:
        alone = encoded_batch(tokenizer, [text], [1.0])
        n = int((alone["labels"][:, 1:] != -100).sum())
        loss = model(
            input_ids=alone["input_ids"], attention_mask=alone["attention_mask"], labels=alone["labels"]
        ).loss
        per_example.append((loss.item() * n, n))
    expected = sum(w * s for w, (s, _) in zip(weights, per_example, strict=True)) / sum(
        n for _, n in per_example
    )
    got = weighted_causal_lm_loss(logits, batch["labels"], torch.tensor(weights))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_the_collator_masks_zero_weight_examples_and_passes_the_weights() -> None:
    def base(examples):
        return {"labels": torch.tensor([e["labels"] for e in examples])}

    collate = WeightedLossCollator(base)
    batch = collate(
        [{"labels": [5, 6], "loss_weight": 0.0}, {"labels": [7, 8], "loss_weight": 1.5}, {"labels": [9, 1]}]
    )
    assert batch["labels"].tolist() == [[-100, -100], [7, 8], [9, 1]]
    assert batch["loss_weight"].tolist() == [0.0, 1.5, 1.0]


def gradients(trainer, model, batch: dict) -> list[torch.Tensor]:
    model.zero_grad()
    trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()}).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_zero_weight_adds_no_gradient(trainer, model, rows_: list[dict]) -> None:
    """rows_[2] weighs 0: the gradient equals the gradient without it (and differs when it weighs 1)."""
    collate = trainer.data_collator
    with_it = gradients(trainer, model, collate([rows_[0], rows_[1], {**rows_[2], "loss_weight": 0.0}]))
    without = gradients(trainer, model, collate([rows_[0], rows_[1]]))
    counted = gradients(trainer, model, collate([rows_[0], rows_[1], {**rows_[2], "loss_weight": 1.0}]))
    for a, b in zip(with_it, without, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(counted, without, strict=True))


def test_a_zero_weight_example_contributes_no_gradient_in_either_trainer(setup) -> None:
    tokenizer, root = setup["tokenizer"], setup["root"]
    train = load_split(setup["materialised"], root)
    model = tiny_model(tokenizer)
    sft = WeightedSFTTrainer(
        model=model, args=sft_config(root, max_steps=1), train_dataset=train, processing_class=tokenizer
    )
    prepared = [
        {"input_ids": r["input_ids"], "labels": r["labels"], "loss_weight": r["loss_weight"]}
        for r in sft.train_dataset.select(range(3))
    ]
    assert_zero_weight_adds_no_gradient(sft, model, prepared)

    encoded = encode_export(train.select(range(3)), tokenizer, max_length=128)
    model = tiny_model(tokenizer)
    plain = WeightedTrainer(
        model=model,
        args=sft_config(root, max_steps=1),
        train_dataset=encoded,
        processing_class=tokenizer,
    )
    assert_zero_weight_adds_no_gradient(plain, model, [dict(r) for r in encoded])


# ---- the schedule ---------------------------------------------------------------------------------------


def phase_shares(groups: list[str], steps: list[int], phases: np.ndarray) -> dict[int, pd.Series]:
    frame = pd.DataFrame({"group": groups, "phase": phases[np.asarray(steps)]})
    return {k: shares(part["group"]) for k, part in frame.groupby("phase")}


def test_trl_sft_trainer_trains_on_the_materialised_prompt_completion_export_in_its_order(setup) -> None:
    tokenizer, root, folder = setup["tokenizer"], setup["root"], setup["materialised"]
    train = load_split(folder, root)
    assert {"prompt", "completion", "loss_weight", "step"} <= set(train.column_names)
    assert "weight" not in train.column_names
    recorder = Recorder()
    steps = int(max(train["step"])) + 1
    trainer = recording(WeightedSFTTrainer, recorder)(
        model=tiny_model(tokenizer),
        args=sft_config(root, max_steps=steps),
        train_dataset=train,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == steps and math.isfinite(result.training_loss)
    # The batches are the file's rows, in the file's order, one mix step per training step.
    consumed = [ids for batch in recorder.batches for ids in batch]
    assert consumed == [list(ids) for ids in trainer.train_dataset["input_ids"]]
    schedule = read_schedule(folder / "mixture_schedule.csv")
    phases = mixing.schedule_phases(
        pd.read_csv(folder / "mixture_schedule.csv").drop_duplicates("step")["tau"]
    )
    got = phase_shares(train["group"], train["step"], phases)
    assert len(schedule) == steps and sorted(got) == [0, 1]
    for phase, tau in ((0, 5.0), (1, 1.0)):
        assert (got[phase] - p_tau(tau)).abs().max() < 0.05, (phase, got[phase].to_dict())


def test_the_schedule_sampler_draws_an_unmaterialised_export_by_the_schedule(setup) -> None:
    tokenizer, root, folder = setup["tokenizer"], setup["root"], setup["per_example"]
    train = load_split(folder, root)
    assert "step" not in train.column_names and len(train) == sum(SIZES.values())
    sampler = ScheduleSampler.from_export(folder, batch_size=BATCH, seed=11)
    schedule = read_schedule(folder / "mixture_schedule.csv")
    # rows stand in their group's pool as often as their copies say (the mix's draws)
    pool = np.repeat(np.arange(len(train)), train["copies"])
    expected = mixing.sample_steps(
        np.asarray(train["group"])[pool], schedule[["code", "math"]], BATCH, seed=11
    )
    expected["index"] = pool[expected["index"].to_numpy()]
    assert not set(expected["index"]) & {i for i, c in enumerate(train["copies"]) if c == 0}
    assert list(sampler) == expected["index"].tolist() and sampler.steps == len(schedule)

    recorder = Recorder()
    trainer = recording(WeightedSFTTrainer, recorder)(
        model=tiny_model(tokenizer),
        args=sft_config(root, max_steps=sampler.steps),
        train_dataset=train,
        processing_class=tokenizer,
        train_sampler=sampler,
    )
    trainer.train()
    rows_ids = [list(ids) for ids in trainer.train_dataset["input_ids"]]
    consumed = [ids for batch in recorder.batches for ids in batch]
    assert consumed == [rows_ids[i] for i in list(sampler)]
    phases = mixing.schedule_phases(
        pd.read_csv(folder / "mixture_schedule.csv").drop_duplicates("step")["tau"]
    )
    got = phase_shares([train["group"][i] for i in sampler], expected["step"].tolist(), phases)
    for phase, tau in ((0, 5.0), (1, 1.0)):
        assert (got[phase] - p_tau(tau)).abs().max() < 0.05, (phase, got[phase].to_dict())
    with pytest.raises(ValueError, match="materialised"):
        ScheduleSampler.from_export(setup["materialised"], batch_size=BATCH)


def test_the_plain_trainer_trains_on_an_encoded_export_in_order(setup) -> None:
    tokenizer, root = setup["tokenizer"], setup["root"]
    train = load_split(setup["materialised"], root)
    encoded = encode_export(train, tokenizer, max_length=128)
    recorder = Recorder()
    trainer = recording(WeightedTrainer, recorder)(
        model=tiny_model(tokenizer),
        args=sft_config(root, max_steps=4),
        train_dataset=encoded,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 4 and math.isfinite(result.training_loss)
    consumed = [ids for batch in recorder.batches for ids in batch]
    assert consumed == [list(ids) for ids in encoded["input_ids"][: 4 * BATCH]]


def test_settings_that_would_break_the_weights_or_the_order_are_refused(setup) -> None:
    tokenizer, root = setup["tokenizer"], setup["root"]
    train = load_split(setup["materialised"], root)
    for extra in ({"packing": True, "max_length": 64}, {"shuffle_dataset": True}, {"loss_type": "dft"}):
        with pytest.raises(ValueError, match="cannot apply loss weights"):
            WeightedSFTTrainer(
                model=tiny_model(tokenizer),
                args=sft_config(root, **extra),
                train_dataset=train,
                processing_class=tokenizer,
            )
    sampler = ScheduleSampler(["a", "b", "a"], pd.DataFrame({"a": [0.5], "b": [0.5]}), batch_size=2)
    with pytest.raises(ValueError, match="sampler indexes 3 rows"):
        WeightedSFTTrainer(
            model=tiny_model(tokenizer),
            args=sft_config(root, max_steps=1),
            train_dataset=train,
            processing_class=tokenizer,
            train_sampler=sampler,
        )
    with pytest.raises(ValueError, match="not in the schedule"):
        ScheduleSampler(["a", "c"], pd.DataFrame({"a": [1.0]}), batch_size=2)


def test_trl_trains_on_the_chat_export_through_the_chat_template(setup) -> None:
    tokenizer, root = setup["tokenizer"], setup["root"]
    train = datasets.load_from_disk(str(root / "chat"))["train"]
    code = next(m for m in train["messages"] if m[0]["role"] == "system")
    assert code[0]["content"] == "Answer with Python code only."
    recorder = Recorder()
    trainer = recording(WeightedSFTTrainer, recorder)(
        model=tiny_model(tokenizer),
        args=sft_config(root, max_steps=2),
        train_dataset=train,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)
    first = tokenizer.apply_chat_template(train["messages"][0], tokenize=True)
    first = first if isinstance(first, list) else first["input_ids"]  # a BatchEncoding in transformers 5
    assert recorder.batches[0][0] == list(first)  # the first row of the file, rendered by the template


def test_rows_trl_would_drop_for_length_are_refused_by_name(setup) -> None:
    """TRL drops rows whose trained tokens all fall beyond max_length (a long prompt kept from the start):
    on an export that would silently remove a curated example and shift the training order."""
    tokenizer, root = setup["tokenizer"], setup["root"]
    train = load_split(setup["materialised"], root).select(range(6))
    long_prompt = train[2]["prompt"] * 60
    rows = [{**r, "prompt": long_prompt} if i == 2 else r for i, r in enumerate(train)]
    edited = datasets.Dataset.from_list(rows)
    assert len(tokenizer(long_prompt)["input_ids"]) > 128  # the prompt alone fills max_length
    with pytest.raises(
        ValueError,
        match=r"dropped 1 of 6 rows .*max_length=128 \(first: example "
        + re.escape(repr(rows[2]["example_id"])),
    ):
        WeightedSFTTrainer(
            model=tiny_model(tokenizer),
            args=sft_config(root, max_steps=1, max_length=128),
            train_dataset=edited,
            processing_class=tokenizer,
        )
    # The same rows within max_length train as they are.
    trainer = WeightedSFTTrainer(
        model=tiny_model(tokenizer),
        args=sft_config(root, max_steps=1, max_length=128),
        train_dataset=train,
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == 6
