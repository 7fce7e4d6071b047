"""Stage `dart`: difficulty-aware rejection sampling over the recipe's examples (DART-Math).

The examples become queries (math: the `answer` column; code: `test` and `entry_point` in `meta`),
a generator samples responses, a verifier judges them, a strategy decides how many to sample.
Parameters: `DartParams` (a replay is a JSONL / Parquet file of query_id, response and optional
correct / truncated / trial, or `run:RUN_ID` to replay an earlier dart run's samples; the output dataset
defaults to <datasets>-dart-<run hash>).
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from curation.dart import generators, strategies
from curation.dart.types import Query
from curation.dart.verifiers import MATH_VERIFIERS, MODES, AnswerVerifier, build_math_verifier
from curation.stages import RunSpec, Stage, StageContext, load_examples
from storage import Lake, Run, UserError
from storage.fingerprint import model_reference
from storage.ingest import ColumnMap, dataset_version, normalize, records_table
from storage.params import (
    NAME,
    SEED,
    Choice,
    Items,
    ParamError,
    Params,
    Text,
    integer,
    number,
    optional,
    param,
)
from storage.progress import Progress

GENERATOR_CHOICES = ("replay", "transformers", "vllm", "openai")
COUNT = integer(1, 1_000_000)
URL = Text("an http(s) URL", pattern=r"https?://\S+", max_length=2048)


@dataclass
class DartParams(Params):
    strategy: str = param("prop2diff", "vrt | uniform | prop2diff", Choice(strategies.STRATEGIES))
    n_per_query: int = param(8, "vrt: samples per query", COUNT)
    k_u: int = param(4, "uniform: correct responses wanted per query", COUNT)
    k_p: int = param(8, "prop2diff: correct responses for the hardest query", COUNT)
    n_max: int = param(64, "uniform / prop2diff: trial cap per query", COUNT)
    batch: int = param(8, "samples per query per round", COUNT)
    n_d: int = param(8, "prop2diff: samples that measure the fail rate", COUNT)
    difficulty: str = param(
        "fail_rate",
        "prop2diff: fail_rate | labels (the examples' difficulty)",
        Choice(("fail_rate", "labels")),
    )
    generator: str = param("replay", "replay | transformers | vllm | openai", Choice(GENERATOR_CHOICES))
    replay: str | None = param(
        None,
        "replay: a JSONL / Parquet file (query_id, response[, correct, truncated, trial]) or run:RUN_ID",
        optional(Text("a file or run:RUN_ID")),
    )
    model: str | None = param(
        None,
        "transformers / vllm: model directory; openai: the served model's name",
        optional(Text("a model")),
    )
    endpoint: str | None = param(None, "openai: server URL, e.g. http://127.0.0.1:8000/v1", optional(URL))
    api: str = param("chat", "openai: chat | completions", Choice(("chat", "completions")))
    # The paper's sampling: temperature 1.6, top_p 0.95, up to 2048 new tokens.
    temperature: float = param(1.6, "sampling temperature", number(0, 100, "right"))
    top_p: float = param(0.95, "nucleus sampling", number(0, 1, "right"))
    max_new_tokens: int = param(2048, "length limit; cut-off responses count as wrong", integer(1, 1_000_000))
    gen_batch_size: int = param(8, "transformers: sequences per generate call", integer(1, 100_000))
    verify: str = param(
        "auto", "auto (recorded labels when present) | verify (always check) | recorded", Choice(MODES)
    )
    workers: int = param(2, "code sandboxes at a time", integer(1, 1024))
    verifier: str = param(
        "rule",
        "math answers: rule (extraction + exact / symbolic comparison; abstains when unsure) | judge (an LLM "
        "judge of final-answer equivalence) | rule+judge (the judge only where the rules abstain)",
        Choice(MATH_VERIFIERS),
    )
    judge_endpoint: str | None = param(None, "judge: OpenAI-compatible server URL", optional(URL))
    judge_model: str | None = param(None, "judge: the served model's name", optional(Text("a model name")))
    math_timeout_s: float = param(5.0, "seconds per math comparison", number(0, 3600, "right"))
    code_cpu_s: float = param(
        3.0,
        "CPU seconds per code check (a CPU-limit kill is a timeout; wall time is only a safety net)",
        number(0, 3600, "right"),
    )
    domains: list | None = param(None, "only these domains become queries", optional(Items(NAME, 1)))
    limit: int | None = param(None, "at most this many queries", optional(integer(1, 10**9)))
    seed: int = param(0, "sampling seed", SEED)
    output_dataset: str | None = param(None, "name of the curated dataset in the lake", optional(NAME))

    def validate(self) -> None:
        if self.strategy == "prop2diff" and self.difficulty == "fail_rate" and self.n_d > self.n_max:
            raise ParamError("n_d", f"{self.n_d} cannot exceed n_max ({self.n_max})")
        if self.generator == "replay" and not self.replay:
            raise ParamError("replay", "generator replay needs replay: FILE (or run:RUN_ID)")
        if self.generator in ("transformers", "vllm") and not self.model:
            raise ParamError("model", f"generator {self.generator} needs model: a model directory")
        if self.generator == "openai" and not (self.endpoint and self.model):
            raise ParamError(
                "endpoint", "generator openai needs endpoint: URL and model: the served model's name"
            )
        if self.verifier != "rule" and not (self.judge_endpoint and self.judge_model):
            raise ParamError(
                "judge_endpoint", f"verifier {self.verifier} needs judge_endpoint and judge_model"
            )


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


def generator_source(lake: Lake, p: dict[str, Any]) -> tuple[dict, str | None, generators.Generator | None]:
    """(inputs for the run id, model reference, a generator that is cheap to build now or None); a bad
    source is the user's error. Local models are only checked here: they load in `execute`."""
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
            return {"replay_run": run_id}, None, generators.ReplayGenerator(samples[cols], source=source)
        path = Path(source).expanduser()
        gen = generators.ReplayGenerator.from_file(path)
        return {"replay_file": str(path.resolve()), "replay_digest": _file_digest(path)}, None, gen
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
        return {}, f"{gen.base}#{p['model']}", gen
    path = Path(p["model"]).expanduser()
    if kind == "vllm" and not path.is_dir():  # vLLM may name a model it serves from its own cache
        return {}, str(p["model"]), None
    return {}, model_reference(generators.check_model_dir(path)), None


