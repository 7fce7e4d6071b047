"""A YAML loader for files users write (recipes): plain data only, every problem a one-line UserError
with its line number.

On top of PyYAML's safe loader it refuses what makes a small file expensive or ambiguous:
- anchors and aliases (`&a` / `*a`): seven levels of nested aliases expand a 200-byte file to 58 MB
  (a "billion laughs"); recipes have no use for them;
- merge keys (`<<:`), which need aliases or hide duplicate keys;
- duplicate keys in a mapping (PyYAML silently keeps the last one);
- more than `max_depth` levels of nesting (PyYAML recurses: a deep file would end in RecursionError),
  more than `max_nodes` values, and files over `max_bytes`.

The result carries the line of every value, so a checker can say where a bad value is:
`doc.where("stages", 1, "params", "tau")` -> "recipe.yaml: line 12".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from storage.errors import UserError, shorten

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class YamlDocument:
    """A loaded YAML document: `data` (dicts, lists, scalars) and the 1-based line of each value."""

    data: Any
    source: str
    lines: Mapping[Path_, int] = field(default_factory=dict)

    def line(self, *path: Any) -> int | None:
        """The line of the value at `path` (keys and list indexes from the root), or of its nearest
        ancestor that has one; None for an empty document."""
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def where(self, *path: Any) -> str:
        """ "{source}: line N" for the value at `path` (see `line`), or just the source."""
        number = self.line(*path)
        return f"{self.source}: line {number}" if number is not None else self.source

    def error(self, path: Path_, message: str) -> UserError:
        """UserError("{source}: line N: {message}") for the value at `path`."""
        return UserError(f"{self.where(*path)}: {message}")


class _Refused(Exception):
    def __init__(self, mark: yaml.Mark | None, message: str):
        super().__init__(message)
        self.mark, self.message = mark, message


class _Composer(yaml.SafeLoader):
    """The safe loader's parser and resolver, with a composer that refuses anchors, aliases and depth."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(event.start_mark, f"alias *{shorten(event.anchor, 40)[1:-1]} is not allowed")
        if getattr(event, "anchor", None) is not None:
            raise _Refused(
                event.start_mark,
                f"anchor &{shorten(event.anchor, 40)[1:-1]} is not allowed (no anchors or aliases)",
            )
        self._nodes += 1
        if self._nodes > self.max_nodes:
            raise _Refused(event.start_mark, f"more than {self.max_nodes} values")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise _Refused(event.start_mark, f"nested more than {self.max_depth} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _scalar(loader: _Composer, node: yaml.ScalarNode) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:  # e.g. a date out of range: 2001-13-45
        raise _Refused(node.start_mark, f"bad value {shorten(node.value)} ({exc})") from None


def _build(loader: _Composer, node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode):
        return _scalar(loader, node)
    if node.tag not in ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"):
        raise _Refused(
            node.start_mark,
            f"tag {shorten(node.tag, 60)[1:-1]} is not allowed (plain lists and mappings only)",
        )
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, child, (*path, i), lines) for i, child in enumerate(node.value)]
    if not isinstance(node, yaml.MappingNode):  # pragma: no cover - the composer makes no other kind
        raise _Refused(node.start_mark, f"unexpected YAML node {type(node).__name__}")
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise _Refused(key_node.start_mark, "merge keys (<<) are not allowed")
        if not isinstance(key_node, yaml.ScalarNode):
            raise _Refused(key_node.start_mark, "a mapping key must be a plain value, not a list or mapping")
        key = _scalar(loader, key_node)
        if key in out:
            raise _Refused(key_node.start_mark, f"duplicate key {shorten(key)}")
        # A value's line is its key's line: a block list or mapping under a key starts on the next line.
        lines[(*path, key)] = key_node.start_mark.line + 1
        out[key] = _build(loader, value_node, (*path, key), lines)
    return out


def load_yaml(
    text: str | bytes,
    source: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
) -> YamlDocument:
    """Parse one YAML document safely (see the module docstring). Every problem is a UserError
    "{source}: line N: {what}" that quotes at most 80 characters of any value."""
    if isinstance(text, bytes):
        if len(text) > max_bytes:
            raise UserError(f"{source}: {len(text):,} bytes is over the limit of {max_bytes:,}")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = text[: exc.start].count(b"\n") + 1
            raise UserError(f"{source}: line {line}: not valid UTF-8 (byte {exc.start})") from None
    if len(text) > max_bytes:
        raise UserError(f"{source}: {len(text):,} characters is over the limit of {max_bytes:,}")
    loader = _Composer(text)
    loader.max_depth, loader.max_nodes = max_depth, max_nodes
    lines: dict[Path_, int] = {}
    try:
        node = loader.get_single_node()
        data = None if node is None else _build(loader, node, (), lines)
    except _Refused as exc:
        where = f"line {exc.mark.line + 1}: " if exc.mark is not None else ""
        raise UserError(f"{source}: {where}{exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}: {where}invalid YAML ({shorten(problem, 120)[1:-1]})") from None
    except RecursionError:  # pragma: no cover - max_depth stops nesting long before Python's limit
        raise UserError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()
    return YamlDocument(data, source, lines)
