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


@step
def attribute(lake_root: str, model_dir: str) -> str:
    """EK-FAC influence (Infra's setting) at token level: writes scores, segment_scores, token_scores."""
    from attribution.stage import run_attribution

    return run_attribution(Lake(lake_root), model_dir, DEMO_TRAIN, DEMO_TARGETS, method="ekfac", level="token")


ATTRIBUTION_QUERIES = [
    ("Most helpful and most harmful training examples per target domain (positive = helpful)",
     """WITH mean AS (
  SELECT tg.domain AS target_domain, tr.domain AS train_domain, s.train_id, avg(s.score) AS score
  FROM scores s JOIN examples tr ON tr.example_id = s.train_id AND tr.dataset = 'demo_train'
  JOIN examples tg ON tg.example_id = s.target_id AND tg.dataset = 'demo_targets'
  WHERE s.run_id = '{run}' GROUP BY ALL),
ranked AS (
  SELECT *, row_number() OVER (PARTITION BY target_domain ORDER BY score DESC) AS top,
            row_number() OVER (PARTITION BY target_domain ORDER BY score) AS bottom FROM mean)
SELECT target_domain, CASE WHEN top <= 3 THEN 'helpful' ELSE 'harmful' END AS kind, train_id, train_domain,
       round(score, 1) AS score
FROM ranked WHERE top <= 3 OR bottom <= 3
ORDER BY target_domain, kind DESC, score DESC"""),
    ("Mean influence by (train domain, difficulty) x target domain: Infra's cross-domain table",
     """SELECT tr.domain AS train_domain, tr.difficulty,
       round(avg(s.score) FILTER (WHERE tg.domain = 'math'), 2) AS on_math,
       round(avg(s.score) FILTER (WHERE tg.domain = 'code'), 2) AS on_code
FROM scores s JOIN examples tr ON tr.example_id = s.train_id AND tr.dataset = 'demo_train'
JOIN examples tg ON tg.example_id = s.target_id AND tg.dataset = 'demo_targets'
WHERE s.run_id = '{run}' GROUP BY ALL ORDER BY ALL"""),
    ("Training tokens with the most influence on math targets",
     """SELECT trim(token) AS token, count(*) AS n, round(avg(score), 1) AS mean_influence
FROM token_scores WHERE run_id = '{run}' AND target_id = 'domain=math' AND trim(token) <> ''
GROUP BY 1 HAVING count(*) >= 5 ORDER BY mean_influence DESC LIMIT 8"""),
]


@flow(name="demo", log_prints=True)
def demo_flow(lake_root: str, quick: bool = False) -> dict:
    paths = build_corpus(quick)
    ingested = {
        DEMO_TRAIN: ingest_file(lake_root, paths["train"], DEMO_TRAIN),
        DEMO_TARGETS: ingest_file(lake_root, paths["targets"], DEMO_TARGETS),
    }
    model_dir = build_reference_model(paths["train"], quick)
    attribution_run = attribute(lake_root, model_dir)
    queries = [(title, sql.format(run=attribution_run)) for title, sql in ATTRIBUTION_QUERIES]
    return {"lake": lake_root, "files": paths, "ingested": ingested, "model": model_dir,
            "runs": {"attribute": attribution_run}, "queries": queries}
