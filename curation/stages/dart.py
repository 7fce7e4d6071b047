"""Stage `dart`: difficulty-aware rejection sampling over the recipe's examples (DART-Math).

The examples become queries (math: the `answer` column; code: `test` and `entry_point` in `meta`),
a generator samples responses, a verifier judges them, a strategy decides how many to sample.
Recipe parameters (defaults in `DEFAULTS`):
  strategy:    vrt | uniform | prop2diff
  n_per_query (vrt), k_u (uniform), k_p, n_d, difficulty: fail_rate | labels (prop2diff),
  n_max, batch: trial cap per query and samples per query per round (uniform, prop2diff)
  generator:   replay | transformers | vllm | openai
  replay:      a JSONL / Parquet file (query_id, response, optional correct / truncated / trial),
               or `run:RUN_ID` to replay the samples of an earlier dart run
  model:       model directory (transformers, vllm) or the served model's name (openai)
  endpoint:    the OpenAI-compatible server's URL (openai); api: chat | completions
  temperature, top_p, max_new_tokens, gen_batch_size (rows per generate call), device
  verify:      auto (recorded labels when present, else check) | verify (always check) | recorded
  workers:     sandboxes at a time for code checks; math_timeout_s, code_timeout_s
  domains:     which domains become queries (default: all); limit: at most this many queries
  seed, output_dataset (default: <datasets>-dart-<run hash>)
Writes `samples` (every trial, with phase / kept / truncated / dataset), the kept responses as a new
dataset in `examples` (`output_dataset`, one example per kept response, meta: query_id, trial,
source_dataset, generator, and the code tests), `weights` (1 per kept response: what `assay export`
reads), `labels` per query (dart_difficulty, dart_target, dart_trials, dart_correct, dart_kept,
dart_covered) and `metrics` (coverage, trials, verdict counts). Uncovered queries are printed and
labelled dart_covered = 0.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from curation.dart import generators, strategies
from curation.dart.types import Query
from curation.dart.verifiers import MODES, AnswerVerifier
from curation.stages import StageContext, stage, with_defaults
from curation.stages.mix import load_examples
from storage import Lake, UserError
from storage.ingest import ColumnMap, dataset_version, normalize, records_table

DEFAULTS: dict[str, Any] = {
    "strategy": "prop2diff",
    "n_per_query": 8,
    "k_u": 4,
    "k_p": 8,
    "n_max": 64,
    "batch": 8,
    "n_d": 8,
    "difficulty": "fail_rate",
    "generator": "replay",
    "replay": None,
    "model": None,
    "endpoint": None,
    "api": "chat",
    "temperature": 1.0,
    "top_p": 0.95,
    "max_new_tokens": 512,
    "gen_batch_size": 8,
    "device": "cpu",
    "verify": "auto",
    "workers": 2,
    "math_timeout_s": 5.0,
    "code_timeout_s": 6.0,
    "domains": None,
    "limit": None,
    "seed": 0,
    "output_dataset": None,
}
GENERATOR_CHOICES = ("replay", "transformers", "vllm", "openai")
POSITIVE_INTS = (
    "n_per_query",
    "k_u",
    "k_p",
    "n_max",
    "batch",
    "n_d",
    "max_new_tokens",
    "gen_batch_size",
    "workers",
)


def resolve_params(params: dict | None) -> dict[str, Any]:
    """Defaults filled in and checked; every problem is a UserError naming the parameter."""
    p = with_defaults("dart", params, DEFAULTS)
    if p["strategy"] not in strategies.STRATEGIES:
        raise UserError(
            f"stage dart: strategy must be one of {', '.join(strategies.STRATEGIES)}, got {p['strategy']!r}"
        )
    if p["generator"] not in GENERATOR_CHOICES:
        raise UserError(
            f"stage dart: generator must be one of {', '.join(GENERATOR_CHOICES)}, got {p['generator']!r}"
        )
    if p["difficulty"] not in ("fail_rate", "labels"):
        raise UserError(f"stage dart: difficulty must be fail_rate or labels, got {p['difficulty']!r}")
    if p["verify"] not in MODES:
        raise UserError(f"stage dart: verify must be one of {', '.join(MODES)}, got {p['verify']!r}")
    for name in POSITIVE_INTS + (("limit",) if p["limit"] is not None else ()):
        value = p[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"stage dart: {name} must be a positive integer, got {value!r}")
    if not isinstance(p["seed"], int) or isinstance(p["seed"], bool) or p["seed"] < 0:
        raise UserError(f"stage dart: seed must be a non-negative integer, got {p['seed']!r}")
    for name in ("temperature", "top_p", "math_timeout_s", "code_timeout_s"):
        value = p[name]
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise UserError(f"stage dart: {name} must be a positive number, got {value!r}")
    if p["top_p"] > 1:
        raise UserError(f"stage dart: top_p must be at most 1, got {p['top_p']!r}")
    if p["strategy"] == "prop2diff" and p["difficulty"] == "fail_rate" and p["n_d"] > p["n_max"]:
        raise UserError(f"stage dart: n_d ({p['n_d']}) cannot exceed n_max ({p['n_max']})")
    if p["domains"] is not None:
        if isinstance(p["domains"], str):
            p["domains"] = [p["domains"]]
        if not isinstance(p["domains"], list) or not all(isinstance(d, str) for d in p["domains"]):
            raise UserError(f"stage dart: domains must be a list of domain names, got {p['domains']!r}")
    if p["generator"] == "replay" and not p["replay"]:
        raise UserError("stage dart: generator replay needs replay: FILE (or run:RUN_ID)")
    if p["generator"] in ("transformers", "vllm") and not p["model"]:
        raise UserError(f"stage dart: generator {p['generator']} needs model: a model directory")
    if p["generator"] == "openai" and not (p["endpoint"] and p["model"]):
        raise UserError("stage dart: generator openai needs endpoint: URL and model: the served model's name")
    if p["output_dataset"] is not None:
        from storage.ingest import DATASET_NAME

        if not isinstance(p["output_dataset"], str) or not DATASET_NAME.match(p["output_dataset"]):
            raise UserError(
                f"stage dart: output_dataset {p['output_dataset']!r}: use letters, digits, '_', '.', '-'"
            )
    return p


def build_strategy(p: dict[str, Any]):
    if p["strategy"] == "vrt":
        return strategies.VRT(n_per_query=p["n_per_query"])
    if p["strategy"] == "uniform":
        return strategies.Uniform(k_u=p["k_u"], n_max=p["n_max"], batch=p["batch"])
    return strategies.Prop2Diff(
        k_p=p["k_p"], n_max=p["n_max"], batch=p["batch"], n_d=p["n_d"], difficulty=p["difficulty"]
    )


def _meta(value: Any) -> dict:
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def queries_from_examples(examples: pd.DataFrame, domains: list[str] | None = None) -> list[Query]:
    """Queries from `examples` rows: math answers from `answer`, code tests from `meta`."""
    if domains is not None:
        examples = examples[examples["domain"].isin(domains)]
    dup = examples["example_id"][examples["example_id"].duplicated()]
    if len(dup):
        first = dup.iloc[0]
        owners = sorted(examples.loc[examples["example_id"] == first, "dataset"].unique())
        raise UserError(
            f"stage dart: example id {first!r} appears in datasets {', '.join(owners)}; "
            "run dart on one of them at a time"
        )
    out = []
    for row in examples.to_dict("records"):
        meta = _meta(row.get("meta"))
        difficulty = row.get("difficulty")
        out.append(
            Query(
                query_id=str(row["example_id"]),
                prompt=str(row["prompt"]),
                domain=_text(row.get("domain")) or "",
                answer=_text(row.get("answer"))
                if row.get("answer") is not None
                else _text(meta.get("answer")),
                test=_text(meta.get("test")),
                entry_point=_text(meta.get("entry_point")),
                difficulty=None if difficulty is None or pd.isna(difficulty) else float(difficulty),
                dataset=_text(row.get("dataset")),
            )
        )
    return out


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _model_fingerprint(path: Path) -> str:
    """The model's path and a digest of its config and weight file names and sizes."""
    digest = hashlib.sha256()
    for item in sorted(path.iterdir()):
        if item.is_file():
            digest.update(f"{item.name}:{item.stat().st_size}".encode())
    config = path / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    return f"{path.resolve()}@{digest.hexdigest()[:12]}"


