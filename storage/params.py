"""Declarative stage parameters: one dataclass per stage whose fields carry the default, the help text
and the constraint, in one place (the style of scikit-learn's parameter constraints and TRL's config
dataclasses).

    @dataclass
    class MixParams(Params):
        tau: float = param(5.0, "temperature of the first phase", Interval(float, 0, 1000, closed="right"))

Building the dataclass validates it: `MixParams(tau=-1)` raises ParamError ("tau: expected a number in
(0, 1000], got -1"), and `MixParams.from_mapping(doc, where="recipe r.yaml: stages[2] (mix).params")`
names the recipe path ("recipe r.yaml: stages[2] (mix).params.tau: ..."). Both are UserErrors: exit 2,
one line. Values are quoted at most 80 characters long. Every number has finite bounds: an absurd value
(`batch_size: 1e20`) is refused before anything runs instead of crashing a run half way.

A constraint also says how a command line passes the value (`cli_type`): flows builds each stage's
`assay` command from its Params fields.
"""

from __future__ import annotations

import copy
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, Self

from storage.errors import UserError, shorten


class ParamError(UserError):
    """A parameter's value breaks its constraint; `name` is the parameter (a dotted path inside it)."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


class Constraint(ABC):
    """What values a parameter takes. `check` returns the value (normalised) or raises ValueError."""

    cli_type: Any = str  # the type a command line option parses to

    @abstractmethod
    def describe(self) -> str:
        """The values taken, as an error message says them ("an integer in [1, 10]")."""

    @abstractmethod
    def check(self, value: Any) -> Any:
        """The value, normalised (an int given for a float becomes a float), or ValueError."""

    def fail(self, value: Any) -> ValueError:
        return ValueError(f"expected {self.describe()}, got {shorten(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bound(value: float) -> str:
    """A bound as people write it: 1000000, 0.5, 1e+12 only when it is that big."""
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:g}"


@dataclass(frozen=True)
class Interval(Constraint):
    """A number of `kind` (int or float) between finite bounds; `closed` says which ends are included."""

    kind: type
    low: float
    high: float
    closed: str = "both"  # both | left | right | neither

    @property
    def cli_type(self) -> type:  # type: ignore[override]
        return self.kind

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        noun = "an integer" if self.kind is int else "a number"
        return f"{noun} in {left}{_bound(self.low)}, {_bound(self.high)}{right}"

    def check(self, value: Any) -> Any:
        if self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.fail(value)
        elif not _is_number(value) or not math.isfinite(value):
            raise self.fail(value)
        low_ok = value >= self.low if self.closed in ("both", "left") else value > self.low
        high_ok = value <= self.high if self.closed in ("both", "right") else value < self.high
        if not (low_ok and high_ok):
            raise self.fail(value)
        return self.kind(value)


@dataclass(frozen=True)
class Choice(Constraint):
    """One of a fixed set of strings."""

    options: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.options)

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.options:
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Flag(Constraint):
    """true or false."""

    cli_type: Any = bool

    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Text(Constraint):
    """A non-empty string, at most `max_length` characters, matching `pattern` in full when given."""

    what: str = "text"
    pattern: str | None = None
    max_length: int = 4096

    def describe(self) -> str:
        return self.what

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip() or len(value) > self.max_length:
            raise self.fail(value)
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise self.fail(value)
        return value


@dataclass(frozen=True)
class Regex(Text):
    """A regular expression (compiled to check it)."""

    what: str = "a regular expression"

    def check(self, value: Any) -> Any:
        value = super().check(value)
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"expected {self.describe()}, got {shorten(value)} ({exc})") from None
        return value


@dataclass(frozen=True)
class Items(Constraint):
    """A list of values that each satisfy `item`; a lone value is taken as a list of one."""

    item: Constraint
    min_items: int = 0
    max_items: int = 10_000
    unique: bool = False

    @property
    def cli_type(self) -> Any:  # type: ignore[override]
        return list[self.item.cli_type]  # a repeatable option

    def describe(self) -> str:
        return f"a list of {self.min_items}-{self.max_items} items, each {self.item.describe()}"

    def check(self, value: Any) -> Any:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not self.min_items <= len(value) <= self.max_items:
            raise self.fail(value)
        out = []
        for i, item in enumerate(value):
            try:
                out.append(self.item.check(item))
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        if self.unique and len(set(map(repr, out))) != len(out):
            raise ValueError(f"expected {self.describe()} without repeats, got {shorten(value)}")
        return out


@dataclass(frozen=True)
class MapOf(Constraint):
    """A mapping from keys satisfying `key` to values satisfying `value`. On a command line: YAML text."""

    key: Constraint
    value: Constraint
    min_items: int = 0
    max_items: int = 1000
    cli_type: Any = str

    def describe(self) -> str:
        return f"a mapping of {self.key.describe()} to {self.value.describe()}"

    def check(self, value: Any) -> Any:
        if not isinstance(value, Mapping) or not self.min_items <= len(value) <= self.max_items:
            raise self.fail(value)
        out = {}
        for k, v in value.items():
            try:
                out[self.key.check(k)] = self.value.check(v)
            except ValueError as exc:
                raise ValueError(f"{k}: {exc}") from None
        return out


@dataclass(frozen=True)
class OneOf(Constraint):
    """Any of several constraints (the first that accepts the value wins); None allowed with `none`."""

    options: tuple[Constraint, ...]
    none: bool = False

    @property
    def cli_type(self) -> Any:  # type: ignore[override]
        types = {c.cli_type for c in self.options}
        return types.pop() if len(types) == 1 else str

    def describe(self) -> str:
        parts = [c.describe() for c in self.options] + (["null"] if self.none else [])
        return " or ".join(parts)

    def check(self, value: Any) -> Any:
        if value is None:
            if self.none:
                return None
            raise self.fail(value)
        for option in self.options:
            try:
                return option.check(value)
            except ValueError:
                continue
        raise self.fail(value)


def optional(constraint: Constraint) -> OneOf:
    """`constraint` or null."""
    return OneOf((constraint,), none=True)


@dataclass(frozen=True)
class Anything(Constraint):
    """No constraint (for values another check validates)."""

    def describe(self) -> str:
        return "any value"

    def check(self, value: Any) -> Any:
        return value


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # `param(REQUIRED, ...)`: a field without a default (declare these first)


def param(
    default: Any,
    help: str,
    check: Constraint | None = None,
    *,
    cli: Sequence[str] | None = None,
) -> Any:
    """A Params field: its default, one line of help, its constraint, and optional command-line names."""
    meta = {"help": help, "check": check or Anything(), "cli": tuple(cli) if cli else None}
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Params:
    """Base of every stage's parameter dataclass: building one checks every field, then `validate()`
    (cross-field rules, raising ParamError)."""

    # A stage's parameter that is resolved from the lake (e.g. "auto" -> a run id) is recorded resolved
    # in the run's parameters; the dataclass keeps what the user wrote.
    where: ClassVar[str] = "params"

    def __post_init__(self) -> None:
        for f in fields(self):
            check: Constraint = f.metadata.get("check") or Anything()
            try:
                setattr(self, f.name, check.check(getattr(self, f.name)))
            except ValueError as exc:
                raise ParamError(f.name, str(exc)) from None
        self.validate()

    def validate(self) -> None:
        """Cross-field rules; raise ParamError(name, message)."""

    @classmethod
    def fields(cls) -> tuple[Field, ...]:
        return fields(cls)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Default of every field that has one."""
        out = {}
        for f in fields(cls):
            if not is_required(f):
                out[f.name] = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        return out

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str = "") -> Self:
        """The parameters from a mapping (a recipe's `params`); errors name `where` and the field."""
        where = where or cls.where
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise UserError(f"{where}: expected a mapping of parameters, got {shorten(values)}")
        known = [f.name for f in fields(cls)]
        unknown = [str(k) for k in values if k not in known]
        if unknown:
            raise UserError(
                f"{where}: unknown parameter {shorten(unknown[0])}; known: {', '.join(known) or 'none'}"
            )
        missing = [f.name for f in fields(cls) if is_required(f) and f.name not in values]
        if missing:
            raise UserError(f"{where}.{missing[0]}: missing (required)")
        try:
            return cls(**dict(values))
        except ParamError as exc:
            raise UserError(f"{where}.{exc.name}: {exc.message}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain values, in field order (what a run's parameters record)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> Self:
        return type(self)(**{**self.to_dict(), **changes})


def is_required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def help_of(f: Field) -> str:
    return str(f.metadata.get("help") or "")


def constraint_of(f: Field) -> Constraint:
    return f.metadata.get("check") or Anything()


def cli_names(f: Field) -> tuple[str, ...]:
    names = f.metadata.get("cli")
    return tuple(names) if names else ("--" + f.name.replace("_", "-"),)


# Bounds shared by many stages: a seed, a batch of examples, a count of examples.
SEED = Interval(int, 0, 2**32 - 1)
RUN_ID = Text("a run id", pattern=r"[A-Za-z0-9][A-Za-z0-9_.:=-]*", max_length=200)
NAME = Text("a name (letters, digits, _ . -)", pattern=r"[A-Za-z0-9_.-]+", max_length=200)
COLUMN = Text("a column name", pattern=r"[A-Za-z_][A-Za-z0-9_]*", max_length=200)


def number(low: float, high: float, closed: str = "both") -> Interval:
    return Interval(float, low, high, closed)


def integer(low: int, high: int) -> Interval:
    return Interval(int, low, high)
