"""Fine-tuning records and the dataset card for an exported curated set. Pure: frames in, frames / text out.

A record is chat (`messages`: a list of {role, content}) or prompt / response, plus `example_id`,
`dataset`, `group` and the curation's `weight`. Without materialising, one row per kept example whose
`weight` is the curation weight times its copies (the same expected loss as the copies would give)
and `copies` says how many it stood for; materialised, an example appears `copies` times (seeded
shuffle), each row with the curation weight and a `copy` number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

STYLES = ("chat", "prompt_response")


def _messages(value: Any) -> list[dict[str, str]]:
    """Stored messages (a list / array of structs, a JSON string, or empty) as plain dicts."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in list(value)]


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def chat_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The conversation of an example: its `messages`, else user prompt + assistant response."""
    messages = _messages(row.get("messages"))
    if messages:
        return messages
    prompt, response = _text(row.get("prompt")), _text(row.get("response"))
    if prompt is None or response is None:
        raise ValueError(f"example {row.get('example_id')!r} has neither messages nor prompt and response")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def prompt_and_response(row: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, response) of an example: its own columns, else the conversation before the last
    assistant message (contents one per line) and that message."""
    prompt, response = _text(row.get("prompt")), _text(row.get("response"))
    if prompt is not None and response is not None:
        return prompt, response
    messages = _messages(row.get("messages"))
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError(f"example {row.get('example_id')!r} has no response and no assistant message")
    return "\n".join(m["content"] for m in messages[:last]), messages[last]["content"]


def build_records(
    examples: pd.DataFrame,
    weights: pd.DataFrame,
    groups: pd.Series | None = None,
    style: str = "chat",
    materialise: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Records for fine-tuning from examples (dataset, example_id, prompt / response / messages) and
    weights (dataset, example_id, weight, copies). `groups` is aligned with `examples` (the mixing
    groups; optional). Examples without a weights row, or with zero weight or copies, are left out."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    key = ["dataset", "example_id"]
    frame = examples.reset_index(drop=True).copy()
    frame["group"] = (
        groups.reset_index(drop=True).astype(str)
        if groups is not None
        else pd.Series([None] * len(frame), dtype=object)
    )
    merged = frame.merge(weights[[*key, "weight", "copies"]], on=key, how="inner", validate="one_to_one")
    merged = merged[(merged["weight"] > 0) & (merged["copies"] > 0)].reset_index(drop=True)

    out = pd.DataFrame(
        {
            "example_id": merged["example_id"].astype(str),
            "dataset": merged["dataset"].astype(str),
            "group": merged["group"],
        }
    )
    rows = merged.to_dict("records")
    if style == "chat":
        out.insert(0, "messages", pd.Series([chat_messages(r) for r in rows], dtype=object))
    else:
        pairs = [prompt_and_response(r) for r in rows]
        out.insert(0, "prompt", [p for p, _ in pairs])
        out.insert(1, "response", [r for _, r in pairs])
    copies = merged["copies"].to_numpy(dtype=np.int64)
    weight = merged["weight"].to_numpy(dtype=np.float64)
    if not materialise:
        out["weight"] = weight * copies
        out["copies"] = copies
        return out
    order = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(out)), copies))
    # copy number: the k-th appearance of an example in the shuffled order.
    copy_no = pd.Series(order).groupby(order).cumcount().to_numpy()
    result = out.iloc[order].reset_index(drop=True)
    result["weight"] = weight[order]
    result["copy"] = copy_no.astype(np.int64)
    return result


def group_summary(groups_before: pd.Series, records: pd.DataFrame, materialised: bool) -> pd.DataFrame:
    """Per group: examples in the pool, examples kept, rows exported, total weight, effective epochs
    (draws per pool example: sum of copies / examples before)."""
    before = groups_before.astype(str).value_counts().rename("examples_before")
    grouped = records.groupby("group", dropna=False)
    kept = grouped["example_id"].nunique().rename("examples_after")
    rows = grouped.size().rename("rows")
    draws = rows if materialised else grouped["copies"].sum().rename("draws")
    weight = grouped["weight"].sum().rename("weight_sum")
    summary = pd.concat([before, kept, rows, draws.rename("draws"), weight], axis=1).fillna(0)
    summary.index.name = "group"
    for col in ("examples_before", "examples_after", "rows", "draws"):
        summary[col] = summary[col].astype(np.int64)
    summary["effective_epochs"] = np.where(
        summary["examples_before"] > 0, summary["draws"] / summary["examples_before"].clip(lower=1), 0.0
    )
    return summary.sort_index()


