"""Fine-tuning records and the dataset card for an exported curated set. Pure: frames in, frames / text out.

A record holds the example's text in one of four styles, plus `example_id`, `dataset`, `group` and the two
channels of the curated set (curation/curated.py), never multiplied into one:
- `chat`: `messages` (a list of {role, content}; TRL's conversational language-modeling format: a plain
  TRL run trains on every turn, the system prompt and user turns included);
- `chat_completion`: `prompt` (the turns before the final response) and `completion` (that response), both
  lists of {role, content}: TRL's conversational prompt-completion format, which applies the chat template
  and puts the loss on the final response only, the tokens attribution scored;
- `prompt_completion`: `prompt`, `completion` (TRL's prompt-completion format; a conversation is flattened
  to its contents, one per line, the prompt ending with a newline, as `attribution.lm_data` renders a
  record for a model without a chat template);
- `text`: `text`, the prompt and the completion as one string (TRL's language-modeling format).

Unmaterialised: one row per example of the set with `copies` (its draws) and `loss_weight`. Materialised:
one row per draw in training order (`step`, `slot`; the mix's own sequence when the run has one), with
`loss_weight`, the `phase` of the schedule and `copy` (the example's k-th draw).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curation import mixing

STYLES = ("chat", "chat_completion", "prompt_completion", "text")
STYLE_ALIASES = {"prompt_response": "prompt_completion"}  # the name before TRL's format was followed
TEXT_COLUMNS = {
    "chat": ["messages"],
    "chat_completion": ["prompt", "completion"],
    "prompt_completion": ["prompt", "completion"],
    "text": ["text"],
}
KEY = ["dataset", "example_id"]
# The Hub's size categories: (upper bound, name).
SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]


def style_name(style: str) -> str:
    """The record style, old names mapped to their current one; ValueError for an unknown style."""
    style = STYLE_ALIASES.get(style, style)
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    return style


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


def split_conversation(
    messages: list[dict[str, str]], example_id: Any = None
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(the turns before the final response, [the final response]): TRL's conversational prompt-completion."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"example {example_id!r}: the conversation must end with the assistant's response")
    return messages[:-1], messages[-1:]


def prompt_and_completion(row: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, completion) of an example: the conversation before its last assistant message, contents
    one per line and ending with a newline, and that message (attribution.lm_data's plain rendering, so
    the text trained on is the text attributed)."""
    from attribution.lm_data import prompt_text, split_record  # torch comes with it: only when exporting

    record = {"messages": chat_messages(row)}
    try:
        return prompt_text(None, record, use_chat_template=False), split_record(record)[1]
    except ValueError as exc:
        raise ValueError(f"example {row.get('example_id')!r}: {exc}") from None


def text_columns(examples: pd.DataFrame, style: str) -> pd.DataFrame:
    """The text of each example in `style` (columns TEXT_COLUMNS[style]), aligned with `examples`."""
    style = style_name(style)
    rows = examples.to_dict("records")
    if style == "chat":
        return pd.DataFrame({"messages": pd.Series([chat_messages(r) for r in rows], dtype=object)})
    if style == "chat_completion":
        turns = [split_conversation(chat_messages(r), r.get("example_id")) for r in rows]
        return pd.DataFrame(
            {
                "prompt": pd.Series([p for p, _ in turns], dtype=object),
                "completion": pd.Series([c for _, c in turns], dtype=object),
            }
        )
    pairs = [prompt_and_completion(r) for r in rows]
    if style == "text":
        return pd.DataFrame({"text": [p + c for p, c in pairs]})
    return pd.DataFrame({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})


