"""The `assay` command line. Core commands live here; each area adds its own in flows/commands/."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core
from typer.core import TyperCommand

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


class PlainHelp(TyperCommand):
    """A command whose --help is click's plain text: wrapped to the terminal, never cut (rich's panels
    truncate options and help with '…' on a narrow terminal or outside one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rich_markup_mode = None


def print_frame(frame, title: str | None = None, max_rows: int = 200) -> None:
    """A pretty table for people; wide text is cut so tables stay readable. `frame` is a pandas
    DataFrame or a `storage.gate.Rendered` result; a missing value shows as NULL."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    if hasattr(frame, "rows") and hasattr(frame, "columns") and not hasattr(frame, "iloc"):
        columns, rows, more = frame.columns, frame.rows[:max_rows], frame.more or len(frame.rows) > max_rows
    else:
        columns, rows = list(frame.columns), list(frame.head(max_rows).itertuples(index=False))
        more = len(frame) > max_rows
    for column in columns:
        table.add_column(str(column), overflow="fold", max_width=60)
    for row in rows:
        table.add_row(*[_cell(v) for v in row])
    console = Console(width=max(120, Console().width))
    console.print(table)
    if more:
        console.print(
            f"... more rows (first {max_rows} shown; --out FILE.csv or FILE.parquet writes them all)"
        )


def _cell(value) -> str:
    """One table cell: NULL for a missing value (None, NaN, NaT in a pandas frame), 6 significant digits
    for floats, long text cut at 200 characters."""
    import pandas as pd

    if value is None or (
        not isinstance(value, list | tuple | dict) and pd.api.types.is_scalar(value) and pd.isna(value)
    ):
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def write_atomic(path: Path, data: bytes) -> None:
    """`data` as the file `path`, written aside and renamed into place (storage.outputs)."""
    from storage.outputs import write_file_atomically

    write_file_atomically(path, data)


def protected_paths() -> list[Path]:
    """What no --out may replace or hold: the lake and the project's state folder."""
    from flows.runtime import state_dir

    return [get_lake().root, state_dir()]


# ---------------------------------------------------------------------------------- commands
@app.command(cls=PlainHelp)
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
    dedupe: Annotated[
        bool,
        typer.Option(
            "--dedupe",
            help="Drop rows that repeat an earlier row exactly (same id and content); keep the first.",
        ),
    ] = False,
) -> None:
    """Ingest a file of examples as a dataset version. Re-ingesting the current version is a no-op;
    re-ingesting an earlier version makes it current again. A bad row is refused with its line and
    column, and nothing is written."""
    from dataclasses import asdict

    from flows.runtime import run_job
    from storage.ingest import FORMATS, ColumnMap
    from storage.names import check_name

    check_name(dataset, "--dataset")  # cheap checks before any job starts; the file is read once, in the job
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
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
    lake = get_lake()
    result = run_job(
        "flows.ingest:ingest_flow",
        path=str(path),
        dataset=dataset,
        lake_root=str(lake.root),
        columns=asdict(columns),
        fmt=fmt,
        split=split,
        dedupe=dedupe,
    )
    if result.get("restored"):
        state = "restored (an earlier version, current again)"
    else:
        state = "unchanged (already ingested)" if result["unchanged"] else "new version"
    dropped = result.get("duplicates_dropped") or 0
    if dropped:
        state += f", {dropped} exact duplicates dropped"
    domains = ", ".join(f"{k}: {v}" for k, v in sorted(result["domains"].items()))
    echo(
        f"{dataset} {result['version']}: {result['rows']} examples, {state} [{domains}] run {result['run_id']}"
    )


OUT_HELP = "Write the result to FILE (.csv, .json/.jsonl, .parquet, .txt: the suffix picks the format)."
FORMAT_HELP = (
    "table|csv|json|parquet (json: one JSON object per line). Default: by --out's suffix, else table."
)


@app.command(cls=PlainHelp)
def sql(
    query: Annotated[
        str, typer.Argument(help="One SELECT / WITH / EXPLAIN statement over the lake's views.")
    ],
    fmt: Annotated[str | None, typer.Option("--format", help=FORMAT_HELP)] = None,
    out: Annotated[Path | None, typer.Option("--out", help=OUT_HELP)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds before the query is stopped (at most 86400).")
    ] = 60.0,
    memory: Annotated[
        str | None,
        typer.Option(
            help="DuckDB's memory limit, e.g. 4GB (default: DuckDB's own, 80% of RAM); it spills beyond."
        ),
    ] = None,
    max_result: Annotated[
        str, typer.Option(help="Largest result assay holds, e.g. 2GB; past it the query stops.")
    ] = "2GB",
) -> None:
    """Run SQL (read-only, gated) over the lake: examples, scores, samples, labels, weights, runs, ...
    NULL prints as NULL; JSON columns (runs.params, runs.inputs) come out as JSON objects."""
    from storage.gate import Gate, check_memory, check_statement, check_timeout
    from storage.outputs import prepare_output
    from storage.results import output_format, render_text, write_result

    fmt = output_format(fmt, out)
    check_timeout(timeout)
    if memory is not None:
        check_memory(memory)
    check_memory(max_result, "--max-result")
    check_statement(query)
    target = prepare_output(out, kind="file", force=force, protected=protected_paths()) if out else None
    with Gate(get_lake().root, timeout_s=timeout, memory_limit=memory, max_result=max_result) as gate:
        if target is not None:
            rows = write_result(gate, query, fmt, target)
            echo(f"wrote {rows} rows to {out}")
        elif fmt == "table":
            print_frame(gate.render(query, max_rows=200))
        else:
            sys.stdout.write(render_text(gate, query, fmt)[0])


RUNS_SQL = "SELECT {columns} FROM runs {where} ORDER BY started_at, run_id"
RUNS_TABLE = """run_id, kind, method, status, strftime(started_at, '%Y-%m-%d %H:%M:%S') AS started,
    round(epoch(finished_at) - epoch(started_at), 1) AS seconds, inputs, params, coalesce(error, '') AS error"""


@app.command(cls=PlainHelp)
def runs(
    kind: Annotated[
        str | None, typer.Option(help="Only runs of this kind (ingest, attribute, curate, ...).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table|csv|json (json: one JSON object per run, like sql).")
    ] = "table",
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="Same as --format json.")] = False,
) -> None:
    """Runs in the lake with status and lineage (what each read, with which parameters)."""
    from storage.gate import Gate
    from storage.results import FORMATS, render_text

    fmt = "json" if as_json else fmt
    if fmt not in FORMATS or fmt == "parquet":
        raise UserError(f"--format {fmt}: expected table, csv or json")
    from storage.catalog import quote

    lake = get_lake()
    where = "" if kind is None else f"WHERE kind = {quote(kind)}"
    with Gate(lake.root) as gate:
        if fmt == "table":
            result = gate.render(RUNS_SQL.format(columns=RUNS_TABLE, where=where))
            if not result.rows:
                echo("no runs")
                return
            print_frame(result, title=f"runs in {lake.root}")
            return
        sys.stdout.write(render_text(gate, RUNS_SQL.format(columns="*", where=where), fmt)[0])


@app.command(cls=PlainHelp)
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
