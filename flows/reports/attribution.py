"""Report of an `attribute` run: score distributions, the influence heatmap, helpful / harmful examples,
token heatmaps and top segments. Scores follow assay's convention: positive = helpful to the target.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize

from flows.reports import html as h
from flows.reports.lakeview import LakeView, input_versions

TOP_K = 5  # helpful / harmful examples per target group
PER_TARGET_K = 3
MAX_TARGETS = 30  # targets listed one by one
MAX_KEYS = 3  # target groups shown in token heatmaps and segment tables
TOKEN_EXAMPLES = 2  # helpful and harmful training examples per token heatmap group


def _label(value) -> str:
    return (
        "(none)"
        if value is None or (isinstance(value, float) and np.isnan(value))
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def _text(row: pd.Series | dict) -> str:
    prompt, response = row.get("prompt"), row.get("response")
    prompt = "" if prompt is None or (isinstance(prompt, float) and np.isnan(prompt)) else str(prompt)
    response = (
        "" if response is None or (isinstance(response, float) and np.isnan(response)) else str(response)
    )
    return f"{prompt.strip()}\n--- response ---\n{response.strip()}" if prompt else response


class AttributionData:
    """A run's scores with the train and target examples they are about."""

    def __init__(self, view: LakeView, record: dict):
        self.view, self.run_id = view, record["run_id"]
        self.scores = view.rows("scores", self.run_id, "train_id, target_id, score")
        examples = view.dataset_examples(input_versions(record.get("inputs")))
        self.train = self._side(examples, self.scores["train_id"])
        self.targets = self._side(examples, self.scores["target_id"])

    @staticmethod
    def _side(examples: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
        """The dataset that holds most of these ids (train and targets may share id spaces)."""
        wanted = set(ids.astype(str))
        if examples.empty or not wanted:
            return pd.DataFrame(
                columns=["example_id", "dataset", "domain", "difficulty", "prompt", "response"]
            )
        best = max(
            examples["dataset"].unique(),
            key=lambda d: examples.loc[examples["dataset"] == d, "example_id"].isin(wanted).sum(),
        )
        side = examples[(examples["dataset"] == best) & examples["example_id"].isin(wanted)]
        return side.drop_duplicates("example_id").set_index("example_id", drop=False)

    def target_groups(self) -> dict[str, list[str]]:
        """'all' and one group per target domain, as the attribution stage names them."""
        groups = {"all": sorted(self.scores["target_id"].unique())}
        for domain, frame in self.targets.groupby(self.targets["domain"].map(_label)):
            groups[f"domain={domain}"] = sorted(frame["example_id"])
        return groups

    def joined(self) -> pd.DataFrame:
        frame = self.scores.merge(
            self.train[["domain", "difficulty"]].rename(
                columns={"domain": "train_domain", "difficulty": "train_difficulty"}
            ),
            left_on="train_id",
            right_index=True,
            how="left",
        )
        return frame.merge(
            self.targets[["domain"]].rename(columns={"domain": "target_domain"}),
            left_on="target_id",
            right_index=True,
            how="left",
        )


def distributions(data: AttributionData) -> h.Section:
    section = h.Section("Score distributions per target group")
    groups = data.target_groups()
    scores = data.scores
    lo, hi = np.quantile(scores["score"], [0.005, 0.995])
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    fig = h.figure(9, 3.8)
    ax = fig.add_subplot()
    rows = []
    colours = colormaps["tab10"](np.arange(len(groups)) % 10)
    for colour, (name, ids) in zip(colours, groups.items(), strict=True):
        values = scores.loc[scores["target_id"].isin(ids), "score"].to_numpy()
        ax.hist(
            np.clip(values, lo, hi),
            bins=60,
            range=(lo, hi),
            histtype="step",
            density=True,
            lw=1.6,
            color=colour,
            label=f"{name} ({len(ids)} targets)",
        )
        rows.append(
            {
                "target group": name,
                "targets": len(ids),
                "pairs": len(values),
                "mean": values.mean(),
                "std": values.std(),
                "p5": np.quantile(values, 0.05),
                "median": np.median(values),
                "p95": np.quantile(values, 0.95),
                "share > 0": float((values > 0).mean()),
            }
        )
    ax.axvline(0, color="#555", lw=0.8, ls="--")
    ax.set_xlabel("influence score (train example on target); > 0 helps")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    section.add(
        h.figure_html(
            fig,
            "Distribution of scores of every (train, target) pair, per target group "
            "(clipped to the 0.5-99.5 percentile range)",
        )
    )
    section.add(h.table(pd.DataFrame(rows)))
    return section


def heatmap(data: AttributionData) -> h.Section | None:
    frame = data.joined()
    if frame["train_domain"].isna().all() or frame["target_domain"].isna().all():
        return None
    frame["row"] = (
        frame["train_domain"].map(_label) + " · difficulty " + frame["train_difficulty"].map(_label)
    )
    frame["col"] = frame["target_domain"].map(_label)
    order = (
        frame[["train_domain", "train_difficulty", "row"]]
        .drop_duplicates()
        .sort_values(["train_domain", "train_difficulty"], na_position="last")["row"]
    )
    table = frame.pivot_table(index="row", columns="col", values="score", aggfunc="mean").reindex(order)
    counts = frame.drop_duplicates(["train_id"]).groupby("row").size().reindex(order)
    values = table.to_numpy(dtype=np.float64)
    limit = float(np.nanmax(np.abs(values))) or 1.0
    fig = h.figure(2.6 + 1.4 * table.shape[1], 1.2 + 0.42 * table.shape[0])
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=h.INFLUENCE_CMAP, norm=Normalize(-limit, limit), aspect="auto")
    ax.set_xticks(range(table.shape[1]), [f"target {c}" for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{r} (n={counts[r]})" for r in table.index], fontsize=8)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ink = "white" if abs(values[i, j]) > 0.6 * limit else "black"
                ax.text(j, i, h.fmt(values[i, j]), ha="center", va="center", fontsize=7, color=ink)
    fig.colorbar(image, ax=ax, label="mean influence")
    section = h.Section("Mean influence: (train domain, difficulty) x target domain")
    section.add(
        h.figure_html(fig, "Mean score over all (train, target) pairs in each cell; blue helps, red hurts")
    )
    return section


def _ranked(data: AttributionData, ids: list[str], k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    mean = data.scores[data.scores["target_id"].isin(ids)].groupby("train_id")["score"].mean()
    return mean.nlargest(k), mean.nsmallest(k)


def _example_rows(data: AttributionData, ranked: pd.Series, label: str = "score") -> pd.DataFrame:
    rows = []
    for train_id, score in ranked.items():
        info = data.train.loc[train_id] if train_id in data.train.index else {}
        rows.append(
            {
                "train example": train_id,
                "domain": _label(info.get("domain")) if len(info) else "",
                "difficulty": info.get("difficulty") if len(info) else None,
                label: score,
                "text": _text(info) if len(info) else "",
            }
        )
    return pd.DataFrame(rows)


def helpful_harmful(data: AttributionData) -> h.Section:
    section = h.Section("Most helpful and most harmful training examples")
    for k, (name, ids) in enumerate(data.target_groups().items()):
        top, bottom = _ranked(data, ids, TOP_K)
        body = (
            "<p>most helpful (highest mean score)</p>"
            + h.table(_example_rows(data, top, "mean score"), text_columns=("text",))
            + "<p>most harmful (lowest mean score)</p>"
            + h.table(_example_rows(data, bottom, "mean score"), text_columns=("text",))
        )
        section.add(h.details(f"target group {name} ({len(ids)} targets)", body, open_=k == 0))
    targets = list(data.targets.index) or sorted(data.scores["target_id"].unique())
    parts = []
    for target_id in targets[:MAX_TARGETS]:
        top, bottom = _ranked(data, [target_id], PER_TARGET_K)
        info = data.targets.loc[target_id] if target_id in data.targets.index else None
        body = (
            (h.text_block(_text(info), 800) if info is not None else "")
            + "<p>most helpful</p>"
            + h.table(_example_rows(data, top), text_columns=("text",))
            + "<p>most harmful</p>"
            + h.table(_example_rows(data, bottom), text_columns=("text",))
        )
        domain = f" ({_label(info['domain'])})" if info is not None else ""
        parts.append(h.details(f"target {target_id}{domain}", body))
    section.add("<h4>per target</h4>", *parts)
    if len(targets) > MAX_TARGETS:
        section.add(h.note(f"{len(targets) - MAX_TARGETS} more targets not listed; query `scores` for them."))
    return section


def _keys(frame: pd.DataFrame) -> list[str]:
    """Target keys of segment / token rows: 'all' first, then groups, then single targets."""
    keys = list(dict.fromkeys(frame["target_id"]))
    return sorted(keys, key=lambda k: (k != "all", "=" not in k, k))[:MAX_KEYS]


def token_heatmaps(data: AttributionData) -> h.Section | None:
    view, run_id = data.view, data.run_id
    totals = view.q(
        "SELECT target_id, train_id, sum(score) AS score, count(*) AS tokens FROM token_scores "
        "WHERE run_id = ? GROUP BY ALL",
        [run_id],
    )
    if totals.empty:
        return None
    section = h.Section("Token heatmaps: training text coloured by each token's influence")
    section.add(
        h.note(
            "Each token's background is the influence of that token's own loss term (the loss of "
            "predicting it) on the target group's mean score, -grad f . H^-1 grad l_t (hover for the "
            "value); positive helps. A training example's token scores add up to its example score "
            "averaged over the group's targets (to bfloat16 rounding on CUDA). Prompt and chat-template "
            "tokens have no loss term and are not shown; a response cut by max_length ends at its last "
            "kept token."
        )
    )
    for key in _keys(totals):
        own = totals[totals["target_id"] == key].set_index("train_id")["score"]
        chosen = list(
            dict.fromkeys([*own.nlargest(TOKEN_EXAMPLES).index, *own.nsmallest(TOKEN_EXAMPLES).index])
        )
        tokens = view.q(
            "SELECT train_id, position, token, score FROM token_scores WHERE run_id = ? AND "
            "target_id = ? AND list_contains(?, train_id) ORDER BY train_id, position",
            [run_id, key, chosen],
        )
        limit = h.diverging_limit(tokens["score"].to_numpy())
        section.add(f"<h4>target {h.esc(key)}</h4>", h.colour_scale(limit, f"token influence on {key}"))
        for train_id in chosen:
            rows = tokens[tokens["train_id"] == train_id]
            kind = "helps" if own[train_id] > 0 else "hurts"
            domain = _label(data.train.loc[train_id, "domain"]) if train_id in data.train.index else ""
            rank = (
                "among the highest" if train_id in own.nlargest(TOKEN_EXAMPLES).index else "among the lowest"
            )
            section.add(
                f"<p><b>{h.esc(train_id)}</b> ({h.esc(domain)}) {kind}: total "
                f"{h.esc(h.fmt(own[train_id]))} over {len(rows)} response tokens, {rank}</p>",
                h.token_heatmap(rows["token"].fillna("").tolist(), rows["score"].to_numpy(), limit),
            )
    return section


def top_segments(data: AttributionData, k: int = 8) -> h.Section | None:
    segments = data.view.rows("segment_scores", data.run_id, "train_id, target_id, segment, text, score")
    if segments.empty:
        return None
    section = h.Section("Top segments (reasoning steps / lines of training responses)")
    section.add(
        h.note(
            "A segment's score is the sum of its tokens' scores on the target group (positive helps); "
            "a response cut by max_length has segments only up to its last kept token."
        )
    )
    for key in _keys(segments):
        own = segments[segments["target_id"] == key]
        for title, picked in (
            ("most helpful", own.nlargest(k, "score")),
            ("most harmful", own.nsmallest(k, "score")),
        ):
            frame = picked.assign(
                domain=picked["train_id"].map(
                    lambda t: _label(data.train.loc[t, "domain"]) if t in data.train.index else ""
                )
            )
            section.add(
                f"<h4>{title} segments for target {h.esc(key)}</h4>",
                h.table(frame[["train_id", "domain", "segment", "score", "text"]], text_columns=("text",)),
            )
    return section


def sections(view: LakeView, record: dict) -> list[h.Section]:
    data = AttributionData(view, record)
    if data.scores.empty:
        return [h.Section("Scores").add(h.note("This run wrote no scores."))]
    level = record.get("params", {}).get("level", "example") if isinstance(record.get("params"), dict) else ""
    found = [
        distributions(data),
        heatmap(data),
        helpful_harmful(data),
        token_heatmaps(data),
        top_segments(data),
    ]
    out = [s for s in found if s is not None]
    if level == "example":
        out.append(
            h.Section("Segments and tokens").add(
                h.note(
                    "This is an example-level run: rerun attribution with level segment or token for the "
                    "token heatmap and the top segments."
                )
            )
        )
    return out


def summary(view: LakeView, record: dict, counts: dict[str, int]) -> str:
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    return (
        f"Attribution with {record['method']} at {params.get('level', '?')} level: "
        f"{counts.get('scores', 0)} (train, target) scores, {counts.get('segment_scores', 0)} segment "
        f"and {counts.get('token_scores', 0)} token rows. Positive scores help the target."
    )
