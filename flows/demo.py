"""The demo job: build the offline corpus and reference model, ingest, run every stage, report.

`quick=True` is the same pipeline on a small corpus (tests use it).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow

from flows.runtime import cache_dir, state_dir, step
from storage import Lake

DEMO_TRAIN, DEMO_TARGETS = "demo_train", "demo_targets"
SIZES = {
    False: {"corpus": {"math_per_level": 40, "math_targets_per_level": 8}, "model": {}},
    True: {"corpus": {"math_per_level": 6, "math_targets_per_level": 2, "code_limit": 30},
           "model": {"epochs": 2}},
}


@step
def build_corpus(quick: bool) -> dict[str, str]:
    from curation.corpus import demo_corpus, write_jsonl

    corpus = demo_corpus(**SIZES[quick]["corpus"])
    folder = state_dir() / "demo" / ("quick" if quick else "full")
    return {name: str(write_jsonl(records, folder / f"{name}.jsonl")) for name, records in corpus.items()}


@step
def ingest_file(lake_root: str, path: str, dataset: str) -> dict:
    from storage.ingest import ingest

    return asdict(ingest(Lake(lake_root), path, dataset))


@step
def build_reference_model(train_path: str, quick: bool) -> str:
    import json

    from attribution.reference_model import reference_model

    records = [json.loads(line) for line in Path(train_path).read_text().splitlines()]
    return str(reference_model(records, cache_dir(), **SIZES[quick]["model"]))


@flow(name="demo", log_prints=True)
def demo_flow(lake_root: str, quick: bool = False) -> dict:
    paths = build_corpus(quick)
    ingested = {
        DEMO_TRAIN: ingest_file(lake_root, paths["train"], DEMO_TRAIN),
        DEMO_TARGETS: ingest_file(lake_root, paths["targets"], DEMO_TARGETS),
    }
    model_dir = build_reference_model(paths["train"], quick)
    return {"lake": lake_root, "files": paths, "ingested": ingested, "model": model_dir}
