"""Plain values across a process boundary: a strict, type-checked JSON encoding of builtin values.

The code verifier's checker and candidate run in separate processes; arguments and return values
cross as one JSON line each. Only these types cross, and only exactly these types (a subclass of
int or str, or an object of any user class, is refused):
None, bool, int, float, str, bytes, complex, list, tuple, set, frozenset, dict.
JSON carries None, bool, str, finite floats and ints below 2**53 as they are; everything else is an
object with exactly one tag: {"int": hex}, {"float": "nan" | "inf" | "-inf"}, {"bytes": hex},
{"complex": [re, im]}, {"tuple": [...]}, {"set": [...]}, {"frozenset": [...]}, {"dict": [[k, v], ...]}.

`decode` builds fresh builtin objects from parsed JSON and refuses anything else (an unknown tag,
an extra key, a big int without its tag, nesting deeper than MAX_DEPTH, an unhashable set member),
so whatever bytes a candidate writes, the checker holds only plain data. Stdlib only: this file is
copied into the sandbox for both sides.
"""

from __future__ import annotations

import json
import math

MAX_DEPTH = 100
MAX_HEX_DIGITS = 1_000_000
_SAFE_INT = 2**53
_HEX = frozenset("0123456789abcdef")


class Unserialisable(Exception):
    """A value that is not plain builtin data (the candidate side reports its type)."""


class Malformed(Exception):
    """Bytes that are not a valid encoding (the checker side refuses them)."""


def encode(value: object, depth: int = 0) -> object:
    if depth > MAX_DEPTH:
        raise Unserialisable(f"a value nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -_SAFE_INT < value < _SAFE_INT else {"int": format(value, "x")}
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind is list:
        return [encode(item, depth + 1) for item in value]
    if kind is tuple or kind is set or kind is frozenset:
        return {kind.__name__: [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [encode(value.real), encode(value.imag)]}
    raise Unserialisable(f"an object of class {kind.__module__}.{kind.__qualname__}")


def _items(body: object, depth: int) -> list:
    if type(body) is not list:
        raise Malformed("a tagged collection must hold a list")
    return [decode(item, depth + 1) for item in body]


def _int(body: object) -> int:
    digits = body[1:] if type(body) is str and body.startswith("-") else body
    if type(digits) is not str or not digits or len(digits) > MAX_HEX_DIGITS or not _HEX.issuperset(digits):
        raise Malformed("a tagged int must be lower-case hex digits")
    value = int(body, 16)
    if -_SAFE_INT < value < _SAFE_INT:
        raise Malformed("a small int must not be tagged")
    return value


def _pairs(body: object, depth: int) -> dict:
    if type(body) is not list:
        raise Malformed("a dict must hold a list of pairs")
    out = {}
    for pair in body:
        if type(pair) is not list or len(pair) != 2:
            raise Malformed("a dict entry must be a [key, value] pair")
        out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
    return out


def _complex(body: object, depth: int) -> complex:
    parts = _items(body, depth)
    if len(parts) != 2 or not all(type(x) is float for x in parts):
        raise Malformed("a complex must hold [real, imag] as floats")
    return complex(parts[0], parts[1])


def _float(body: object) -> float:
    if body not in ("nan", "inf", "-inf"):
        raise Malformed("a tagged float must be nan, inf or -inf")
    return float(body)


def _bytes(body: object) -> bytes:
    if type(body) is not str:
        raise Malformed("bytes must be hex text")
    return bytes.fromhex(body)


_TAGS = {
    "int": lambda body, depth: _int(body),
    "float": lambda body, depth: _float(body),
    "bytes": lambda body, depth: _bytes(body),
    "complex": _complex,
    "tuple": lambda body, depth: tuple(_items(body, depth)),
    "set": lambda body, depth: set(_items(body, depth)),
    "frozenset": lambda body, depth: frozenset(_items(body, depth)),
    "dict": _pairs,
}


def decode(obj: object, depth: int = 0) -> object:
    """A fresh builtin value from parsed JSON (what `json.loads` returned); Malformed otherwise."""
    if depth > MAX_DEPTH:
        raise Malformed(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(obj)
    if obj is None or kind is bool or kind is str or kind is float:
        return obj
    if kind is int:
        if not -_SAFE_INT < obj < _SAFE_INT:
            raise Malformed("a big int must be tagged")
        return obj
    if kind is list:
        return [decode(item, depth + 1) for item in obj]
    if kind is not dict or len(obj) != 1:
        raise Malformed("an object must carry exactly one tag")
    ((tag, body),) = obj.items()
    build = _TAGS.get(tag)
    if build is None:
        raise Malformed(f"unknown tag {str(tag)[:40]!r}")
    try:
        return build(body, depth)
    except (TypeError, ValueError) as e:  # unhashable members, bad hex
        raise Malformed(f"bad {tag}: {e}") from None


def _no_constants(name: str) -> None:
    raise Malformed(f"JSON constant {name} is not allowed")


def dumps(message: object) -> bytes:
    """One line of JSON (no raw newlines inside), ASCII only."""
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def loads(line: bytes) -> object:
    """Parsed JSON of one line; Malformed for anything that is not (bad UTF-8, bad JSON, NaN tokens,
    nesting deep enough to exhaust the parser, ints too long for the interpreter's limit)."""
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Malformed(f"not JSON: {str(e)[:200]}") from None
