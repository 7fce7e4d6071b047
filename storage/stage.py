"""The stage contract: every step the pipeline runs (attribution, unlearning, curation) is a Stage.

A stage has
- `name`: its name in recipes and on the command line (`assay <name>`);
- `Params`: a dataclass of its parameters (storage.params: default, help and constraint per field);
- `reads` / `writes`: the lake tables it reads and writes;
- `plan(ctx) -> RunSpec`: everything that defines the run id (kind, method, resolved parameters, inputs,
  model), computed without side effects: it may read the lake and the files it names, never write;
- `execute(ctx, run, spec)`: the work, writing its tables through `run`;
- optional executors of the same work (`executor_for` picks one: a Dask executor over chunks, a sharded
  executor over workers) that write the same rows under the same run id.

`Stage.run(ctx)` plans, opens the run (an identical finished run is reused, an interrupted one resumed)
and executes it. Subclassing registers a stage in `STAGES`. Flows call `run` (or `plan` / `execute`),
nothing else.

Adding a stage: see DEVELOPERS.md ("How to add a stage").
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from storage.errors import UserError
from storage.lake import Lake, Run, run_id_for
from storage.params import Params

STAGES: dict[str, type[Stage]] = {}


@dataclass(frozen=True)
class RunSpec:
    """What a stage's run computes: the fields that define its id, and what `plan` learnt on the way that
    `execute` reuses (`context`, not part of the id)."""

    kind: str
    method: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    model: str | None = None
    context: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def run_id(self) -> str:
        return run_id_for(self.kind, self.method, self.params, self.inputs, self.model)


@dataclass
class StageContext:
    """Where and on what a stage runs: the lake, the datasets it works on, the runs of the earlier stages
    of its recipe (name -> run id), and how (device, Dask, progress)."""

    lake: Lake
    datasets: list[str] = field(default_factory=list)
    previous: dict[str, str] = field(default_factory=dict)
    device: str | None = None  # None: cuda when present, else cpu
    quiet: bool = False
    dask: str | None = None  # a scheduler address or "local"; None: $ASSAY_DASK_ADDRESS, or by input size
    workers: int = 0  # Dask workers for a sharded executor (0: run in this process)

    def resolved_device(self) -> str:
        """`device` when given, else cuda when torch sees one, else cpu."""
        if self.device:
            return self.device
        import torch  # only stages that run a model ask

        return "cuda" if torch.cuda.is_available() else "cpu"

    def dataset_versions(self, stage_name: str) -> dict[str, str]:
        """The latest version of each dataset the stage works on; none named is the user's error."""
        if not self.datasets:
            raise UserError(f"stage {stage_name}: no dataset given (a recipe's datasets, or --dataset)")
        return {name: self.lake.dataset_version(name) for name in self.datasets}

    def one_dataset(self, stage_name: str) -> tuple[str, str]:
        """(name, version) of the one dataset a stage such as attribute or unlearn works on."""
        versions = self.dataset_versions(stage_name)
        if len(versions) != 1:
            raise UserError(f"stage {stage_name}: works on one dataset, got {', '.join(versions)}")
        return next(iter(versions.items()))

    def earlier_run(self, table: str, where: str = "true", args: list | None = None) -> str | None:
        """The latest earlier stage of this recipe that wrote rows of `table` matching `where`."""
        for run_id in reversed(list(self.previous.values())):
            hit = self.lake.query(
                f"SELECT count(*) AS n FROM {table} WHERE run_id = ? AND {where}", [run_id, *(args or [])]
            )
            if int(hit["n"].iloc[0]):
                return run_id
        return None

    def find_run(
        self, stage_name: str, table: str, choice: str, where: str = "true", args: list | None = None
    ) -> str:
        """The run whose `table` rows a stage reads: `auto` = the latest earlier stage of this recipe that
        wrote them, else the latest complete run in the lake; `latest` = the latest in the lake; else a
        run id, which must be complete and have such rows."""
        args = list(args or [])
        if choice not in ("auto", "latest"):
            self.lake.require_run(choice)
            hit = self.lake.query(
                f"SELECT count(*) AS n FROM {table} WHERE run_id = ? AND {where}", [choice, *args]
            )
            if not int(hit["n"].iloc[0]):
                raise UserError(f"stage {stage_name}: run {choice} wrote no {table} rows it can use")
            return choice
        earlier = self.earlier_run(table, where, args) if choice == "auto" else None
        if earlier is not None:
            return earlier
        found = self.lake.query(
            f"SELECT t.run_id FROM (SELECT DISTINCT run_id FROM {table} WHERE {where}) t "
            "JOIN runs r USING (run_id) ORDER BY r.finished_at DESC LIMIT 1",
            args,
        )
        if found.empty:
            raise UserError(
                f"stage {stage_name}: the lake at {self.lake.root} has no {table} to read; run the stage that "
                "writes them first"
            )
        return str(found["run_id"].iloc[0])