def _markdown_table(frame: pd.DataFrame) -> str:
    cols = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in frame.iterrows():
        cells = [str(idx)] + [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dataset_card(
    *,
    title: str,
    run_id: str,
    fmt: str,
    style: str,
    materialised: bool,
    data_files: Iterable[str],
    lineage: list[dict[str, Any]],
    summary: pd.DataFrame,
    schedule_file: str | None,
    schedule: pd.DataFrame | None = None,
) -> str:
    """README.md for the exported set: front matter that `datasets` reads (data files for the
    default config), what a record holds, counts per group before and after, and the lineage of
    runs with their parameters (the runs table rows, oldest first)."""
    files = list(data_files)
    front = ["---", "tags:", "- assay", "- fine-tuning"]
    if fmt in ("jsonl", "parquet") and files:
        front += ["configs:", "- config_name: default", "  data_files:", "  - split: train", "    path:"]
        front += [f"    - {f}" for f in files]
    front.append("---")
    record = "`messages` (list of {role, content})" if style == "chat" else "`prompt`, `response`"
    weight_note = (
        "each row is one draw of the mixture (`copy` numbers an example's repeats); "
        "`weight` is the curation's loss weight"
        if materialised
        else "one row per kept example; `weight` = curation weight x copies (use it as the loss "
        "weight), `copies` = draws it stands for"
    )
    first = files[0] if files else ""
    load = {
        "jsonl": f'datasets.load_dataset("json", data_files="PATH/{first}")` or `datasets.load_dataset(PATH)',
        "parquet": f'datasets.load_dataset("parquet", data_files="PATH/{first}")` or '
        "`datasets.load_dataset(PATH)",
        "hf": "datasets.load_from_disk(PATH)",
    }[fmt]
    parts = [
        "\n".join(front),
        "",
        f"# {title}",
        "",
        f"Exported by assay from run `{run_id}` as `{fmt}`. Load with `{load}` (PATH: this folder).",
        "",
        f"Records: {record}, `example_id`, `dataset`, `group`; {weight_note}.",
        "",
        "## Counts per group",
        "",
        (
            "`examples_before`: examples of the datasets the run read; `examples_after`: examples kept; `rows`: rows in this export; "
            "`draws`: total copies; `effective_epochs`: draws / examples_before "
            "(well above 1 means a small group is repeated and may overfit)."
        ),
        "",
        _markdown_table(summary),
        "",
    ]
    if schedule_file and schedule is not None and len(schedule):
        steps = int(schedule["step"].max()) + 1
        taus = schedule.drop_duplicates("step")["tau"].to_numpy()
        changes = [0] + [i for i in range(1, len(taus)) if taus[i] != taus[i - 1]]
        phases = ", ".join(f"step {s}: tau {taus[s]:g}" for s in changes[:6])
        if len(changes) > 6:
            phases += f", ... ({len(changes)} changes; a gradual schedule)"
        parts += [
            "## Mixture schedule",
            "",
            (
                f"`{schedule_file}`: group probability per training step (step, group, tau, "
                f"probability), {steps} steps; {phases}."
            ),
            "",
        ]
    parts += ["## Lineage", ""]
    for run in lineage:
        params = run.get("params")
        params = params if isinstance(params, str) else json.dumps(params, sort_keys=True, default=str)
        parts.append(
            f"- `{run.get('run_id')}` {run.get('kind')}/{run.get('method')}"
            f" (finished {run.get('finished_at')}): params `{params}`"
        )
    parts.append("")
    return "\n".join(parts)
