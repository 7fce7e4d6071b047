"""The `assay` command line. Core commands live here; each area adds its own in flows/commands/."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core

from flows.commands import LakeOption
from flows.runtime import configure_environment
from storage import Lake, UserError


class FullHelpGroup(typer.core.TyperGroup):
    """The command list with each command's whole first line (click cuts it to the terminal's width) and
    its short aliases beside it (`influence-reweight, reweight`)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        aliases: dict[object, list[str]] = {}
        for name, cmd in commands:
            if cmd is not None and cmd.hidden:
                aliases.setdefault(_function(cmd), []).append(name)
        rows = [
            (", ".join([name, *aliases.get(_function(cmd), [])]), cmd.get_short_help_str(limit=10_000))
            for name, cmd in commands
            if cmd is not None and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _function(command: click.Command) -> object:
    """The function behind a command (typer wraps it once per registered name)."""
    return getattr(command.callback, "__wrapped__", command.callback)


app = typer.Typer(
    name="assay",
    cls=FullHelpGroup,
    help="Attribution and curation for LLM fine-tuning data. Results live in a Parquet lake; query it with SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Click's plain help: wrapped to the terminal (80 columns outside one), never cut. Rich's panels cut
    # option names and help text short of the width they need.
    rich_markup_mode=None,
)


class State:
    lake_root: Path | None = None
    quiet: bool = False


def get_lake(lake: Path | None = None) -> Lake:
    return Lake(lake or State.lake_root)


@app.callback()
def main_options(
    lake: LakeOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    prefect: Annotated[
        bool | None,
        typer.Option(
            "--prefect/--no-prefect",
            help="Run jobs as Prefect flows (runs, logs and artifacts in Prefect) or as plain calls. "
            "Default: Prefect when PREFECT_API_URL names a server, else plain calls ($ASSAY_PREFECT).",
            show_default=False,
        ),
    ] = None,
) -> None:
    State.lake_root, State.quiet = lake, quiet
    if prefect is not None:
        os.environ["ASSAY_PREFECT"] = "1" if prefect else "0"
    if quiet:
        os.environ["ASSAY_QUIET"] = "1"


def echo(message: str) -> None:
    typer.echo(message)


def print_frame(frame, title: str | None = None, max_rows: int = 200) -> None:
    """A pretty table for people; wide text is cut so tables stay readable."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in frame.columns:
        table.add_column(str(column), overflow="fold", max_width=60)
    for row in frame.head(max_rows).itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    console = Console(width=max(120, Console().width))
    console.print(table)
    if len(frame) > max_rows:
        console.print(f"... {len(frame) - max_rows} more rows (use --format csv --out FILE for all)")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- commands
@app.command()
def ingest(
    path: Annotated[
        Path, typer.Argument(help="JSONL, JSON, Parquet, CSV, or a datasets save_to_disk directory.")
    ],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name in the lake.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl|json|parquet|csv|hf (default: by suffix).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split of a DatasetDict directory.")] = None,
    prompt_col: Annotated[str, typer.Option(help="Column with the prompt.")] = "prompt",
    response_col: Annotated[str, typer.Option(help="Column with the response.")] = "response",
    messages_col: Annotated[
        str, typer.Option(help="Column with chat messages [{role, content}].")
    ] = "messages",
    domain_col: Annotated[str, typer.Option(help="Column with the domain.")] = "domain",
    domain: Annotated[
        str | None, typer.Option(help="One domain for every row (instead of a column).")
    ] = None,
    difficulty_col: Annotated[
        str, typer.Option(help="Column with a numeric or easy/medium/hard difficulty.")
    ] = "difficulty",
    id_col: Annotated[
        str | None,
        typer.Option(help="Column with stable ids (default: id/example_id/task_id, else a content hash)."),
    ] = None,
    answer_col: Annotated[str, typer.Option(help="Column with the reference final answer.")] = "answer",
) -> None:
    """Ingest a file of examples as a dataset version. Re-ingesting the same content is a no-op."""
    from dataclasses import asdict

    from flows.runtime import run_job
    from storage.ingest import ColumnMap, normalize, read_rows

    columns = ColumnMap(
        prompt=prompt_col,
        response=response_col,
        messages=messages_col,
        domain=domain_col,
        difficulty=difficulty_col,
        id=id_col,
        answer=answer_col,
        domain_value=domain,
    )
    normalize(read_rows(path, fmt, split), dataset, columns, str(path))  # user errors before any job starts
    lake = get_lake()
    result = run_job(
        "flows.ingest:ingest_flow",
        path=str(path),
        dataset=dataset,
        lake_root=str(lake.root),
        columns=asdict(columns),
        fmt=fmt,
        split=split,
    )
    state = "unchanged (already ingested)" if result["unchanged"] else "new version"
    domains = ", ".join(f"{k}: {v}" for k, v in sorted(result["domains"].items()))
    echo(
        f"{dataset} {result['version']}: {result['rows']} examples, {state} [{domains}] run {result['run_id']}"
    )


@app.command()
def sql(
    query: Annotated[
        str, typer.Argument(help="One SELECT / WITH / EXPLAIN statement over the lake's views.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="table|csv|json|parquet")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="Write the result to this file.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before the query is stopped.")] = 60.0,
    memory: Annotated[str, typer.Option(help="DuckDB memory limit.")] = "2GB",
) -> None:
    """Run SQL (read-only, gated) over the lake: examples, scores, samples, labels, weights, runs, ..."""
    from storage.gate import run_sql

    if fmt not in ("table", "csv", "json", "parquet"):
        raise UserError(f"--format {fmt}: expected table, csv, json or parquet")
    if fmt == "parquet" and out is None:
        raise UserError("--format parquet needs --out FILE")
    if out is not None and not out.parent.exists():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")
    lake = get_lake()
    result = run_sql(lake.root, query, timeout_s=timeout, memory_limit=memory)
    if fmt == "parquet":
        import io

        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(result, buffer)
        write_atomic(out, buffer.getvalue())
        echo(f"wrote {result.num_rows} rows to {out}")
        return
    frame = result.to_pandas()
    if fmt == "table" and out is None:
        print_frame(frame)
        return
    if fmt == "csv":
        text = frame.to_csv(index=False)
    elif fmt == "json":
        text = frame.to_json(orient="records", lines=True, date_format="iso", default_handler=str)
    else:
        text = frame.to_string(index=False) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text.encode())
        echo(f"wrote {len(frame)} rows to {out}")


@app.command()
def runs(
    kind: Annotated[
        str | None, typer.Option(help="Only runs of this kind (ingest, attribute, curate, ...).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
) -> None:
    """Runs in the lake with status and lineage (what each read, with which parameters)."""
    import pandas as pd

    records = [r for r in get_lake().runs() if kind is None or r["kind"] == kind]
    if as_json:
        for record in records:
            echo(json.dumps(record, default=str))
        return
    if not records:
        echo("no runs")
        return
    rows = []
    for r in records:
        seconds = (r["finished_at"] - r["started_at"]).total_seconds() if r["finished_at"] else None
        rows.append(
            {
                "run_id": r["run_id"],
                "kind": r["kind"],
                "method": r["method"],
                "status": r["status"],
                "started": r["started_at"].strftime("%Y-%m-%d %H:%M:%S"),
                "seconds": None if seconds is None else round(seconds, 1),
                "inputs": r["inputs"],
                "params": r["params"],
                "error": r["error"] or "",
            }
        )
    print_frame(pd.DataFrame(rows), title=f"runs in {get_lake().root}")


@app.command()
def tables() -> None:
    """Tables and views of the lake with their columns and row counts (complete runs)."""
    import pandas as pd

    from storage.catalog import EXTRA_VIEWS
    from storage.schemas import TABLES

    lake = get_lake()
    con = lake.connect()
    try:
        rows = []
        for name in [*TABLES.keys(), *EXTRA_VIEWS]:
            described = con.execute(f"DESCRIBE {name}").fetchall()
            count = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
            rows.append(
                {"table": name, "rows": count, "columns": ", ".join(f"{c[0]} {c[1]}" for c in described)}
            )
    finally:
        con.close()
    print_frame(pd.DataFrame(rows), title=f"lake {lake.root}")


DEMO_QUERIES = [
    (
        "Examples per domain",
        (
            "SELECT dataset, domain, count(*) AS examples, round(avg(difficulty), 2) AS "
            "mean_difficulty FROM examples GROUP BY ALL ORDER BY ALL"
        ),
    ),
    ("Runs so far", "SELECT kind, method, status, count(*) AS runs FROM runs GROUP BY ALL ORDER BY ALL"),
]


@app.command()
def demo(
    quick: Annotated[
        bool, typer.Option("--quick", help="A small corpus and a shorter training run.")
    ] = False,
) -> None:
    """Build the offline demo corpus and reference model, run every stage, print SQL and answers."""
    from flows.runtime import run_job
    from storage.gate import run_sql

    lake = get_lake()
    summary = run_job("flows.demo:demo_flow", lake_root=str(lake.root), quick=quick)
    echo(f"lake: {lake.root}")
    for name, result in summary["ingested"].items():
        state = "unchanged" if result["unchanged"] else "ingested"
        echo(
            f"  {name}: {result['rows']} examples {state} (version {result['version']}, {result['domains']})"
        )
    echo(f"reference model: {summary['model']}")
    for stage, run_id in summary.get("runs", {}).items():
        echo(f"  {stage}: run {run_id}")
    if summary.get("export"):
        echo(f"exported dataset: {summary['export']['path']} ({summary['export']['rows']} rows)")
    if summary.get("unlearning_refused"):
        echo(f"unlearning kept nothing: {summary['unlearning_refused']}")
    for title, query in DEMO_QUERIES + summary.get("queries", []):
        echo(f'\n-- {title}\nassay sql "{query}"')
        print_frame(run_sql(lake.root, query).to_pandas())
    if summary.get("report"):
        echo(f"\nreport: {summary['report']}")


_REGISTERED: list[bool] = []


def _register_command_modules() -> None:
    if _REGISTERED:
        return
    _REGISTERED.append(True)
    from flows import commands

    for module in pkgutil.iter_modules(commands.__path__):
        mod = importlib.import_module(f"flows.commands.{module.name}")
        if hasattr(mod, "register"):
            mod.register(app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv`; returns the exit status (2 for every user error)."""
    configure_environment()
    _register_command_modules()
    try:
        app(args=argv, prog_name="assay")  # standalone: click reports usage errors with status 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    # `python -m flows.cli`: run the imported module's app, so that the command modules (which import
    # flows.cli) and this entry point share one State.
    from flows.cli import main as imported_main

    imported_main()