class Stage(ABC):
    """Base of every stage (see the module docstring)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "curate"  # the run kind in the lake's registry
    Params: ClassVar[type[Params]] = Params
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    executors: ClassVar[tuple[str, ...]] = ("local",)  # names of the executors `executor_for` can pick
    # The command line's name for the datasets the stage works on (`--dataset/-d` everywhere; aliases
    # such as `--train` where that reads better).
    dataset_flags: ClassVar[tuple[str, ...]] = ("--dataset", "-d")
    dataset_help: ClassVar[str] = "dataset(s) to work on (repeatable)"
    cli_aliases: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not name or inspect.isabstract(cls):
            return
        if name in STAGES and STAGES[name].__qualname__ != cls.__qualname__:
            raise TypeError(
                f"stage {name!r} is registered twice ({STAGES[name].__module__}, {cls.__module__})"
            )
        STAGES[name] = cls

    def __init__(self, params: Params | Mapping[str, Any] | None = None, *, where: str = ""):
        if isinstance(params, Params):
            if not isinstance(params, self.Params):
                raise TypeError(
                    f"stage {self.name} takes {self.Params.__name__}, not {type(params).__name__}"
                )
            self.params = params
        else:
            self.params = self.Params.from_mapping(params, where or f"stage {self.name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    @classmethod
    def summary_line(cls) -> str:
        """The first line of the stage's docstring (its help on the command line)."""
        return (inspect.getdoc(cls) or cls.name).splitlines()[0]

    # ---------------------------------------------------------------------------- the contract
    @abstractmethod
    def plan(self, ctx: StageContext) -> RunSpec:
        """The run this stage would open, validated; no side effects."""

    @abstractmethod
    def execute(self, ctx: StageContext, run: Run, spec: RunSpec) -> None:
        """Do the work of a planned, open run (in this process)."""

    def executor_for(self, ctx: StageContext, spec: RunSpec) -> Callable[[StageContext, Run, RunSpec], None]:
        """The executor of this run: `execute` unless the stage offers another that fits better."""
        return self.execute

    def run(self, ctx: StageContext) -> str:
        """Plan, open (or reuse / resume) the run and execute it; returns the run id."""
        spec = self.plan(ctx)
        with ctx.lake.run(spec.kind, spec.method, spec.params, spec.inputs, spec.model) as run:
            if not run.complete:
                self.executor_for(ctx, spec)(ctx, run, spec)
        return run.run_id

    def report(self, ctx: StageContext, run_id: str) -> list[str]:
        """Lines telling a command-line user what the finished run found and how to look further."""
        return []


def stage_class(name: str) -> type[Stage]:
    """The registered stage called `name` (a UserError lists the known ones)."""
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}; stages: {', '.join(sorted(STAGES)) or 'none'}")
    return STAGES[name]


def run_stage(name: str, ctx: StageContext, params: Params | Mapping[str, Any] | None = None) -> str:
    """Run the registered stage `name` with `params` in `ctx`; returns its run id."""
    return stage_class(name)(params).run(ctx)
