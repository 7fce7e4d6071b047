"""The demo job: build the offline corpus and reference model, ingest, run every stage, report.

`quick=True` is the same pipeline on a small corpus (tests use it).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from flows.runtime import cache_dir, flow, state_dir, step
from storage import Lake

DEMO_TRAIN, DEMO_TARGETS = "demo_train", "demo_targets"
SIZES = {
    False: {"corpus": {"math_per_level": 40, "math_targets_per_level": 8}, "model": {}},
    True: {
        "corpus": {"math_per_level": 6, "math_targets_per_level": 2, "code_limit": 30},
        "model": {"epochs": 2},
    },
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


# Infra's setting: EK-FAC influence at token level (writes scores, segment_scores, token_scores).
ATTRIBUTE_PARAMS = {"targets": DEMO_TARGETS, "method": "ekfac", "level": "token"}


ATTRIBUTION_QUERIES = [
    (
        "Most helpful and most harmful training examples per target domain (positive = helpful)",
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
ORDER BY target_domain, kind DESC, score DESC""",
    ),
    (
        "Mean influence by (train domain, difficulty) x target domain: Infra's cross-domain table",
        """SELECT tr.domain AS train_domain, tr.difficulty,
       round(avg(s.score) FILTER (WHERE tg.domain = 'math'), 2) AS on_math,
       round(avg(s.score) FILTER (WHERE tg.domain = 'code'), 2) AS on_code
FROM scores s JOIN examples tr ON tr.example_id = s.train_id AND tr.dataset = 'demo_train'
JOIN examples tg ON tg.example_id = s.target_id AND tg.dataset = 'demo_targets'
WHERE s.run_id = '{run}' GROUP BY ALL ORDER BY ALL""",
    ),
    (
        "Training tokens with the most influence on math targets",
        """SELECT trim(token) AS token, count(*) AS n, round(avg(score), 1) AS mean_influence
FROM token_scores WHERE run_id = '{run}' AND target_id = 'domain=math' AND trim(token) <> ''
GROUP BY 1 HAVING count(*) >= 5 ORDER BY mean_influence DESC LIMIT 8""",
    ),
]


RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


@step
def dart_replay_file(lake_root: str) -> str:
    """Constructed DART candidates of known correctness (the reference model rarely solves anything)."""
    from curation.dart.replay import write_demo_replay

    path = state_dir() / "demo" / "dart_replay.jsonl"
    return str(write_demo_replay(Lake(lake_root).examples(DEMO_TRAIN), path, per_query=8, seed=0))


def demo_recipe(model_dir: str, replay: str, export_out: str) -> dict:
    """recipes/demo.yaml with the attribution and a DART stage over the constructed candidates in front."""
    from flows.recipes import read_recipe

    recipe = read_recipe(RECIPE)
    attribute = {"stage": "attribute", "params": {"model": model_dir, **ATTRIBUTE_PARAMS}}
    dart = {
        "stage": "dart",
        "params": {
            "strategy": "prop2diff",
            "generator": "replay",
            "replay": replay,
            "k_p": 8,
            "n_d": 4,
            "n_max": 16,
            "verify": "auto",
            "seed": 0,
        },
    }
    recipe["stages"] = [attribute, dart, *recipe["stages"]]
    recipe["export"] = {**recipe.get("export", {}), "out": export_out, "force": True}
    return recipe


FORGET_WHERE = "dataset = 'demo_train' AND domain = 'code' AND difficulty >= 5"


# DMM with the stage's default calibration of the scores' scale (3 retrains, each dropping 10% of the
# training set). One retrain does not pin the scale on the quick demo: all its points share that
# retrain's noise, and its r^2 was below 0 for 2 of 3 calibration seeds (-0.19, -0.06, 0.51), which the
# guardrail refuses; with 3 it was 0.31, 0.53 and 0.43. The scores of the fine-tuning points reuse the
# attribution run's EK-FAC factors.
UNLEARN_PARAMS = {
    "method": "dmm",
    "forget_where": FORGET_WHERE,
    "force": True,
    "lr": 1e-3,
    "epochs": 10,
    "batch_size": 32,
}


