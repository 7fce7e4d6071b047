"""`assay ppp --dataset NAME`: cluster examples by their text embeddings (PPP);
`assay presto --dataset NAME --ladder dart[:RUN_ID] | influence[:RUN_ID] | label:NAME[:RUN_ID]`: each
example's probability of the rarest rung of an outcome ladder (PRESTO).

Each option maps onto a parameter of the `ppp` / `presto` curation stage (curation/stages/), which checks
them all before anything is written: a bad option exits with status 2 and one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands import LakeOption
from storage import Lake, UserError


def _lake(root: Path | None, device: str) -> Lake:
    """The lake to work on, after checking the options every clustering command shares."""
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: expected cpu or cuda")
    from flows.cli import get_lake  # the global --lake option, when given before the command

    the_lake = Lake(root) if root is not None else get_lake()
    if not the_lake.exists:
        raise UserError(
            f"no lake at {the_lake.root}; ingest a dataset first (assay ingest FILE --dataset NAME)"
        )
    return the_lake


def parse_ladder(spec: str) -> tuple[str, str]:
    """'dart', 'dart:RUN', 'influence[:RUN]', 'label:NAME[:RUN]' -> (ladder, source_run)."""
    kind, _, rest = spec.partition(":")
    if kind in ("dart", "influence"):
        return kind, rest or "auto"
    if kind == "label" and rest:
        name, _, run = rest.partition(":")
        return f"label:{name}", run or "auto"
    raise UserError(f"--ladder {spec!r}: expected dart[:RUN_ID], influence[:RUN_ID] or label:NAME[:RUN_ID]")


def register(app: typer.Typer) -> None:
    @app.command("ppp")
    def ppp_command(
        dataset: Annotated[
            list[str], typer.Option("--dataset", "-d", help="dataset(s) to cluster (repeatable)")
        ],
        model: Annotated[
            str | None,
            typer.Option(help="sentence-transformers directory (default: the offline all-MiniLM-L6-v2)"),
        ] = None,
        text: Annotated[str, typer.Option(help="what to embed: prompt | response | both")] = "both",
        pca: Annotated[int | None, typer.Option(help="cluster this many principal components")] = None,
        min_cluster_size: Annotated[int, typer.Option(help="smallest cluster, in examples")] = 10,
        min_cluster_fraction: Annotated[
            float, typer.Option(help="smallest cluster, as a share of all")
        ] = 0.002,
        min_agreement: Annotated[float, typer.Option(help="GMM / k-means agreement needed to split")] = 0.9,
        bic_margin: Annotated[float, typer.Option(help="BIC gain needed to split")] = 0.0,
        covariance_type: Annotated[
            str, typer.Option(help="GMM covariance: diag | spherical | full")
        ] = "diag",
        max_clusters: Annotated[int, typer.Option(help="stop splitting at this many clusters")] = 64,
        device: Annotated[str, typer.Option(help="cpu | cuda, for the embedding model")] = "cpu",
        lake: LakeOption = None,
    ) -> None:
        """Cluster examples with PPP over their text embeddings; writes labels ppp_cluster."""
        from curation.stages import StageContext
        from curation.stages.ppp import ppp

        params = {
            "model": model,
            "text": text,
            "pca": pca,
            "min_cluster_size": min_cluster_size,
            "min_cluster_fraction": min_cluster_fraction,
            "min_agreement": min_agreement,
            "bic_margin": bic_margin,
            "covariance_type": covariance_type,
            "max_clusters": max_clusters,
        }
        the_lake = _lake(lake, device)
        run_id = ppp(StageContext(lake=the_lake, datasets=list(dataset), device=device), params)
        sizes = the_lake.query(
            "SELECT CAST(value AS INTEGER) AS cluster, count(*) AS examples FROM labels "
            "WHERE run_id = ? AND name = 'ppp_cluster' GROUP BY 1 ORDER BY 1",
            [run_id],
        )
        typer.echo(f"ppp run {run_id}: {len(sizes)} clusters")
        typer.echo(f"inspect: assay sql \"SELECT * FROM labels WHERE run_id = '{run_id}' LIMIT 20\"")

    @app.command("presto")
    def presto_command(
        dataset: Annotated[
            list[str], typer.Option("--dataset", "-d", help="dataset(s) to score (repeatable)")
        ],
        ladder: Annotated[
            str,
            typer.Option(
                help="dart[:RUN_ID] (DART samples), influence[:RUN_ID] (attribution scores) or "
                "label:NAME[:RUN_ID]; "
                "without a run id, the latest such run"
            ),
        ] = "dart",
        quantiles: Annotated[
            str, typer.Option(help="influence: cut points, comma-separated")
        ] = "0.5,0.8,0.95",
        rare: Annotated[
            str, typer.Option(help="auto | last | first: which end of the ladder is rare")
        ] = "auto",
        model: Annotated[
            str | None,
            typer.Option(help="sentence-transformers directory (default: the offline all-MiniLM-L6-v2)"),
        ] = None,
        text: Annotated[str, typer.Option(help="what to embed: prompt | response | both")] = "both",
        n_components: Annotated[int, typer.Option(help="principal components of the embeddings used")] = 16,
        cv: Annotated[int, typer.Option(help="cross-validation folds for lambda")] = 5,
        seed: Annotated[int, typer.Option(help="fold shuffling seed")] = 0,
        device: Annotated[str, typer.Option(help="cpu | cuda, for the embedding model")] = "cpu",
        lake: LakeOption = None,
    ) -> None:
        """PRESTO: each example's probability of the rarest rung of an outcome ladder (presto_p_rare)."""
        from curation.stages import StageContext
        from curation.stages.presto import presto

        kind, source = parse_ladder(ladder)
        try:
            cuts = [float(v) for v in quantiles.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--quantiles {quantiles!r}: expected numbers separated by commas") from None
        if device not in ("cpu", "cuda"):
            raise UserError(f"--device {device}: expected cpu or cuda")
        params = {
            "ladder": kind,
            "source_run": source,
            "quantiles": cuts,
            "rare": rare,
            "model": model,
            "text": text,
            "n_components": n_components,
            "cv": cv,
            "seed": seed,
        }
        the_lake = _lake(lake, device)
        run_id = presto(StageContext(lake=the_lake, datasets=list(dataset), device=device), params)
        top = the_lake.query(
            "SELECT example_id, value AS p_rare FROM labels WHERE run_id = ? AND name = "
            "'presto_p_rare' ORDER BY value DESC LIMIT 5",
            [run_id],
        )
        typer.echo(
            f"presto run {run_id}: highest P(rare): "
            + ", ".join(f"{r.example_id} {r.p_rare:.3f}" for r in top.itertuples())
        )
        typer.echo(
            f"inspect: assay sql \"SELECT * FROM labels WHERE run_id = '{run_id}' AND name = "
            "'presto_p_rare' ORDER BY value DESC LIMIT 20\""
        )
