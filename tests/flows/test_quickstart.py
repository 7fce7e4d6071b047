"""The README's quick start, run as written: its command lines are read from the README (between the
`BEGIN quickstart` / `END quickstart` markers), so the README cannot drift from what works. Data, model and
recipe are offline stand-ins with the README's names: generated math problems and a tiny Qwen2-style model
with a chat template."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from assay_testing import REPO, run_cli
from flows_testlake import tiny_model

from curation.corpus import math_problems

pytestmark = pytest.mark.slow

# On this CPU-only machine `trl sft` needs the README's CPU flag; two steps are enough to show it trains.
TRL_TEST_FLAGS = ["--use_cpu", "true", "--max_steps", "2", "--report_to", "none"]


def quickstart_lines() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = re.search(
        r"<!-- BEGIN quickstart[^>]*-->\s*```bash\n(.*?)```\s*<!-- END quickstart -->", text, re.DOTALL
    )
    assert block, (
        "README.md has no quick start block between <!-- BEGIN quickstart --> and <!-- END quickstart -->"
    )
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_start_is_short_and_covers_the_path() -> None:
    lines = quickstart_lines()
    assert len(lines) <= 10
    commands = [" ".join(words[:2]) for words in lines]
    for step in ("assay ingest", "assay attribute", "assay curate", "trl sft"):
        assert step in commands, commands


def test_the_readme_quick_start_runs(tmp_path: Path) -> None:
    train = math_problems(4, seed=0)
    evals = math_problems(1, seed=5, prefix="eval", exclude={r["prompt"] for r in train})
    keep = ("id", "prompt", "response", "domain", "difficulty", "answer")
    for name, rows in (("my_train.jsonl", train), ("my_evals.jsonl", evals)):
        (tmp_path / name).write_text("".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in rows))
    tiny_model(tmp_path / "my-sft-model", [f"{r['prompt']}\n{r['response']}" for r in train])
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_DISABLED": "true"}
    outputs: dict[str, list[str]] = {}
    for words in quickstart_lines():
        if words[0] == "assay":
            done = run_cli(*words[1:], cwd=tmp_path, timeout=1200)
        else:
            assert words[0] == "trl", words
            trl = str(Path(sys.executable).parent / "trl")
            done = subprocess.run(
                [trl, *words[1:], *TRL_TEST_FLAGS],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=1200,
                check=False,
            )
        assert done.returncode == 0, (words, done.stdout[-2000:], done.stderr[-3000:])
        outputs.setdefault(" ".join(words[:2]), []).append(done.stdout)
    ingested = outputs["assay ingest"]
    assert ingested[0].startswith("train ") and "20 examples, new version" in ingested[0]
    assert ingested[1].startswith("evals ") and "5 examples, new version" in ingested[1]
    top = [line for line in outputs["assay sql"][0].splitlines() if "math-" in line]
    assert len(top) == 5  # the five most helpful training examples
    exported = (tmp_path / "exports" / "curated" / "data" / "train.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in exported]
    # TRL's conversational prompt-completion: the template applies, the loss is on the final response
    assert records and all(r["completion"] == [r["completion"][0]] for r in records)
    assert all(
        r["completion"][0]["role"] == "assistant" and r["prompt"][-1]["role"] == "user" for r in records
    )
    assert (tmp_path / "my-curated-model" / "config.json").is_file()