def unlearn(lake_root: str, model_dir: str, scores_run: str, quick: bool) -> str:
    """DMM: remove the hardest code examples' effect from the reference model."""
    from flows.stages import run_stage

    # beside the export, in the user's folder: the output policy refuses folders inside the state folder
    out = Path("exports") / ("demo-quick-unlearned" if quick else "demo-unlearned")
    params = {"model": model_dir, "out": str(out), "scores": scores_run, **UNLEARN_PARAMS}
    return run_stage(lake_root, "unlearn", params, [DEMO_TRAIN], quiet=True)


UNLEARN_QUERY = (
    "Unlearning (DMM) of the hardest code examples: losses before, after and retrained without them",
    (
        "SELECT name, key, round(value, 4) AS value FROM metrics WHERE run_id = '{unlearn}' "
        "AND (name ILIKE '%loss%' OR name IN ('forget_gap_closed', 'calibration_r2')) ORDER BY ALL"
    ),
)

CURATION_QUERIES = [
    (
        "DART: trials and kept responses by difficulty (Prop2Diff spends more on hard queries)",
        """SELECT e.domain, e.difficulty, count(*) AS trials, sum(s.correct::INT) AS correct
FROM samples s JOIN examples e ON e.example_id = s.query_id AND e.dataset = 'demo_train'
WHERE s.run_id = '{dart}' GROUP BY ALL ORDER BY ALL""",
    ),
    (
        "PPP clusters of the training set (MiniLM embeddings) against domains",
        """SELECT l.value::INT AS cluster, e.domain, count(*) AS examples FROM labels l
JOIN examples e ON e.example_id = l.example_id AND e.dataset = l.dataset
WHERE l.run_id = '{ppp}' AND l.name = 'ppp_cluster' GROUP BY ALL ORDER BY ALL""",
    ),
    (
        "The curated mixture: examples, draws (copies), mean loss weight per domain, and the flip's newcomers",
        """SELECT e.domain, count(*) AS examples, sum(w.copies) AS draws, round(avg(w.loss_weight), 2) AS loss_weight,
       count(*) FILTER (WHERE w.dataset <> 'demo_train') AS from_pool
FROM weights w JOIN examples e ON e.example_id = w.example_id AND e.dataset = w.dataset
WHERE w.run_id = '{mix}' GROUP BY ALL ORDER BY ALL""",
    ),
]


@flow(name="demo", log_prints=True)
def demo_flow(lake_root: str | None = None, quick: bool = False) -> dict:
    lake_root = str(Lake(lake_root).root)
    paths = build_corpus(quick)
    ingested = {
        DEMO_TRAIN: ingest_file(lake_root, paths["train"], DEMO_TRAIN),
        DEMO_TARGETS: ingest_file(lake_root, paths["targets"], DEMO_TARGETS),
    }
    model_dir = build_reference_model(paths["train"], quick)
    from flows.curate import curate_flow
    from flows.tasks import subflow

    export_out = str(Path("exports") / ("demo-quick" if quick else "demo"))
    recipe = demo_recipe(model_dir, dart_replay_file(lake_root), export_out)
    curated = subflow(curate_flow, recipe, lake_root=lake_root, quiet=True)
    attribution_run = curated["runs"]["attribute"]
    queries = [(title, sql.format(run=attribution_run)) for title, sql in ATTRIBUTION_QUERIES]
    runs = dict(curated["runs"])
    queries += [(title, sql.format(**runs)) for title, sql in CURATION_QUERIES]
    from attribution.stages.unlearn import UnlearningNoOp

    unlearning_refused = None
    try:
        runs["unlearn"] = unlearn(lake_root, model_dir, attribution_run, quick)
        queries.append((UNLEARN_QUERY[0], UNLEARN_QUERY[1].format(**runs)))
    except UnlearningNoOp as exc:  # the demo shows the guardrail's verdict instead of a no-op model
        unlearning_refused = str(exc)
    from flows.reports import write_demo_report

    report = write_demo_report(Lake(lake_root))
    return {
        "lake": lake_root,
        "files": paths,
        "ingested": ingested,
        "model": model_dir,
        "runs": runs,
        "export": curated["export"],
        "report": str(report),
        "queries": queries,
        "unlearning_refused": unlearning_refused,
    }
