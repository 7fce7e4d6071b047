"""Adversarial review of issues 15-22 (trust in the output): each test is a defect found with held-out data
shapes, asserting what the user receives (exported rows, files on disk, CLI exit and output)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from assay_testing import run_cli, stage, tree_digest
from flows_testlake import TRAIN, make_lake, scores_frame, tiny_causal_lm

from curation.exporter import export_run
from storage import Lake
from storage.ingest import ColumnMap, ingest_records, normalize
from storage.stage import StageContext


def p_tau(sizes: dict[str, int], tau: float) -> pd.Series:
    """p_i(tau) = n_i^(1/tau) / sum_j n_j^(1/tau), written out."""
    n = pd.Series(sizes, dtype=float)
    return (n ** (1 / tau) / (n ** (1 / tau)).sum()).sort_index()


def unequal_lake(root: Path, sizes: dict[str, int]) -> Lake:
    """TRAIN with very unequal domains (prompt / response rows, difficulty 1-5) and an attribution run of
    random scores on 6 targets of each domain (a fixture: no model)."""
    rows = [
        {
            "id": f"{d}{i}",
            "domain": d,
            "difficulty": float(1 + i % 5),
            "prompt": f"{d} question {i}?",
            "response": f"{d} answer {i}.",
        }
        for d, n in sizes.items()
        for i in range(n)
    ]
    targets = [
        {"id": f"t{d}{i}", "domain": d, "prompt": f"target {d} {i}?", "response": "ok"}
        for d in sizes
        for i in range(6)
    ]
    lake = Lake(root)
    for name, records in ((TRAIN, rows), ("targets", targets)):
        ingest_records(lake, normalize(records, name, ColumnMap(), "f.jsonl"), name, ColumnMap(), "f.jsonl")
    scores = scores_frame([r["id"] for r in rows], [t["id"] for t in targets], seed=5)
    inputs = {"datasets": {TRAIN: lake.dataset_version(TRAIN)}}
    with lake.run("attribute", "fixture", params={}, inputs=inputs) as run:
        run.write("scores", scores)
    return lake


def halves(groups: pd.Series) -> tuple[pd.Series, pd.Series]:
    half = len(groups) // 2
    return (
        groups.iloc[:half].value_counts(normalize=True).sort_index(),
        groups.iloc[half:].value_counts(normalize=True).sort_index(),
    )


# ---- #16 exports ------------------------------------------------------------------------------------------


def test_a_cooldown_mix_followed_by_a_loss_weight_stage_keeps_its_training_order_in_the_export(
    tmp_path: Path,
) -> None:
    """A loss-weight stage acts on loss_weight only and passes the copies (and so the mix's draws) through,
    yet the materialised export of such a recipe is a seeded shuffle: the Cooldown is lost again."""
    sizes = {"math": 80, "code": 10}
    lake = unequal_lake(tmp_path / "lake", sizes)
    mix = stage("mix")(
        StageContext(lake, [TRAIN], quiet=True), {"batch_size": 10, "steps": 40, "tau": 5.0, "tau_end": 1.0}
    )
    ctx = StageContext(lake, [TRAIN], previous={"mix": mix}, quiet=True)
    reweight = stage("influence_reweight")(
        ctx, {"scores_run": "latest", "channel": "loss_weight", "weights_from": "mix"}
    )
    export_run(lake, reweight, tmp_path / "out", materialise=True)
    rows = pd.read_json(tmp_path / "out" / "data" / "train.jsonl", lines=True)
    assert len(rows) == 400
    first, second = halves(rows["group"])
    assert (first - p_tau(sizes, 5.0)).abs().max() < 0.05, first.to_dict()
    assert (second - p_tau(sizes, 1.0)).abs().max() < 0.05, second.to_dict()


def test_the_schedule_sampler_keeps_the_within_group_proportions_of_copies(tmp_path: Path) -> None:
    """Influence as copies, then a mix: the mix draws an example in proportion to its copies, but
    ScheduleSampler.from_export (the card's way to train on an unmaterialised export) draws uniformly within
    a group, so the influence reweighting disappears from training."""
    from curation.training import ScheduleSampler

    lake = unequal_lake(tmp_path / "lake", {"math": 80, "code": 10})
    reweight = stage("influence_reweight")(
        StageContext(lake, [TRAIN], quiet=True),
        {"scores_run": "latest", "channel": "copies", "temperature": 0.5},
    )
    ctx = StageContext(lake, [TRAIN], previous={"influence_reweight": reweight}, quiet=True)
    mix = stage("mix")(ctx, {"batch_size": 10, "steps": 40, "weights_from": "influence_reweight"})
    export_run(lake, mix, tmp_path / "out", fmt="parquet")
    rows = pd.read_parquet(tmp_path / "out" / "data" / "train.parquet")
    prior = lake.table("weights", "run_id = ?", [reweight]).set_index("example_id")["copies"]
    rows["prior"] = rows["example_id"].map(prior).to_numpy()
    counts = np.zeros(len(rows))
    for seed in range(20):
        counts += np.bincount(
            list(ScheduleSampler.from_export(tmp_path / "out", 10, seed=seed)), minlength=len(rows)
        )
    rows["sampled"] = counts / 20
    math_rows = rows[rows["group"] == "math"]  # within one group: the schedule fixes the group's share
    by_prior = math_rows.groupby("prior")[["copies", "sampled"]].mean()
    low, high = by_prior.index.min(), by_prior.index.max()
    assert high >= 2 * low  # the reweighting gave some examples several copies
    # What the mix itself drew (the export's copies) grows with the prior copies; the sampler must too.
    assert by_prior.loc[high, "copies"] > 1.5 * by_prior.loc[low, "copies"]
    assert by_prior.loc[high, "sampled"] > 1.5 * by_prior.loc[low, "sampled"], by_prior.to_dict()


def test_an_hf_export_still_loads_with_load_dataset_after_datasets_cached_a_map_beside_it(
    tmp_path: Path,
) -> None:
    """The card's data_files for hf are `train/*.arrow`, which also matches the cache files that `datasets`
    writes beside a load_from_disk dataset (every TRL SFTTrainer run does a .map): load_dataset(folder) then
    returns the rows twice (or fails when the cached columns differ)."""
    import datasets

    lake, _ = make_lake(tmp_path / "lake", n_train=30)
    mix = stage("mix")(StageContext(lake, [TRAIN], quiet=True), {"batch_size": 5, "steps": 6})
    out = tmp_path / "out"
    export_run(lake, mix, out, fmt="hf", materialise=True)
    train = datasets.load_from_disk(str(out))["train"]
    train.map(lambda row: row)  # what any preprocessing does; datasets caches it next to the data
    again = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert again["train"].num_rows == train.num_rows == 30


def test_a_recipe_export_accepts_every_record_style_that_assay_export_takes(tmp_path: Path) -> None:
    """`assay export --style` takes chat | prompt_completion | text; a recipe's export.style refuses the
    last two (it still lists the old name prompt_response)."""
    from flows.recipes import parse_recipe

    for style in ("prompt_completion", "text"):
        doc = {
            "name": "r",
            "datasets": [TRAIN],
            "stages": [{"stage": "mix"}],
            "export": {"out": str(tmp_path / "x"), "style": style},
        }
        assert parse_recipe(doc).export.style in (style,)


# ---- #18 output policy ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("project")
    lake, _ = make_lake(root / "lake")
    answers = [
        {"id": f"a{i}", "domain": "math", "prompt": f"{i}+1?", "response": str(i + 1), "answer": str(i + 1)}
        for i in range(3)
    ]
    ingest_records(
        lake, normalize(answers, "answers", ColumnMap(), "a.jsonl"), "answers", ColumnMap(), "a.jsonl"
    )
    run_id = stage("mix")(StageContext(lake, [TRAIN], quiet=True), {"epochs": 1})
    (root / ".assay").mkdir()
    return root, run_id


def user_paths(root: Path) -> dict[str, str]:
    """Paths a user might type by mistake, each over something the command should not replace."""
    (root / "notes.txt").write_text("the user's notes")
    if not (root / "link.jsonl").is_symlink():
        (root / "link.jsonl").symlink_to("notes.txt")
    if not (root / "pipe").exists():
        os.mkfifo(root / "pipe")
    return {
        "the lake's catalog": "lake/catalog.duckdb",
        "a symlink": "link.jsonl",
        "a FIFO": "pipe",
        "the user's file, no --force": "notes.txt",
    }


CASES = [
    "the lake's catalog",
    "a symlink",
    "a FIFO",
    "the user's file, no --force",
]


@pytest.mark.parametrize("case", CASES)
def test_report_out_follows_the_output_policy(project: tuple[Path, str], case: str) -> None:
    """`assay report --out` writes with its own atomic replace: it overwrites the lake's catalog, a
    symlink, a FIFO or any file of the user's, without --force, exit 0."""
    root, run_id = project
    out = user_paths(root)[case]
    before = tree_digest(root)
    result = run_cli("--lake", "lake", "report", run_id, "--out", out, cwd=root)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (
        result.stdout,
        result.stderr,
    )
    assert tree_digest(root) == before


@pytest.mark.parametrize("case", CASES)
def test_dart_replay_out_follows_the_output_policy(project: tuple[Path, str], case: str) -> None:
    """`assay dart-replay --out` replaces whatever is there (the lake's catalog, a symlink, a user file)."""
    root, _ = project
    out = user_paths(root)[case]
    before = tree_digest(root)
    result = run_cli("--lake", "lake", "dart-replay", "-d", "answers", "--out", out, cwd=root)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (
        result.stdout,
        result.stderr,
    )
    assert tree_digest(root) == before


def test_curate_refuses_its_export_out_before_any_stage_runs(project: tuple[Path, str]) -> None:
    """`assay curate RECIPE --out lake/x`: every stage runs and writes its runs, then the export is refused
    (exit 2): the refusal should come first and leave the lake as it was."""
    root, _ = project
    recipe = root / "r.yaml"
    recipe.write_text(f"name: r\ndatasets: [{TRAIN}]\nstages:\n  - stage: mix\n    params: {{steps: 7}}\n")
    before = tree_digest(root / "lake")
    result = run_cli("--lake", "lake", "curate", str(recipe), "--out", "lake/exported", cwd=root)
    assert result.returncode == 2, result.stderr
    assert tree_digest(root / "lake") == before


def test_an_export_out_path_with_a_newline_is_refused_in_one_line(project: tuple[Path, str]) -> None:
    """A folder name with a newline (a pasted path) is written, and the success message spans two lines
    (issue 18 refuses names ending in a newline for datasets and recipes; --out was left out)."""
    root, run_id = project
    before = tree_digest(root)
    result = run_cli("--lake", "lake", "export", run_id, "--out", "exports/bad\nname", cwd=root)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stdout
    assert tree_digest(root) == before


# ---- #17 verifiers --------------------------------------------------------------------------------------

# (response, gold): each response does not commit to the gold value, yet the rule verifier passes it, and
# `assay dart --verify verify` keeps it (5 of 5 kept in a replay run).
NOT_A_COMMITMENT = {
    "an inequality: 'or more'": ("The answer is 5 or more.", "5"),
    "an inequality: 'or less'": ("The answer is 2 or less.", "2"),
    "an inequality in a closing claim": ("Therefore, there are 5 or fewer subsets.", "5"),
    "a hedge: 'or so'": ("The answer is 5 or so.", "5"),
    "a box retracted after it": (r"So we get \boxed{5}. No, that's incorrect: it should be 7.", "5"),
    "a box replaced after it": (r"\boxed{2}... Instead, the right count is 4.", "2"),
    "a box inside a question": (r"Could the answer be \boxed{5}?", "5"),
    "an answer line that asks": ("The answer is 5?", "5"),
}


@pytest.mark.parametrize("case", sorted(NOT_A_COMMITMENT))
def test_the_math_verifier_does_not_pass_a_response_that_does_not_commit_to_the_gold(case: str) -> None:
    from curation.verify.math import check_answer

    response, gold = NOT_A_COMMITMENT[case]
    verdict = check_answer(response, gold, in_process=True)
    assert verdict.verdict != "pass", verdict


def test_a_candidate_that_raises_stop_iteration_does_not_pass_tests_that_map_over_it() -> None:
    """The candidate's exception is rebuilt in the checker by its builtin name; StopIteration is a builtin
    Exception, and raised inside map()/filter() it ends the iteration, so `all(map(...))` is True."""
    from curation.verify.code import check_response
    from curation.verify.sandbox import Limits

    limits = Limits(wall_s=120.0, cpu_s=2.0, memory_mb=512, max_procs=8, max_output_bytes=20_000)
    prompt = 'def double(n):\n    """Return 2 * n."""\n'
    tests = {
        "all(map)": "def check(candidate):\n    assert all(map(lambda n: candidate(n) == 2 * n, [1, 2, 3]))\n",
        "filter": "def check(candidate):\n"
        "    assert list(filter(lambda n: candidate(n) != 2 * n, [1, 2, 3])) == []\n",
    }
    honest = "```python\ndef double(n):\n    return 2 * n\n```"
    forged = "```python\ndef double(n):\n    raise StopIteration\n```"
    for name, test in tests.items():
        problem = {"prompt": prompt, "test": test, "entry_point": "double"}
        assert check_response(problem, honest, limits).verdict == "pass", name
        verdict = check_response(problem, forged, limits)
        assert verdict.verdict != "pass", (name, verdict)


@pytest.mark.parametrize(
    ("style", "trainer_name"), [("chat", "WeightedSFTTrainer"), ("chat_completion", "SFTTrainer")]
)
def test_trl_on_the_chat_export_trains_only_the_response_that_was_curated(
    tmp_path: Path, style: str, trainer_name: str
) -> None:
    """The chat export is TRL's conversational language-modeling format, so WeightedSFTTrainer (TRL
    defaults) puts the loss, and the example's loss_weight, on every token of the conversation: the system
    prompt, the user turns and earlier assistant turns. Attribution scored the final response only, and
    WeightedTrainer on the same export (encode_export) masks the prompt: the two trainers train different
    tokens on the same file."""
    import datasets
    import torch
    import trl

    from attribution.reference_model import build_tokenizer
    from curation.training import WeightedSFTTrainer

    rows = [
        {
            "id": f"h{i}",
            "domain": "chat" if i % 2 else "math",
            "messages": [
                {"role": "system", "content": "You are a terse tutor."},
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"{2 * i}."},
                {"role": "user", "content": "And doubled?"},
                {"role": "assistant", "content": f"It is {4 * i}."},
            ],
        }
        for i in range(8)
    ]
    lake = Lake(tmp_path / "lake")
    ingest_records(lake, normalize(rows, "conv", ColumnMap(), "c.jsonl"), "conv", ColumnMap(), "c.jsonl")
    mix = stage("mix")(StageContext(lake, ["conv"], quiet=True), {"batch_size": 4, "steps": 2})
    export_run(lake, mix, tmp_path / "out", fmt="hf", style=style, materialise=True)
    train = datasets.load_from_disk(str(tmp_path / "out"))["train"]
    texts = [m["content"] for r in rows for m in r["messages"]]
    tokenizer = build_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = tiny_causal_lm(tokenizer)
    config = trl.SFTConfig(
        output_dir=str(tmp_path / "run"), report_to=[], save_strategy="no", use_cpu=True, max_steps=1
    )
    # the chat style through assay's trainer, the chat_completion style through TRL's own (as `trl sft` runs it)
    trainer_class = WeightedSFTTrainer if trainer_name == "WeightedSFTTrainer" else trl.SFTTrainer
    trainer = trainer_class(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    row = trainer.train_dataset[0]
    scored = tokenizer.decode(
        [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    )
    assert "terse tutor" not in scored and "doubled" not in scored, scored
    assert scored.replace(" ", "").startswith("Itis"), scored  # the final response is what is scored
