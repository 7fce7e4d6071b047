"""What every flow shares: the retry policy for transient errors, result caching that re-checks the
lake, and the per-run summary published as Prefect artifacts (with the SQL that inspects the run).

Flows compose `@step` tasks that return run ids and paths, never large objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from flows.runtime import in_prefect_run
from storage import Lake, UserError

# Errors that do not go away on a retry, although they are OSErrors.
PERMANENT_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def is_transient(exc: BaseException) -> bool:
    """A flaky filesystem, network or cluster error (OSError, a lost Dask connection, a timeout):
    worth a retry. A user's error or a bug is not."""
    if isinstance(exc, (UserError, *PERMANENT_OS_ERRORS)):
        return False
    return isinstance(
        exc, OSError
    )  # ConnectionError, TimeoutError, BrokenPipeError, distributed's CommClosedError


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only transient errors."""
    from prefect.states import get_state_exception

    return is_transient(get_state_exception(state))  # the task's own exception


def retry_options() -> dict[str, Any]:
    """Three retries after 2, 4 and 8 s (with jitter), for transient errors only (`@step(retry=True)`)."""
    from prefect.tasks import exponential_backoff

    return {
        "retries": 3,
        "retry_delay_seconds": exponential_backoff(backoff_factor=2.0),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_transient,
    }


def cache_options() -> dict[str, Any]:
    """Cache a task on its inputs and its own source: an edit of the task's code invalidates the cache
    (`@step(cache=True)`). Only for tasks whose result is a pure function of their inputs (see `cached`)."""
    from prefect.cache_policies import INPUTS, TASK_SOURCE

    return {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}


def cached(step_fn: Callable[..., Any], *args: Any, valid: Callable[[Any], bool], **kwargs: Any) -> Any:
    """Call a cached step; recompute when its cached result no longer holds (a lake or folder that was
    deleted or replaced since), so a cache never hands out a run id or path that is gone."""
    result = step_fn(*args, **kwargs)
    if valid(result) or not in_prefect_run():
        return result
    return step_fn.task.with_options(refresh_cache=True)(*args, **kwargs)


def run_complete(lake_root: str | None, run_id: str | None) -> bool:
    record = Lake(lake_root).run_record(run_id) if run_id else None
    return bool(record and record["status"] == "complete")


# ------------------------------------------------------------------------------------------ summaries
def run_summary(lake: Lake, run_ids: Iterable[str]) -> list[dict[str, Any]]:
    """One row per (run, table it wrote): kind, method, status, rows, and the Parquet folder."""
    from storage.schemas import TABLES

    rows: list[dict[str, Any]] = []
    for run_id in run_ids:
        record = lake.run_record(run_id) or {}
        written = [t for t in TABLES if lake.run_dir(t, run_id).is_dir()]
        counts = {}
        if written and record.get("status") == "complete":
            union = " UNION ALL ".join(
                f"SELECT '{t}' AS t, count(*) AS n FROM {t} WHERE run_id = ?" for t in written
            )
            frame = lake.query(union, [run_id] * len(written))
            counts = dict(zip(frame["t"], frame["n"].astype(int), strict=True))
        base = {
            "run_id": run_id,
            "kind": record.get("kind"),
            "method": record.get("method"),
            "status": record.get("status"),
        }
        for table in written or [None]:
            rows.append(
                {
                    **base,
                    "table": table,
                    "rows": counts.get(table) if table else None,
                    "path": str(lake.run_dir(table, run_id)) if table else None,
                }
            )
    return rows


def inspect_sql(rows: list[dict[str, Any]]) -> list[str]:
    """The `assay sql` queries that show what the summarised runs wrote."""
    ids = list(dict.fromkeys(r["run_id"] for r in rows))
    quoted = ", ".join(f"'{i}'" for i in ids)
    queries = (
        [
            (
                f"SELECT run_id, kind, method, status, started_at, finished_at, inputs FROM runs "
                f"WHERE run_id IN ({quoted})"
            )
        ]
        if ids
        else []
    )
    for row in rows:
        if row["table"]:
            queries.append(f"SELECT * FROM {row['table']} WHERE run_id = '{row['run_id']}' LIMIT 20")
    return queries


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100] or "assay"


def publish_summary(
    key: str, title: str, lake: Lake, run_ids: Iterable[str], extra: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """A table artifact (runs and tables written) and a markdown artifact (the same, plus the SQL to
    inspect them) on the current flow run. Outside a flow run it only returns the rows."""
    rows = run_summary(lake, run_ids)
    if not in_prefect_run():
        return rows
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(key)
    create_table_artifact(rows or [{"run_id": None}], key=f"{key}-runs", description=title)
    lines = [f"# {title}", "", f"Lake: `{lake.root}`", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in (extra or {}).items()]
    lines += ["", "| run | kind | method | status | table | rows |", "|---|---|---|---|---|---|"]
    lines += [
        f"| `{r['run_id']}` | {r['kind']} | {r['method']} | {r['status']} | {r['table'] or ''} | "
        f"{'' if r['rows'] is None else r['rows']} |"
        for r in rows
    ]
    lines += ["", "## Inspect with SQL", "", "```bash"]
    lines += [f'assay --lake {lake.root} sql "{q}"' for q in inspect_sql(rows)]
    lines += ["```", ""]
    create_markdown_artifact("\n".join(lines), key=key, description=title)
    publish_reports(lake, list(dict.fromkeys(r["run_id"] for r in rows)))
    return rows


def publish_reports(lake: Lake, run_ids: list[str]) -> None:
    """Each complete run's HTML report (`assay report`), linked from a `report-<run id>` artifact of the
    current flow run. A report that cannot be rendered is a warning in the run's log, never a failed run."""
    from flows.reports import write_report
    from storage.progress import warn

    for run_id in run_ids:
        record = lake.run_record(run_id)
        if not record or record["status"] != "complete":
            continue
        try:
            write_report(lake, run_id)
        except Exception as exc:  # noqa: BLE001 - the run's results stand without their report
            warn(f"report of run {run_id} not written: {type(exc).__name__}: {exc}")


def subflow(flow_obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a flow as a subflow inside a flow run, or as its plain function otherwise (ASSAY_PREFECT=0)."""
    if in_prefect_run():
        return flow_obj(*args, **kwargs)
    return flow_obj.fn(*args, **kwargs)
