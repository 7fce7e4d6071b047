"""`assay curate RECIPE.yaml [--dataset NAME]...`: run a curation recipe's stages in order (flows/recipes.py
documents the format). The whole recipe, and the datasets it names, are checked before any stage runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.commands import DeviceOption, LakeOption


def register(app: typer.Typer) -> None:
    @app.command("curate")
    def curate_command(
        recipe: Annotated[Path, typer.Argument(help="a recipe YAML file (see recipes/demo.yaml)")],
        dataset: Annotated[
            list[str] | None,
            typer.Option("--dataset", "-d", help="curate this dataset instead of the recipe's (repeatable)"),
        ] = None,
        device: DeviceOption = None,
        dask: Annotated[
            str | None,
            typer.Option(
                "--dask",
                help="run stages with a Dask variant on this cluster (tcp://HOST:8786) or 'local'; "
                "default $ASSAY_DASK_ADDRESS, else Dask only when the data is larger than memory",
            ),
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option(
                "--set", help="change a stage parameter: STAGE.PARAM=VALUE (repeatable; VALUE is YAML)"
            ),
        ] = None,
        workers: Annotated[
            int,
            typer.Option(
                help="Dask workers to start locally for stages that shard (0: none unless --dask)", min=0
            ),
        ] = 0,
        out: Annotated[
            Path | None, typer.Option("--out", help="export the result here (overrides the recipe's)")
        ] = None,
        lake: LakeOption = None,
    ) -> None:
        """Run a curation recipe: its stages in order, each given the run ids of the ones before it."""
        from flows.cli import State, echo, get_lake, print_frame
        from flows.recipes import check_datasets, load_recipe
        from flows.runtime import run_job
        from storage.dask_io import dask_address

        dask_address(dask)  # a malformed address is the user's error, before anything runs
        the_lake = get_lake(lake)
        spec = load_recipe(recipe, list(dataset) if dataset else None, list(set_ or []))
        check_datasets(the_lake, spec)
        result = run_job(
            "flows.curate:curate_flow",
            recipe=str(recipe.expanduser().absolute()),
            lake_root=str(the_lake.root),
            datasets=list(dataset) if dataset else None,
            device=device,
            dask=dask,
            export_out=str(out.expanduser().absolute()) if out else None,
            overrides=list(set_ or []),
            workers=workers,
            quiet=State.quiet,
        )
        import pandas as pd

        rows = [{"stage": s.stage, "name": s.name, "run_id": result["runs"][s.name]} for s in spec.stages]
        print_frame(pd.DataFrame(rows), title=f"recipe {spec.name} on {', '.join(spec.datasets)}")
        if result["export"]:
            echo(f"exported {result['export']['rows']} rows to {result['export']['path']}")
        last = rows[-1]["run_id"]
        echo(f"inspect: assay sql \"SELECT * FROM weights WHERE run_id = '{last}' LIMIT 20\"")