def build_generator(p: dict[str, Any], device: str) -> generators.Generator:
    """The local-model generator of a planned run (loads the model)."""
    path = Path(p["model"]).expanduser()
    if p["generator"] == "transformers":
        return generators.TransformersGenerator(
            path,
            temperature=p["temperature"],
            top_p=p["top_p"],
            max_new_tokens=p["max_new_tokens"],
            batch_size=p["gen_batch_size"],
            device=device,
        )
    return generators.VLLMGenerator(
        path,
        temperature=p["temperature"],
        top_p=p["top_p"],
        max_new_tokens=p["max_new_tokens"],
        seed=p["seed"],
    )


def select_queries(
    queries: list[Query],
    generator: generators.Generator | None,
    p: dict[str, Any],
    datasets: list[str],
    quiet: bool,
) -> list[Query]:
    """The queries the run samples: those a replay has responses for, up to `limit`; checked."""
    if isinstance(generator, generators.ReplayGenerator):
        recorded = generator.query_ids()
        missing = [q for q in queries if q.query_id not in recorded]
        queries = [q for q in queries if q.query_id in recorded]
        if not queries:
            raise UserError(
                f"stage dart: replay {p['replay']}: no query_id matches an example id of {', '.join(datasets)}"
            )
        if missing and not quiet:
            print(f"dart: {len(missing)} examples have no recorded responses in the replay; left out")
    if p["limit"] is not None:
        queries = queries[: p["limit"]]
    if not queries:
        raise UserError(f"stage dart: no examples of {', '.join(datasets)} in domains {p['domains']}")
    if p["strategy"] == "prop2diff" and p["difficulty"] == "labels":
        unlabelled = [q.query_id for q in queries if q.difficulty is None or q.difficulty < 0]
        if unlabelled:
            raise UserError(
                f"stage dart: difficulty labels requested, but {len(unlabelled)} examples have no "
                f"difficulty (first: {unlabelled[0]}); use difficulty: fail_rate"
            )
    return queries


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
        ("dart_abstained", "abstained"),
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
    """Every total of the result (queries, covered, trials, correct, kept, abstained, truncated and each
    verdict's count) under key `all`, and coverage per domain."""
    q = result.queries
    rows = [(name, "all", float(value)) for name, value in result.summary().items()]
    rows.append(("uncovered", "all", float((~q["covered"]).sum())))
    for domain, group in q.groupby("domain"):
        rows += [
            ("covered", f"domain={domain}", float(group["covered"].sum())),
            ("kept", f"domain={domain}", float(group["kept"].sum())),
            ("abstained", f"domain={domain}", float(group["abstained"].sum())),
        ]
    return pd.DataFrame(rows, columns=["name", "key", "value"])


