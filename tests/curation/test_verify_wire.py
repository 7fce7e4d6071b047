"""The strict encoding that carries values between the code checker and the candidate."""

from __future__ import annotations

import math

import pytest

from curation.verify import wire

ROUND_TRIPS = [
    None,
    True,
    0,
    -(2**53) + 1,
    2**53,
    -(2**200),
    0.1,
    -0.0,
    1e308,
    "text with \n newlines and \ud800 a lone surrogate",
    b"\x00\xff",
    3 + 4j,
    [1, [2, [3]]],
    (1, (2,)),
    {1, "a", (2, 3)},
    frozenset({1}),
    {"a": 1, 2: [3], (4, 5): None, frozenset({6}): b"x"},
    [],
    (),
    {},
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
def test_builtin_values_round_trip_with_their_exact_types(value) -> None:
    back = wire.decode(wire.loads(wire.dumps(wire.encode(value))))
    assert back == value and type(back) is type(value)
    assert wire.dumps(wire.encode(value)).count(b"\n") == 1


def test_non_finite_floats_cross_as_tags() -> None:
    for value in (math.inf, -math.inf):
        assert wire.decode(wire.loads(wire.dumps(wire.encode(value)))) == value
    assert math.isnan(wire.decode(wire.loads(wire.dumps(wire.encode(math.nan)))))


class Int(int):
    pass


class Anything:
    def __eq__(self, other):
        return True


@pytest.mark.parametrize(
    "value",
    [Int(3), Anything(), [1, Anything()], {"k": Int(1)}, (x for x in ()), print, object(), bytearray(b"x")],
    ids=repr,
)
def test_anything_but_exact_builtins_is_refused(value) -> None:
    with pytest.raises(wire.Unserialisable):
        wire.encode(value)


def test_a_self_referencing_value_is_refused() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(wire.Unserialisable):
        wire.encode(loop)


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"\xff\xfe\n",
        b"NaN\n",
        b"[Infinity]\n",
        b'{"int": "10"}\n',  # a small int must not be tagged
        b'{"int": "-0x10"}\n',
        b'{"int": "A"}\n',
        b"9007199254740993\n",  # a big int without its tag
        b'{"float": "1.5"}\n',
        b'{"tuple": [1], "set": [2]}\n',
        b'{"__class__": "Anything"}\n',
        b'{"set": [[1]]}\n',  # unhashable member
        b'{"dict": [[1]]}\n',
        b'{"dict": [[[1], 2]]}\n',
        b'{"bytes": "zz"}\n',
        b'{"complex": [1, 2]}\n',
        b"[" * 200 + b"]" * 200 + b"\n",  # deeper than MAX_DEPTH
        b"[" * 100_000 + b"\n",  # deep enough to exhaust the JSON parser
        b"1" * 5000 + b"\n",  # longer than the interpreter's int limit
    ],
)
def test_malformed_input_is_refused_as_malformed(line: bytes) -> None:
    with pytest.raises(wire.Malformed):
        wire.decode(wire.loads(line))