def build_records(
    examples: pd.DataFrame, weights: pd.DataFrame, groups: pd.Series | None = None, style: str = "chat"
) -> pd.DataFrame:
    """One record per example of the set: examples (dataset, example_id, prompt / response / messages)
    joined with weights (dataset, example_id, copies, loss_weight); `groups` is aligned with `examples`.
    Examples with 0 copies are not in the set. A loss weight of 0 is kept (a stage asked for it)."""
    frame = examples.reset_index(drop=True).copy()
    frame["group"] = (
        groups.reset_index(drop=True).astype(str).to_numpy()
        if groups is not None
        else pd.Series([None] * len(frame), dtype=object)
    )
    merged = frame.merge(weights[[*KEY, "copies", "loss_weight"]], on=KEY, how="inner", validate="one_to_one")
    merged = merged[merged["copies"] > 0].reset_index(drop=True)
    out = text_columns(merged, style)
    out["example_id"] = merged["example_id"].astype(str)
    out["dataset"] = merged["dataset"].astype(str)
    out["group"] = merged["group"].to_numpy()
    out["copies"] = merged["copies"].to_numpy(dtype=np.int64)
    out["loss_weight"] = merged["loss_weight"].to_numpy(dtype=np.float64)
    return out


def training_order(
    records: pd.DataFrame,
    draws: pd.DataFrame | None = None,
    phase_of_step: np.ndarray | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The materialised records: one row per draw, in training order.

    With `draws` (step, slot, dataset, example_id: the mix's sequence) the rows follow it exactly and
    `phase_of_step` gives each step's schedule phase. Without (a run that wrote no sequence), each example
    appears `copies` times in a seeded shuffle, one draw per step, phase 0."""
    position = pd.Series(np.arange(len(records)), index=pd.MultiIndex.from_frame(records[KEY]))
    if draws is not None and len(draws):
        ordered = draws.sort_values(["step", "slot"], kind="stable")
        index = position.reindex(pd.MultiIndex.from_frame(ordered[KEY])).to_numpy()
        if np.isnan(index.astype(float)).any():
            raise ValueError("the draw sequence names an example that is not in the set")
        index = index.astype(np.int64)
        step = ordered["step"].to_numpy(dtype=np.int64)
        slot = ordered["slot"].to_numpy(dtype=np.int64)
    else:
        index = mixing.epoch_sequence(records["copies"].to_numpy(dtype=np.int64), seed=seed)
        step, slot = np.arange(len(index), dtype=np.int64), np.zeros(len(index), dtype=np.int64)
    phases = np.zeros(len(index), dtype=np.int64)
    if phase_of_step is not None and len(phase_of_step):
        phases = np.asarray(phase_of_step, dtype=np.int64)[step]
    out = records.iloc[index].drop(columns=["copies"]).reset_index(drop=True)
    out.insert(0, "step", step)
    out.insert(1, "slot", slot)
    out["phase"] = phases
    out["copy"] = pd.Series(index).groupby(index).cumcount().to_numpy(dtype=np.int64)
    return out


def group_summary(groups: pd.Series, weights: pd.DataFrame) -> pd.DataFrame:
    """Per group of a run's weights rows (`groups` aligned with `weights`): examples (rows), kept (copies >
    0), draws, effective epochs (`mixing.effective_epochs`: the one definition), the mean loss weight per
    draw and the group's share of the loss mass (sum over draws of loss_weight: where the gradient goes)."""
    copies = weights["copies"].to_numpy(dtype=np.int64)
    loss_weight = weights["loss_weight"].to_numpy(dtype=np.float64)
    labels = groups.astype(str).to_numpy(dtype=object)
    epochs = mixing.effective_epochs(labels, copies)
    frame = pd.DataFrame({"group": labels, "draws": copies, "mass": copies * loss_weight, "kept": copies > 0})
    per = frame.groupby("group", sort=True).agg(kept=("kept", "sum"), mass=("mass", "sum"))
    summary = pd.DataFrame(
        {
            "examples": epochs["examples"].astype(np.int64),
            "kept": per["kept"].astype(np.int64),
            "draws": epochs["draws"].astype(np.int64),
            "effective_epochs": epochs["effective_epochs"],
            "loss_weight_per_draw": np.where(
                epochs["draws"] > 0, per["mass"] / epochs["draws"].clip(lower=1), 0.0
            ),
            "loss_share": per["mass"] / per["mass"].sum() if per["mass"].sum() > 0 else 0.0,
        }
    )
    summary.index.name = "group"
    return summary


def size_category(rows: int) -> str:
    """The Hub's size category of a dataset of `rows` rows."""
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1B")


def _markdown_table(frame: pd.DataFrame) -> str:
    cols = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in frame.iterrows():
        cells = [str(idx)] + [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class CardFacts:
    """What the dataset card says about an export (curation/exporter.py fills it in)."""

    title: str
    run_id: str
    fmt: str
    style: str
    materialised: bool
    rows: int
    splits: dict[str, list[str]]  # split name -> data files (glob patterns for hf)
    summary: pd.DataFrame
    lineage: list[dict[str, Any]]
    source_datasets: dict[str, str]  # name -> version
    schedule_file: str | None = None
    schedule: pd.DataFrame | None = None  # step, group, tau, probability
    languages: list[str] = field(default_factory=list)


def _load_line(facts: CardFacts) -> str:
    if facts.fmt == "hf":
        return (
            "`datasets.load_from_disk(PATH)` or `datasets.load_dataset(PATH)` (PATH: this folder; "
            "a DatasetDict with split `train`"
            + (" and one split per phase" if len(facts.splits) > 1 else "")
            + ")"
        )
    builder = "json" if facts.fmt == "jsonl" else "parquet"
    first = facts.splits["train"][0]
    return f'`datasets.load_dataset(PATH)` or `datasets.load_dataset("{builder}", data_files="PATH/{first}")`'


def _records_line(facts: CardFacts) -> str:
    text = {
        "chat": "`messages` (a list of {role, content}: TRL's conversational format; a plain TRL run trains "
        "on every turn, `curation.training.WeightedSFTTrainer` on the final response only)",
        "chat_completion": "`prompt`, `completion` (lists of {role, content}: TRL's conversational "
        "prompt-completion format: the chat template applies and the loss is on the final response)",
        "prompt_completion": "`prompt`, `completion` (TRL's prompt-completion format: the loss is on the completion)",
        "text": "`text` (TRL's language-modeling format)",
    }[facts.style]
    common = (
        "`example_id`, `dataset`, `group`, and `loss_weight`: multiply the example's loss by it (it is never "
        "folded into how often a row appears)"
    )
    if facts.materialised:
        return (
            f"Records: {text}, {common}. Each row is one draw: `step` and `slot` give the training order, "
            "`phase` the schedule's phase, `copy` the example's k-th draw."
        )
    return (
        f"Records: {text}, {common}; one row per example, `copies` = how often the curated set draws it "
        "(0-copy examples are left out)."
    )


def _order_lines(facts: CardFacts) -> list[str]:
    if facts.materialised:
        lines = [
            (
                "Rows are in training order. Train **without shuffling** (transformers: "
                '`TrainingArguments(train_sampling_strategy="sequential")`; TRL: `SFTConfig(shuffle_dataset=False)` '
                "and the same sampling strategy), or use `curation.training.WeightedSFTTrainer` / `WeightedTrainer`, "
                "which keep this order and apply `loss_weight`."
            )
        ]
        phases = [s for s in facts.splits if s != "train"]
        if phases:
            lines.append(
                f"The same rows split by schedule phase: {', '.join(f'`{s}`' for s in phases)} "
                "(train on them in this order)."
            )
        return lines
    return [
        (
            "One row per example: to train in the curated proportions, draw batches with "
            "`curation.training.ScheduleSampler.from_export(PATH, batch_size)` (it follows the mixture schedule), "
            "or export with `--materialise` for the training order itself. Apply `loss_weight` with "
            "`curation.training.WeightedSFTTrainer` / `WeightedTrainer`."
        )
    ]


def _schedule_lines(facts: CardFacts) -> list[str]:
    schedule = facts.schedule
    if not facts.schedule_file or schedule is None or not len(schedule):
        return []
    taus = schedule.drop_duplicates("step").sort_values("step")["tau"].to_numpy()
    phase = mixing.schedule_phases(taus)
    starts = [0] + [i for i in range(1, len(taus)) if phase[i] != phase[i - 1]]
    text = ", ".join(f"from step {s}: tau {taus[s]:g}" for s in starts[:6])
    if len(starts) > 6:
        text += f", ... ({len(starts)} phases: a gradual schedule)"
    return [
        "## Mixture schedule",
        "",
        (
            f"`{facts.schedule_file}`: each group's sampling probability per training step (step, group, tau, "
            f"probability), {len(taus)} steps; {text}."
        ),
        "",
    ]


def card_metadata(facts: CardFacts) -> Any:
    """The card's front matter as `huggingface_hub.DatasetCardData` (the Hub and `datasets` read it)."""
    from huggingface_hub import DatasetCardData

    configs = [
        {
            "config_name": "default",
            "data_files": [{"split": split, "path": paths} for split, paths in facts.splits.items()],
        }
    ]
    return DatasetCardData(
        pretty_name=facts.title,
        language=facts.languages or None,
        license=None,  # left for the user: the source datasets' licenses decide it
        size_categories=[size_category(facts.rows)],
        task_categories=["text-generation"],
        source_datasets=sorted(facts.source_datasets) or None,
        tags=["assay", "fine-tuning", "sft", "curated"],
        configs=configs,
        assay={"run_id": facts.run_id, "materialised": facts.materialised, "style": facts.style},
    )


def dataset_card(facts: CardFacts) -> str:
    """README.md for the exported set, built with `huggingface_hub.DatasetCard`."""
    from huggingface_hub import DatasetCard

    sources = ", ".join(f"`{name}` (version `{v}`)" for name, v in sorted(facts.source_datasets.items()))
    body = [
        f"# {facts.title}",
        "",
        f"Exported by assay from run `{facts.run_id}` as `{facts.fmt}`. Load with {_load_line(facts)}.",
        "",
        _records_line(facts),
        "",
        *_order_lines(facts),
        "",
        f"Source datasets (assay lake): {sources or 'none'}. License: not set here; it is the source "
        "datasets' to decide: add `license:` to the front matter before sharing."
        + ("" if facts.languages else " Language: not given (`assay export --language`)."),
        "",
        "## Counts per group",
        "",
        (
            "`examples`: examples of the curated set; `kept`: those drawn at least once; `draws`: total copies; "
            "`effective_epochs`: draws / examples (well above 1: a small group is repeated and may overfit); "
            "`loss_weight_per_draw`: mean loss weight of a draw; `loss_share`: the group's share of the loss "
            "mass (draws x loss weight)."
        ),
        "",
        _markdown_table(facts.summary),
        "",
        *_schedule_lines(facts),
        "## Lineage",
        "",
    ]
    for run in facts.lineage:
        params = run.get("params")
        params = params if isinstance(params, str) else json.dumps(params, sort_keys=True, default=str)
        body.append(
            f"- `{run.get('run_id')}` {run.get('kind')}/{run.get('method')}"
            f" (finished {run.get('finished_at')}): params `{params}`"
        )
    body.append("")
    content = f"---\n{card_metadata(facts).to_yaml()}\n---\n\n" + "\n".join(body)
    return str(DatasetCard(content))


def data_file_names(fmt: str, splits: Iterable[str]) -> dict[str, list[str]]:
    """Where each split's rows go inside the export folder (hf: save_to_disk's arrow files)."""
    if fmt == "hf":
        # save_to_disk's shards only: `datasets` writes cache-*.arrow beside them on every .map()
        return {s: [f"{s}/data-*.arrow"] for s in splits}
    suffix = {"jsonl": "jsonl", "parquet": "parquet"}[fmt]
    return {s: [f"data/{s}.{suffix}"] for s in splits}
