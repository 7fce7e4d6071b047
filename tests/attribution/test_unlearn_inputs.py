"""Bad input to `assay unlearn` / run_unlearning: one clear line, exit status 2, nothing written."""

import pytest
import torch
from assay_testing import run_cli, tree_digest

from attribution.reference_model import build_model, build_tokenizer
from attribution.stages.unlearn import read_forget_file, run_unlearning
from curation.corpus import math_problems, write_jsonl
from storage import Lake, UserError
from storage.fingerprint import directory_fingerprint as model_fingerprint
from storage.ingest import ingest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlearn_inputs")
    records = math_problems(2, seed=0)
    tokenizer = build_tokenizer([r["prompt"] + "\n" + r["response"] for r in records], vocab_size=300)
    torch.manual_seed(0)
    model = build_model(
        tokenizer,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    lake = Lake(root / "lake")
    ingest(lake, write_jsonl(records, root / "train.jsonl"), "train")
    version = lake.dataset_version("train")
    ids = [r["id"] for r in records]

    def fake_scores(model_ref: str, datasets: dict) -> str:
        with lake.run(
            "attribute", "ekfac", params={"max_length": 64}, inputs={"datasets": datasets}, model=model_ref
        ) as run:
            import pandas as pd

            run.write("scores", pd.DataFrame({"train_id": ids, "target_id": ids, "score": 1.0}))
        return run.run_id

    good = fake_scores(f"{model_dir}@{model_fingerprint(model_dir)}", {"train": version})
    other_model = fake_scores(f"{root}/elsewhere@0123456789abcdef", {"train": version})
    old_version = fake_scores(f"{model_dir}@{model_fingerprint(model_dir)}", {"train": "000000000000"})
    return root, lake, model_dir, ids, {"good": good, "other_model": other_model, "old_version": old_version}


def cli(root, *args):
    return run_cli(
        "--lake",
        str(root / "lake"),
        "unlearn",
        "--model",
        str(root / "model"),
        "--train",
        "train",
        "--out",
        str(root / "out"),
        *args,
        cwd=root,
    )


@pytest.mark.parametrize("case", ["unknown_ids", "empty_file", "other_model"])
def test_cli_refuses_with_one_line_and_exit_2_writing_nothing(setup, case):
    root, lake, _, ids, runs = setup
    forget = root / f"{case}.txt"
    forget.write_text(
        {"unknown_ids": "nope-1\n" + ids[0] + "\n", "empty_file": "\n", "other_model": ids[0]}[case]
    )
    scores = runs["other_model"] if case == "other_model" else runs["good"]
    before = tree_digest(lake.root)
    result = cli(root, "--forget", str(forget), "--scores", scores)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert {
        "unknown_ids": "not in train: nope-1",
        "empty_file": "forget set is empty",
        "other_model": "computed for model",
    }[case] in lines[0]
    assert tree_digest(lake.root) == before
    assert not (root / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forget_ids": []}, "forget set is empty"),
        ({"forget_where": "difficulty = 99"}, "matches no example"),
        ({"forget_where": "difficulty >= 1"}, "nothing would remain"),
        ({"forget_ids": ["x"], "forget_where": "true"}, "give the forget set one way"),
        ({"scores": "old_version"}, "version 000000000000"),
        ({"scores": "attribute-ekfac-000000000000"}, "not found"),
        ({"scores": None}, "method dmm needs scores"),
        ({"method": "erase"}, "method: expected one of dmm, oracle, ga, gd, ga\\+gd, got 'erase'"),
        ({"method": "oracle"}, "assay_reference.json"),
    ],
)
def test_api_refuses_bad_input_before_writing(setup, kwargs, message):
    root, lake, model_dir, ids, runs = setup
    kwargs = dict(kwargs)
    scores = kwargs.pop("scores", "good")
    if "forget_ids" not in kwargs and "forget_where" not in kwargs:
        kwargs["forget_ids"] = [ids[0]]
    before = tree_digest(lake.root)
    with pytest.raises(UserError, match=message):
        run_unlearning(lake, model_dir, "train", root / "out", scores=runs.get(scores, scores), **kwargs)
    assert tree_digest(lake.root) == before
    assert not (root / "out").exists()


def test_forget_files_in_three_formats(tmp_path):
    (tmp_path / "a.txt").write_text("# ids\nx\ny\n\nx\n")
    (tmp_path / "b.json").write_text('["x", {"example_id": "y"}]')
    (tmp_path / "c.jsonl").write_text('{"id": "x"}\n"y"\n')
    for name in ("a.txt", "b.json", "c.jsonl"):
        assert read_forget_file(tmp_path / name) == ["x", "y"]
    (tmp_path / "d.json").write_text('{"x": 1}')
    with pytest.raises(UserError, match="JSON list"):
        read_forget_file(tmp_path / "d.json")
    with pytest.raises(UserError, match="no such file"):
        read_forget_file(tmp_path / "missing.txt")