def make_generator(lake: Lake, p: dict[str, Any]) -> tuple[generators.Generator, dict, str | None]:
    """(generator, its inputs for the run id, model fingerprint); UserError on a bad source."""
    kind = p["generator"]
    if kind == "replay":
        source = str(p["replay"])
        if source.startswith("run:"):
            run_id = source[4:]
            lake.require_run(run_id)
            samples = lake.table("samples", "run_id = ?", [run_id])
            if samples.empty:
                raise UserError(f"stage dart: replay {source}: that run wrote no samples")
            cols = [
                c for c in ("query_id", "trial", "response", "correct", "truncated") if c in samples.columns
            ]
            return generators.ReplayGenerator(samples[cols], source=source), {"replay_run": run_id}, None
        path = Path(source).expanduser()
        gen = generators.ReplayGenerator.from_file(path)
        return gen, {"replay_file": str(path.resolve()), "replay_digest": _file_digest(path)}, None
    if kind == "openai":
        gen = generators.OpenAIGenerator(
            p["endpoint"],
            p["model"],
            api=p["api"],
            temperature=p["temperature"],
            top_p=p["top_p"],
            max_new_tokens=p["max_new_tokens"],
        )
        gen.check()
        return gen, {}, f"{gen.base}#{p['model']}"
    path = Path(p["model"]).expanduser()
    if kind == "transformers":
        gen = generators.TransformersGenerator(
            path,
            temperature=p["temperature"],
            top_p=p["top_p"],
            max_new_tokens=p["max_new_tokens"],
            batch_size=p["gen_batch_size"],
            device=p["device"],
        )
        return gen, {}, _model_fingerprint(gen.path)
    gen = generators.VLLMGenerator(
        path,
        temperature=p["temperature"],
        top_p=p["top_p"],
        max_new_tokens=p["max_new_tokens"],
        seed=p["seed"],
    )
    return gen, {}, _model_fingerprint(path) if path.is_dir() else str(p["model"])


