"""Report of a `curate` run, section by section as the run's tables call for them: the group mixture
before and after (weights), DART trials and correct counts against difficulty with the uncovered
queries (samples), the Cooldown schedule (mixture_schedule), PPP clusters (labels ppp_cluster) and
PRESTO calibration (labels presto_p_rare).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps

from flows.reports import html as h
from flows.reports.lakeview import LakeView, input_runs, input_versions

PPP_LABEL, PRESTO_LABEL = "ppp_cluster", "presto_p_rare"
MAX_PROJECTED = 3000  # points in the PPP scatter
OUTCOME_HINTS = ("outcome", "class", "ladder", "level", "stage", "y")


def _group_text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "(missing)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _share_chart(ax, before: pd.Series, after: pd.Series, title: str) -> None:
    groups = list(dict.fromkeys([*before.index, *after.index]))
    b = before.reindex(groups, fill_value=0).astype(float)
    a = after.reindex(groups, fill_value=0).astype(float)
    y = np.arange(len(groups))
    sb = b / b.sum() if b.sum() else b
    sa = a / a.sum() if a.sum() else a
    ax.barh(y - 0.2, sb, height=0.4, color="#9aa7b8", label="before")
    ax.barh(y + 0.2, sa, height=0.4, color="#1d6fb8", label="after")
    for i in range(len(groups)):
        ax.text(sb.iloc[i], y[i] - 0.2, f" {b.iloc[i]:g}", va="center", fontsize=7)
        ax.text(sa.iloc[i], y[i] + 0.2, f" {a.iloc[i]:g}", va="center", fontsize=7)
    ax.set_yticks(y, groups)
    ax.invert_yaxis()
    ax.set_xlabel("share of the training mass")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")


def mixture(view: LakeView, record: dict) -> h.Section | None:
    run_id = record["run_id"]
    weights = view.rows("weights", run_id, "dataset, example_id, copies, loss_weight")
    if weights.empty:
        return None
    section = h.Section("Group mixture before and after")
    metrics = view.metrics(run_id)
    pool, draws = (metrics[metrics["name"] == n].set_index("key")["value"] for n in ("pool", "draws"))
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    by = params.get("by", "group")
    if not pool.empty and not draws.empty and by != "domain":  # mix records pool and draws of its groups
        fig = h.figure(9, 1.4 + 0.45 * len(pool))
        _share_chart(fig.add_subplot(), pool, draws, f"by {by}: pool vs draws")
        section.add(
            h.figure_html(
                fig,
                f"Groups by {by}: share of each in the pool the stage started from and in "
                "what it drew (copies)",
            )
        )
    before = view.dataset_examples(input_versions(record.get("inputs")))
    after = weights.merge(view.examples_by_id(weights), on=["dataset", "example_id"], how="left")
    # the loss mass a group receives: draws x loss weight (a statistic; the two channels stay apart)
    after["mass"] = after["loss_weight"].fillna(0) * after["copies"].fillna(0)
    panels = [("domain", "domain")]
    if before["difficulty"].notna().any() or after["difficulty"].notna().any():
        panels.append(("difficulty", "difficulty"))
    fig = h.figure(9, 1.6 + 0.42 * max(after["domain"].nunique(), after["difficulty"].nunique(), 2))
    axes = fig.subplots(1, len(panels))
    axes = np.atleast_1d(axes)
    rows = []
    for ax, (column, label) in zip(axes, panels, strict=True):
        b = (
            before.groupby(before[column].map(_group_text)).size()
            if not before.empty
            else pd.Series(dtype=float)
        )
        a = after.groupby(after[column].map(_group_text))["mass"].sum()
        _share_chart(ax, b, a, f"by {label}")
        for group in dict.fromkeys([*b.index, *a.index]):
            rows.append(
                {
                    "by": label,
                    "group": group,
                    "examples before": float(b.get(group, 0)),
                    "copies x loss weight after": float(a.get(group, 0)),
                }
            )
    what = ", ".join(input_versions(record.get("inputs"))) or "its inputs"
    section.add(
        h.figure_html(
            fig,
            f"Before: the examples of {what} (each once). After: the sum of copies x "
            "loss weight this run gives them (its loss mass)",
        ),
        h.table(pd.DataFrame(rows)),
    )
    if weights["loss_weight"].nunique() > 1:
        fig = h.figure(9, 2.8)
        ax = fig.add_subplot()
        ax.hist(weights["loss_weight"], bins=50, color="#1d6fb8")
        ax.set_xlabel("loss weight")
        ax.set_ylabel("examples")
        section.add(h.figure_html(fig, f"Distribution of the {len(weights)} examples' loss weights"))
    return section


def dart(view: LakeView, record: dict) -> h.Section | None:
    run_id = record["run_id"]
    samples = view.rows("samples", run_id)
    if samples.empty:
        return None
    section = h.Section("DART: trials and correct responses against difficulty")
    per_query = (
        samples.groupby("query_id").agg(trials=("trial", "size"), correct=("correct", "sum")).reset_index()
    )
    per_query["correct"] = per_query["correct"].astype(int)
    if "dataset" in samples.columns:
        keys = samples[["query_id", "dataset"]].drop_duplicates("query_id")
        per_query = per_query.merge(keys, on="query_id", how="left")
        info = view.examples_by_id(per_query.rename(columns={"query_id": "example_id"}))
    else:
        info = view.dataset_examples(input_versions(record.get("inputs")))
    info = info.drop_duplicates("example_id").rename(columns={"example_id": "query_id"})
    per_query = per_query.merge(
        info[["query_id", "domain", "difficulty", "prompt"]], on="query_id", how="left"
    )
    labels = view.rows("labels", run_id, "example_id, name, value", "name = 'dart_difficulty'")
    if not labels.empty:
        per_query = per_query.merge(
            labels.rename(columns={"example_id": "query_id", "value": "measured"})[
                ["query_id", "measured"]
            ].drop_duplicates("query_id"),
            on="query_id",
            how="left",
        )
    uncovered = per_query[per_query["correct"] == 0]
    has_measured = "measured" in per_query and per_query["measured"].notna().any()
    fig = h.figure(10, 3.8)
    axes = fig.subplots(1, 3 if has_measured else 2)
    rng = np.random.default_rng(0)
    level = per_query["difficulty"].astype(float)
    x = level.fillna(-1).to_numpy() + rng.uniform(-0.18, 0.18, len(per_query))
    covered = per_query["correct"].to_numpy() > 0
    ax = axes[0]
    ax.scatter(x, per_query["trials"], s=14, color="#9aa7b8", label="trials")
    ax.scatter(x[covered], per_query["correct"][covered], s=14, color="#1d6fb8", marker="x", label="correct")
    ax.scatter(
        x[~covered],
        per_query["trials"][~covered],
        s=30,
        facecolors="none",
        edgecolors="#c0392b",
        label="uncovered",
    )
    ax.set_xlabel("difficulty level of the query (-1: none)")
    ax.set_ylabel("responses per query")
    ax.legend(fontsize=8)
    means = per_query.groupby(level.fillna(-1))[["trials", "correct"]].mean()
    ax = axes[1]
    pos = np.arange(len(means))
    ax.bar(pos - 0.2, means["trials"], 0.4, color="#9aa7b8", label="mean trials")
    ax.bar(pos + 0.2, means["correct"], 0.4, color="#1d6fb8", label="mean correct")
    ax.set_xticks(pos, [f"{v:g}" for v in means.index])
    ax.set_xlabel("difficulty level")
    ax.legend(fontsize=8)
    if has_measured:
        ax = axes[2]
        ax.scatter(per_query["measured"], per_query["correct"], s=14, color="#1d6fb8")
        ax.set_xlabel("measured difficulty (dart_difficulty)")
        ax.set_ylabel("correct responses")
    section.add(
        h.figure_html(
            fig,
            f"{len(per_query)} queries, {len(samples)} trials, "
            f"{int(per_query['correct'].sum())} correct, {len(uncovered)} uncovered",
        )
    )
    by_level = (
        per_query.groupby(level.map(_group_text))
        .agg(
            queries=("query_id", "size"),
            trials=("trials", "sum"),
            correct=("correct", "sum"),
            uncovered=("correct", lambda c: int((c == 0).sum())),
        )
        .reset_index()
        .rename(columns={"difficulty": "level"})
    )
    section.add(h.table(by_level))
    if "verdict" in samples.columns:
        verdicts = (
            samples["verdict"]
            .fillna("(none)")
            .value_counts()
            .rename_axis("verdict")
            .reset_index(name="trials")
        )
        section.add(h.details("verdicts", h.table(verdicts)))
    if uncovered.empty:
        section.add(h.note("Every query has at least one correct response (no uncovered queries)."))
    else:
        section.add(
            f"<h4>Uncovered queries ({len(uncovered)}): no correct response in their trials</h4>",
            h.table(
                uncovered[["query_id", "domain", "difficulty", "trials", "prompt"]],
                max_rows=100,
                text_columns=("prompt",),
            ),
        )
    return section


def schedule(view: LakeView, record: dict) -> h.Section | None:
    frame = view.rows("mixture_schedule", record["run_id"])
    if frame.empty:
        return None
    group = "group_name" if "group_name" in frame.columns else "group"
    wide = frame.pivot_table(index="step", columns=group, values="probability", aggfunc="mean").sort_index()
    fig = h.figure(9, 3.8)
    ax = fig.add_subplot()
    colours = colormaps["tab20"](np.arange(wide.shape[1]) % 20)
    # Probabilities hold from one step to the next: draw steps, not slopes between them.
    ax.stackplot(
        wide.index,
        wide.to_numpy().T,
        labels=[str(c) for c in wide.columns],
        colors=colours,
        alpha=0.9,
        step="post",
    )
    ax.set_xlabel("training step")
    ax.set_ylabel("sampling probability")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 1))
    if "tau" in frame.columns:
        tau = frame.groupby("step")["tau"].first().sort_index()
        twin = ax.twinx()
        twin.step(tau.index, tau.to_numpy(), where="post", color="black", lw=1.5, ls="--", label="tau")
        twin.set_ylabel("temperature tau (dashed)")
    section = h.Section("Mixture schedule over training (Cooldown)")
    section.add(h.figure_html(fig, f"Group sampling probabilities per step over {len(wide)} steps"))
    changes = wide[(wide.diff().abs() > 1e-12).any(axis=1)].index.tolist()
    shown = wide.loc[sorted({wide.index[0], wide.index[-1], *changes})]
    section.add(h.table(shown.reset_index(), max_rows=20))
    return section


def _embedding_table(view: LakeView) -> tuple[str, str] | None:
    """A lake table holding a vector per example (example_id + a list-of-numbers column), if any."""
    for table in view.tables:
        if table in ("examples", "messages"):
            continue
        described = view.q(f"DESCRIBE {table}")
        columns = dict(zip(described["column_name"], described["column_type"], strict=True))
        if "example_id" not in columns:
            continue
        for name, kind in columns.items():
            if kind.endswith("[]") and kind[:-2] in ("DOUBLE", "FLOAT", "REAL"):
                return table, name
    return None


def _projection(view: LakeView, points: pd.DataFrame) -> tuple[np.ndarray, str]:
    """2-D PCA of stored embeddings when the lake has them, else of TF-IDF vectors of the example text."""
    from sklearn.decomposition import PCA

    found = _embedding_table(view)
    if found is not None:
        table, column = found
        view._con.register("_report_points", points[["dataset", "example_id"]])
        try:
            vectors = view.q(
                f"SELECT p.example_id, any_value(t.{column}) AS v FROM _report_points p JOIN {table} t "
                "ON t.example_id = p.example_id GROUP BY ALL"
            )
        finally:
            view._con.unregister("_report_points")
        if len(vectors) == len(points):
            matrix = np.vstack(vectors.set_index("example_id").loc[points["example_id"], "v"].to_numpy())
            return PCA(2, random_state=0).fit_transform(matrix), f"PCA of the embeddings in {table}.{column}"
    from sklearn.feature_extraction.text import TfidfVectorizer

    text = (points["prompt"].fillna("") + "\n" + points["response"].fillna("")).to_numpy()
    tfidf = TfidfVectorizer(max_features=4096, sublinear_tf=True).fit_transform(text)
    return PCA(2, random_state=0).fit_transform(tfidf.toarray()), "PCA of TF-IDF vectors of the example text"


def ppp(view: LakeView, record: dict) -> h.Section | None:
    labels = view.rows("labels", record["run_id"], "dataset, example_id, value", "name = ?", [PPP_LABEL])
    if labels.empty:
        return None
    points = labels.merge(view.examples_by_id(labels), on=["dataset", "example_id"], how="left")
    points["cluster"] = points["value"].map(_group_text)
    points["domain"] = points["domain"].map(_group_text)
    section = h.Section("PPP clusters")
    sizes = pd.crosstab(points["cluster"], points["domain"])
    sizes = sizes.loc[sorted(sizes.index, key=lambda c: (len(c), c))]
    fig = h.figure(10, 4.2)
    left, right = fig.subplots(1, 2)
    bottom = np.zeros(len(sizes))
    for colour, domain in zip(colormaps["Set2"](np.arange(sizes.shape[1]) % 8), sizes.columns, strict=True):
        left.bar(sizes.index, sizes[domain], bottom=bottom, color=colour, label=f"domain {domain}")
        bottom += sizes[domain].to_numpy()
    left.set_xlabel("cluster")
    left.set_ylabel("examples")
    left.set_title("cluster sizes (stacked by domain)", fontsize=10)
    left.legend(fontsize=8)
    shown = points.sample(MAX_PROJECTED, random_state=0) if len(points) > MAX_PROJECTED else points
    xy, how = _projection(view, shown.reset_index(drop=True))
    markers = dict(zip(sorted(shown["domain"].unique()), "o^sDv<>ph*", strict=False))
    clusters = sorted(shown["cluster"].unique(), key=lambda c: (len(c), c))
    colours = colormaps["tab10" if len(clusters) <= 10 else "tab20"]
    for k, cluster in enumerate(clusters):
        for domain, marker in markers.items():
            mask = ((shown["cluster"] == cluster) & (shown["domain"] == domain)).to_numpy()
            if mask.any():
                right.scatter(
                    xy[mask, 0], xy[mask, 1], s=14, marker=marker, color=colours(k % colours.N), alpha=0.8
                )
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", color=colours(k % colours.N), label=f"cluster {c}")
        for k, c in enumerate(clusters)
    ]
    handles += [
        Line2D([], [], ls="", marker=m, color="#555", label=f"domain {d}") for d, m in markers.items()
    ]
    right.legend(handles=handles, fontsize=7, ncols=2)
    right.set_title(f"2-D projection ({how.split(' of ')[0]}); marker = domain", fontsize=10)
    section.add(
        h.figure_html(
            fig,
            f"{len(points)} examples in {len(clusters)} clusters. Projection: {how}; "
            f"markers: {', '.join(f'{m} {d}' for d, m in markers.items())}",
        )
    )
    section.add(h.table(sizes.assign(total=sizes.sum(axis=1)).reset_index()))
    return section


def _outcome_labels(view: LakeView, record: dict, pairs: pd.DataFrame) -> tuple[pd.DataFrame, str] | None:
    """The observed ordered class per example that PRESTO predicted the rarest class of.

    Looked for as: another whole-number label written by the same run (names with outcome / class /
    ladder / level first), else a label named in the run's parameters, read from the runs it read.
    """
    run_id = record["run_id"]
    own = view.rows("labels", run_id, "dataset, example_id, name, value", "name <> ?", [PRESTO_LABEL])
    candidates: list[tuple[pd.DataFrame, str]] = []
    for name, frame in own.groupby("name"):
        values = frame["value"].dropna()
        if values.nunique() >= 2 and np.allclose(values, np.round(values)):
            rank = next(
                (i for i, hint in enumerate(OUTCOME_HINTS) if hint in str(name).lower()), len(OUTCOME_HINTS)
            )
            candidates.append((rank, frame, f"label {name} of this run"))
    if candidates:
        _, frame, where = min(candidates, key=lambda c: c[0])
        return frame, where
    params = record.get("params") if isinstance(record.get("params"), dict) else {}
    names = [v.removeprefix("label:") for v in params.values() if isinstance(v, str)]
    parents = input_runs(record.get("inputs"), set(view.runs()["run_id"]))
    for name in names:
        for parent in parents:
            frame = view.rows("labels", parent, "dataset, example_id, name, value", "name = ?", [name])
            if not frame.empty:
                return frame, f"label {name} of run {parent}"
    return None


def presto(view: LakeView, record: dict) -> h.Section | None:
    p_rare = view.rows("labels", record["run_id"], "dataset, example_id, value", "name = ?", [PRESTO_LABEL])
    if p_rare.empty:
        return None
    section = h.Section("PRESTO: probability of the rarest outcome, and its calibration")
    outcome = _outcome_labels(view, record, p_rare)
    fig = h.figure(10, 3.8)
    if outcome is not None:
        frame, where = outcome
        joined = p_rare.merge(
            frame[["dataset", "example_id", "value"]].rename(columns={"value": "y"}),
            on=["dataset", "example_id"],
            how="inner",
        )
        rarest = joined["y"].max()
        joined["rare"] = (joined["y"] == rarest).astype(float)
        edges = np.unique(np.quantile(joined["value"], np.linspace(0, 1, 11)))
        bins = (
            pd.cut(joined["value"], edges, include_lowest=True)
            if len(edges) > 1
            else pd.Series(0, joined.index)
        )
        table = (
            joined.groupby(bins, observed=True)
            .agg(examples=("rare", "size"), predicted=("value", "mean"), observed=("rare", "mean"))
            .reset_index(drop=True)
        )
        left, right = fig.subplots(1, 2)
        left.plot([0, 1], [0, 1], color="#888", ls="--", lw=1, label="perfect calibration")
        left.plot(table["predicted"], table["observed"], "o-", color="#1d6fb8", label="PRESTO")
        left.set_xlabel("mean predicted P(rarest outcome)")
        left.set_ylabel("observed frequency")
        left.set_xlim(0, max(0.05, float(table["predicted"].max()) * 1.1))
        left.set_ylim(0, max(0.05, float(table["observed"].max()) * 1.1))
        left.legend(fontsize=8)
        left.set_title("calibration (quantile bins)", fontsize=10)
        brier = float(((joined["value"] - joined["rare"]) ** 2).mean())
        caption = (
            f"{len(joined)} examples; the rarest outcome is class {rarest:g} of {where} "
            f"({int(joined['rare'].sum())} examples); Brier score {brier:.4f}"
        )
    else:
        right = fig.add_subplot()
        table = None
        caption = (
            f"{len(p_rare)} examples. No observed outcome per example was found (another whole-number "
            "label of this run, or a label named in its parameters), so no calibration curve is drawn."
        )
    right.hist(p_rare["value"], bins=40, color="#1d6fb8")
    right.set_xlabel("P(rarest outcome)")
    right.set_ylabel("examples")
    right.set_title("predicted probabilities", fontsize=10)
    section.add(h.figure_html(fig, caption))
    if table is not None:
        section.add(h.table(table))
    return section


def other_labels(view: LakeView, record: dict) -> h.Section | None:
    labels = view.rows(
        "labels", record["run_id"], "name, value", "name NOT IN (?, ?)", [PPP_LABEL, PRESTO_LABEL]
    )
    if labels.empty:
        return None
    names = sorted(labels["name"].unique())
    shown = names[:12]
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig = h.figure(2.6 * cols, 2.1 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, shown, strict=False):
        ax.hist(labels.loc[labels["name"] == name, "value"].dropna(), bins=30, color="#5b8cc0")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    stats = labels.groupby("name")["value"].agg(["count", "mean", "min", "max"]).reset_index()
    section = h.Section("Labels written")
    section.add(
        h.figure_html(
            fig,
            f"Distribution of each label ({len(names)} names"
            + (f", first {len(shown)} shown)" if len(names) > len(shown) else ")"),
        ),
        h.table(stats),
    )
    return section


def sections(view: LakeView, record: dict) -> list[h.Section]:
    found = [
        mixture(view, record),
        dart(view, record),
        schedule(view, record),
        ppp(view, record),
        presto(view, record),
        other_labels(view, record),
    ]
    return [s for s in found if s is not None]


def summary(view: LakeView, record: dict, counts: dict[str, int]) -> str:
    wrote = ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "nothing"
    return f"Curation stage {record['method']}: wrote {wrote}."
