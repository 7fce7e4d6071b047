"""`assay <stage>`: one command per registered stage, generated from its Params dataclass.

Every field becomes an option (`--field-name`, or the names the field declares) with the field's help and
default; the stage's datasets are `--dataset/-d` (repeatable; `--train` where that reads better). Values go
through the same Params check as a recipe's, so a bad value is one line and exit status 2 whichever way the
stage is run. Lists are repeatable options (numbers may also be given comma-separated); mappings and values
that may be numbers or words are read as YAML (`--groups '{math: 2, code: 1}'`, `--scale 0.5`).
"""

from __future__ import annotations

import inspect
from dataclasses import Field
from typing import Annotated, Any

import typer

from flows.commands import DeviceOption, LakeOption
from storage import UserError
from storage.errors import shorten
from storage.params import (
    Choice,
    Constraint,
    Flag,
    Interval,
    Items,
    OneOf,
    ParamError,
    Text,
    cli_names,
    constraint_of,
    help_of,
    is_required,
)
from storage.stage import Stage


def _inner(constraint: Constraint) -> Constraint:
    """The constraint under `optional(...)`."""
    if isinstance(constraint, OneOf) and len(constraint.options) == 1:
        return constraint.options[0]
    return constraint


def _reads_yaml(constraint: Constraint) -> bool:
    """Is a command-line string for this constraint YAML (a mapping, or a number-or-word choice)?"""
    inner = _inner(constraint)
    if isinstance(inner, Text | Choice | Flag | Interval | Items):
        return False
    if isinstance(inner, OneOf):
        return any(isinstance(o, Interval) for o in inner.options)
    return True


def _option_type(constraint: Constraint, required: bool, default: Any) -> Any:
    inner = _inner(constraint)
    if isinstance(inner, Flag):
        return bool
    if isinstance(inner, Items):
        return list[str] | None
    base = inner.cli_type if isinstance(inner, Interval) else str
    return base if (required or default is not None) else base | None


def _parameter(field: Field, defaults: dict[str, Any]) -> inspect.Parameter:
    constraint = constraint_of(field)
    required = is_required(field)
    default = None if required else defaults[field.name]
    names = cli_names(field)
    if isinstance(_inner(constraint), Flag):
        long = names[0]
        names = (f"{long}/--no-{long[2:]}",)
    if isinstance(_inner(constraint), Items):
        default = None  # typer's list default: the Params default applies when the option is absent
    option = typer.Option(*names, help=help_of(field), show_default=not isinstance(_inner(constraint), Items))
    annotation = Annotated[_option_type(constraint, required, default), option]
    return inspect.Parameter(
        field.name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=inspect.Parameter.empty if required else default,
    )


def _from_cli(field: Field, value: Any) -> Any:
    """A command-line value as the Params field takes it."""
    constraint = constraint_of(field)
    inner = _inner(constraint)
    if value is None:
        return None
    if isinstance(inner, Items):
        if not isinstance(inner.item, Text | Choice):
            value = [part.strip() for text in value for part in str(text).split(",") if part.strip()]
            return [_yaml(field, part) for part in value]
        return list(value)
    if isinstance(value, str) and _reads_yaml(constraint):
        return _yaml(field, value)
    return value


def _yaml(field: Field, text: str) -> Any:
    """An option's value read as YAML by the same safe loader as recipes (plain data, bounded)."""
    from storage.safe_yaml import load_yaml

    return load_yaml(text, f"{cli_names(field)[0]} {shorten(text)}").data


def stage_command(cls: type[Stage]) -> Any:
    """The typer command function of a stage."""
    fields = cls.Params.fields()
    defaults = cls.Params.defaults()

    def command(**given: Any) -> None:
        from flows.cli import State, echo, get_lake
        from flows.runtime import run_job
        from storage.dask_io import dask_address
        from storage.stage import StageContext

        lake = get_lake(given.pop("lake"))
        datasets, device = list(given.pop("dataset")), given.pop("device")
        dask, workers = given.pop("dask_cluster_", None), given.pop("dask_workers_", 0)
        dask_address(dask)  # a malformed address is the user's error before anything runs
        params = {}
        for f in fields:
            value = _from_cli(f, given[f.name])
            params[f.name] = value if value is not None else defaults.get(f.name)
        try:  # the whole check, before any job starts; errors name the option
            stage = cls(cls.Params(**params))
        except ParamError as exc:
            field = next((f for f in fields if f.name == exc.name.split(".")[0]), None)
            raise UserError(f"{cli_names(field)[0] if field else exc.name}: {exc.message}") from None
        if not lake.exists:
            raise UserError(
                f"no lake at {lake.root}; ingest a dataset first (assay ingest FILE --dataset NAME)"
            )
        ctx = StageContext(lake, datasets, device=device, quiet=True, dask=dask, workers=workers)
        stage.plan(ctx)  # every check of the inputs too (plan has no side effects), before any job starts
        result = run_job(
            "flows.stages:stage_flow",
            name=cls.name,
            params=stage.params.to_dict(),
            datasets=datasets,
            lake_root=str(lake.root),
            device=device,
            dask=dask,
            workers=workers,
            quiet=State.quiet,
        )
        echo(f"{cls.name} run {result['run_id']}")
        for line in stage.report(ctx, result["run_id"]):
            echo(line)

    parameters = [
        inspect.Parameter(
            "dataset",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[list[str], typer.Option(*cls.dataset_flags, help=cls.dataset_help)],
        ),
        *[_parameter(f, defaults) for f in fields],
        inspect.Parameter(
            "device",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=DeviceOption,
            default=None,
        ),
    ]
    if "dask" in cls.executors:
        parameters.append(
            inspect.Parameter(
                "dask_cluster_",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[
                    str | None,
                    typer.Option(
                        "--dask",
                        help="run on this Dask cluster (tcp://HOST:8786) or 'local'; default $ASSAY_DASK_ADDRESS, "
                        "else Dask only when the input is larger than memory",
                    ),
                ],
                default=None,
            )
        )
        parameters.append(
            inspect.Parameter(
                "dask_workers_",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[
                    int,
                    typer.Option(
                        "--workers",
                        help="Dask workers to start locally (0: none unless --dask)",
                        min=0,
                        max=1024,
                    ),
                ],
                default=0,
            )
        )
    parameters.append(
        inspect.Parameter("lake", inspect.Parameter.KEYWORD_ONLY, annotation=LakeOption, default=None)
    )
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = cls.summary_line()
    command.__name__ = f"{cls.name}_command"
    return command


def register(app: typer.Typer) -> None:
    from flows.registry import load_stages

    for name, cls in sorted(load_stages().items()):
        command = stage_command(cls)
        app.command(name.replace("_", "-"))(command)
        for alias in cls.cli_aliases:
            app.command(alias, hidden=True)(command)