def curated_records(
    result: strategies.DartResult, queries: list[Query], generator_name: str, dataset: str, source: str
) -> list[dict]:
    """The kept responses as normalised `examples` records of `dataset`."""
    by_id = {q.query_id: q for q in queries}
    rows = []
    for trial in result.kept.itertuples(index=False):
        query = by_id[trial.query_id]
        row = {
            "id": f"{query.query_id}#dart{int(trial.trial)}",
            "domain": query.domain,
            "difficulty": query.difficulty,
            "prompt": query.prompt,
            "response": trial.response,
            "answer": query.answer,
            "query_id": query.query_id,
            "trial": int(trial.trial),
            "source_dataset": query.dataset,
            "generator": generator_name,
        }
        if query.test is not None:
            row["test"], row["entry_point"] = query.test, query.entry_point
        rows.append(row)
    return normalize(rows, dataset, ColumnMap(), source) if rows else []


def _labels(result: strategies.DartResult) -> pd.DataFrame:
    q = result.queries
    frames = []
    for name, column in (
        ("dart_difficulty", "difficulty"),
        ("dart_target", "target"),
        ("dart_trials", "trials"),
        ("dart_correct", "correct"),
        ("dart_kept", "kept"),
        ("dart_covered", "covered"),
    ):
        values = pd.to_numeric(
            q[column].astype("Float64") if column != "covered" else q[column].astype(float), errors="coerce"
        )
        frame = pd.DataFrame(
            {
                "dataset": q["dataset"],
                "example_id": q["query_id"],
                "name": name,
                "value": values.astype(float),
            }
        )
        frames.append(frame.dropna(subset=["value"]))
    return pd.concat(frames, ignore_index=True)


def _metrics(result: strategies.DartResult) -> pd.DataFrame:
    q, t = result.queries, result.trials
    rows = [
        ("queries", "all", float(len(q))),
        ("covered", "all", float(q["covered"].sum())),
        ("uncovered", "all", float((~q["covered"]).sum())),
        ("trials", "all", float(len(t))),
        ("kept", "all", float(t["kept"].sum())),
        ("correct", "all", float(t["correct"].sum())),
    ]
    rows += [("verdict", str(v), float(n)) for v, n in t["verdict"].value_counts().items()]
    for domain, group in q.groupby("domain"):
        rows += [
            ("covered", f"domain={domain}", float(group["covered"].sum())),
            ("kept", f"domain={domain}", float(group["kept"].sum())),
        ]
    return pd.DataFrame(rows, columns=["name", "key", "value"])