class DartSampling(Stage):
    """DART rejection sampling: sample responses per query, keep the verified ones (VRT, Uniform, Prop2Diff)."""

    name = "dart"
    Params = DartParams
    reads = ("examples", "samples")
    writes = ("samples", "examples", "weights", "labels", "metrics")
    dataset_help = "dataset(s) whose examples are the queries (repeatable)"

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        versions = ctx.dataset_versions(self.name)
        examples = load_examples(ctx.lake, versions)
        gen_inputs, model, generator = generator_source(ctx.lake, p)
        math_verifier = build_math_verifier(
            p["verifier"],
            endpoint=p["judge_endpoint"],
            model=p["judge_model"],
            timeout_s=p["math_timeout_s"],
        )
        queries = select_queries(
            queries_from_examples(examples, p["domains"]), generator, p, ctx.datasets, ctx.quiet
        )
        return RunSpec(
            "curate",
            self.name,
            p,
            {"sources": versions, **gen_inputs},
            model,
            context={"queries": queries, "generator": generator, "math_verifier": math_verifier},
        )

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        from curation.verify.code import DEFAULT_LIMITS

        p = spec.params
        queries = spec.context["queries"]
        generator = spec.context["generator"] or build_generator(p, ctx.resolved_device())
        verifier = AnswerVerifier(
            p["verify"],
            workers=p["workers"],
            math_timeout_s=p["math_timeout_s"],
            code_limits=replace(DEFAULT_LIMITS, cpu_s=p["code_cpu_s"]),
            math_verifier=spec.context["math_verifier"],
        )
        try:
            with Progress(
                f"dart ({p['strategy']})",
                trial_budget(p, len(queries)),
                "trials",
                at_most=True,
                bar=not ctx.quiet,
            ) as trials:
                result = build_strategy(p).run(
                    queries, generator, verifier, seed=p["seed"], on_round=lambda _r, _q, n: trials.set(n)
                )
        finally:
            generator.close()
        out_name = p["output_dataset"] or f"{'_'.join(ctx.datasets)}-dart-{run.run_id.rsplit('-', 1)[-1]}"
        run.write("samples", result.trials.assign(generator=generator.name))
        records = curated_records(result, queries, generator.name, out_name, f"dart run {run.run_id}")
        if records:
            table = records_table(records)  # the same table and version hash as `assay ingest`
            version = dataset_version(table)
            run.write(
                "examples",
                table.add_column(1, "version", pa.repeat(pa.scalar(version, pa.string()), len(table))),
            )
            run.write(
                "weights",
                pd.DataFrame(
                    {
                        "dataset": out_name,
                        "example_id": [r["example_id"] for r in records],
                        "copies": 1,
                        "loss_weight": 1.0,
                    }
                ),
            )
        run.write("labels", _labels(result))
        run.write("metrics", _metrics(result))
        if not ctx.quiet:
            _report(result, out_name if records else None)

    def report(self, ctx: StageContext, run_id: str) -> list[str]:
        kept = int(
            ctx.lake.query("SELECT count(*) AS n FROM weights WHERE run_id = ?", [run_id])["n"].iloc[0]
        )
        lines = [f"{kept} responses kept"]
        if kept:
            lines.append(f"export with: assay export {run_id} --out FOLDER")
        return lines


def trial_budget(p: dict[str, Any], n_queries: int) -> int:
    """The most trials a DART run can make (VRT: n_per_query each; Uniform / Prop2Diff: up to n_max each,
    usually fewer), so its progress and ETA are upper bounds."""
    return n_queries * (p["n_per_query"] if p["strategy"] == "vrt" else p["n_max"])


def _report(result: strategies.DartResult, out_name: str | None) -> None:
    totals = result.summary()
    print(
        f"dart: {totals['queries']} queries, {totals['trials']} trials, {totals['kept']} responses kept, "
        f"{totals['covered']} covered; the verifier abstained on {totals['abstained']} (not kept)"
    )
    if result.uncovered:
        shown = ", ".join(result.uncovered[:10]) + (" ..." if len(result.uncovered) > 10 else "")
        print(f"dart: {len(result.uncovered)} uncovered (no correct response): {shown}")
    if out_name:
        print(f"dart: curated set: dataset {out_name}")
    else:
        print("dart: no response was kept; nothing to export")
