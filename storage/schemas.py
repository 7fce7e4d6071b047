"""pyarrow schemas of every lake table. A new table is one `register_table` call.

Every table carries `run_id`: the run that wrote the row. Views show complete runs only.
"""

from __future__ import annotations

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

TABLES: dict[str, pa.Schema] = {}


def register_table(name: str, schema: pa.Schema) -> pa.Schema:
    if "run_id" not in schema.names:
        schema = pa.schema([pa.field("run_id", pa.string(), nullable=False), *schema])
    TABLES[name] = schema
    return schema


register_table(
    "examples",
    pa.schema(
        [
            ("run_id", pa.string()),
            ("dataset", pa.string()),
            ("version", pa.string()),  # content hash of the normalised dataset
            ("example_id", pa.string()),  # the id column, else a content hash
            ("row_index", pa.int64()),  # position in the source file
            ("domain", pa.string()),
            ("difficulty", pa.float64()),  # numeric level; higher is harder
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("messages", pa.list_(MESSAGE)),
            ("answer", pa.string()),  # reference final answer, when known (math)
            ("meta", pa.string()),  # JSON object: every other source column (tests, entry_point, ...)
        ]
    ),
)
register_table(
    "scores",
    pa.schema([("train_id", pa.string()), ("target_id", pa.string()), ("score", pa.float64())]),
)
register_table(
    "segment_scores",
    pa.schema(
        [
            ("train_id", pa.string()),
            ("target_id", pa.string()),  # a target example id, or a target group such as 'domain=math'
            ("segment", pa.int32()),
            ("text", pa.string()),
            ("char_start", pa.int32()),
            ("char_end", pa.int32()),
            ("score", pa.float64()),
        ]
    ),
)
register_table(
    "token_scores",
    pa.schema(
        [
            ("train_id", pa.string()),
            ("target_id", pa.string()),
            ("position", pa.int32()),  # index among the response tokens
            ("token_id", pa.int64()),  # the predicted token: the row is the influence of its loss term
            ("token", pa.string()),  # decoded text, so SQL can group by token
            ("char_start", pa.int32()),  # its span in the response text
            ("char_end", pa.int32()),
            ("score", pa.float64()),
        ]
    ),
)
register_table(
    "samples",
    pa.schema(
        [
            ("query_id", pa.string()),
            ("trial", pa.int32()),
            ("response", pa.string()),
            ("correct", pa.bool_()),
            ("verdict", pa.string()),  # pass / fail / timeout / error / truncated
            ("message", pa.string()),
            ("generator", pa.string()),
        ]
    ),
)
register_table(
    "labels",
    pa.schema(
        [
            ("dataset", pa.string()),
            ("example_id", pa.string()),
            ("name", pa.string()),
            ("value", pa.float64()),
        ]
    ),
)
# A curated set: each example's two channels, never multiplied into one. `copies`: how often it is drawn
# (sampling: temperature mixing, upsampling; 0 = not in the set); `loss_weight`: what its loss is multiplied
# by (scalarization, influence weights). Stages say which channel they act on (their Params).
register_table(
    "weights",
    pa.schema(
        [
            ("dataset", pa.string()),
            ("example_id", pa.string()),
            ("copies", pa.int64()),
            ("loss_weight", pa.float64()),
        ]
    ),
)
# Scalar results of evaluations (LDS, KLoM, losses): one row per (name, key).
register_table(
    "metrics",
    pa.schema([("name", pa.string()), ("key", pa.string()), ("value", pa.float64())]),
)

# The mixture schedule of a mix run: each group's sampling probability at each training step.
# `group_name`, not `group`: GROUP is an SQL keyword and users query this table.
register_table(
    "mixture_schedule",
    pa.schema(
        [
            ("step", pa.int64()),
            ("group_name", pa.string()),
            ("tau", pa.float64()),
            ("probability", pa.float64()),
        ]
    ),
)
# The training order of a mix run: the example drawn at each (step, slot), following mixture_schedule.
# An example's copies in `weights` are its rows here; the materialised export is this sequence.
register_table(
    "mixture_draws",
    pa.schema(
        [
            ("step", pa.int64()),
            ("slot", pa.int64()),
            ("dataset", pa.string()),
            ("example_id", pa.string()),
            ("group_name", pa.string()),
        ]
    ),
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("kind", pa.string()),  # ingest / attribute / curate / unlearn / export / ...
        ("method", pa.string()),
        ("params", pa.string()),  # JSON
        ("inputs", pa.string()),  # JSON: run ids and dataset versions this run read
        ("model", pa.string()),  # model path + fingerprint, when a model was used
        ("status", pa.string()),  # running / complete / failed
        ("error", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("version", pa.string()),  # assay version + git commit
        ("pid", pa.int64()),
        ("host", pa.string()),
    ]
)