@stage("dart")
def dart(ctx: StageContext, params: dict) -> str:
    p = resolve_params(params)
    lake = ctx.lake
    versions = ctx.dataset_versions("dart")
    examples = load_examples(lake, versions)
    queries = queries_from_examples(examples, p["domains"])
    generator, gen_inputs, model = make_generator(lake, p)
    if isinstance(generator, generators.ReplayGenerator):
        recorded = generator.query_ids()
        missing = [q for q in queries if q.query_id not in recorded]
        queries = [q for q in queries if q.query_id in recorded]
        if not queries:
            raise UserError(
                f"stage dart: replay {p['replay']}: no query_id matches an example id of "
                f"{', '.join(ctx.datasets)}"
            )
        if missing and not ctx.quiet:
            print(f"dart: {len(missing)} examples have no recorded responses in the replay; left out")
    if p["limit"] is not None:
        queries = queries[: p["limit"]]
    if not queries:
        raise UserError(f"stage dart: no examples of {', '.join(ctx.datasets)} in domains {p['domains']}")
    if p["strategy"] == "prop2diff" and p["difficulty"] == "labels":
        unlabelled = [q.query_id for q in queries if q.difficulty is None or q.difficulty < 0]
        if unlabelled:
            raise UserError(
                f"stage dart: difficulty labels requested, but {len(unlabelled)} examples have no "
                f"difficulty (first: {unlabelled[0]}); use difficulty: fail_rate"
            )
    strategy = build_strategy(p)
    from curation.verify.code import DEFAULT_LIMITS

    limits = replace(DEFAULT_LIMITS, wall_s=p["code_timeout_s"], cpu_s=max(1.0, p["code_timeout_s"] / 2))
    verifier = AnswerVerifier(
        p["verify"], workers=p["workers"], math_timeout_s=p["math_timeout_s"], code_limits=limits
    )
    inputs = {"sources": versions, **gen_inputs}
    run_params = {**p, "generator_settings": generator.describe()}
    try:
        with lake.run(kind="curate", method="dart", params=run_params, inputs=inputs, model=model) as run:
            if run.complete:
                return run.run_id
            progress = None if ctx.quiet else _progress
            result = strategy.run(queries, generator, verifier, seed=p["seed"], on_round=progress)
            out_name = p["output_dataset"] or f"{'_'.join(ctx.datasets)}-dart-{run.run_id.rsplit('-', 1)[-1]}"
            samples = result.trials.assign(generator=generator.name)
            run.write("samples", samples)
            records = curated_records(result, queries, generator.name, out_name, f"dart run {run.run_id}")
            if records:
                table = records_table(records)  # the same table and version hash as `assay ingest`
                version = dataset_version(table)
                run.write(
                    "examples", table.add_column(1, "version", pa.array([version] * len(table), pa.string()))
                )
                run.write(
                    "weights",
                    pd.DataFrame(
                        {
                            "dataset": out_name,
                            "example_id": [r["example_id"] for r in records],
                            "weight": 1.0,
                            "copies": 1,
                        }
                    ),
                )
            run.write("labels", _labels(result))
            run.write("metrics", _metrics(result))
            if not ctx.quiet:
                _report(result, out_name if records else None)
    finally:
        generator.close()
    return run.run_id


def _progress(rounds: int, queries: int, trials: int) -> None:
    print(f"dart: round {rounds}: {queries} queries sampled, {trials} trials so far", flush=True)


def _report(result: strategies.DartResult, out_name: str | None) -> None:
    q = result.queries
    print(
        f"dart: {len(q)} queries, {len(result.trials)} trials, {int(result.trials['kept'].sum())} responses kept, "
        f"{int(q['covered'].sum())} covered"
    )
    if result.uncovered:
        shown = ", ".join(result.uncovered[:10]) + (" ..." if len(result.uncovered) > 10 else "")
        print(f"dart: {len(result.uncovered)} uncovered (no correct response): {shown}")
    if out_name:
        print(f"dart: curated set: dataset {out_name}")
    else:
        print("dart: no response was kept; nothing to export")
