"""The YAML loader for user-written files (recipes) and the shared name check and value shortening."""

from __future__ import annotations

import pytest

from storage import UserError
from storage.errors import shorten
from storage.names import check_name, is_name
from storage.safe_yaml import load_yaml


def test_plain_documents_load_with_the_line_of_every_value() -> None:
    doc = load_yaml("name: demo\nstages:\n  - stage: mix\n    params: {tau: 5.0}\n  - stage: ppp\n", "r.yaml")
    assert doc.data == {
        "name": "demo",
        "stages": [{"stage": "mix", "params": {"tau": 5.0}}, {"stage": "ppp"}],
    }
    assert doc.where("stages", 0, "params", "tau") == "r.yaml: line 4"
    assert doc.where("stages", 1, "stage") == "r.yaml: line 5"
    assert doc.where("stages", 9, "nope") == "r.yaml: line 2"  # the nearest ancestor
    assert str(doc.error(("name",), "bad")) == "r.yaml: line 1: bad"
    assert load_yaml("", "empty.yaml").data is None


BILLION_LAUGHS = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    + "name: *h\n"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BILLION_LAUGHS, "line 1: anchor &a is not allowed"),
        ("a: 1\nb: *a\n", "line 2: alias \\*a is not allowed"),
        ("base: {x: 1}\nother:\n  <<: {y: 2}\n", "line 3: merge keys"),
        ("name: a\nstages: []\nname: b\n", "line 3: duplicate key 'name'"),
        ("a:\n  b: 1\n  b: 2\n", "line 3: duplicate key 'b'"),
        ("[" * 5000 + "]" * 5000, "line 1: nested more than 64 levels deep"),
        ("a: [1\n", "line 2: invalid YAML"),
        ("when: 2001-13-45\n", "line 1: bad value '2001-13-45'"),
        ("x: !!python/object/apply:os.system ['true']\n", "line 1: tag .*os.system is not allowed"),
        ("x: !!python/name:os.system ''\n", "line 1: invalid YAML .could not determine a constructor"),
        ("x: !!set {a, b}\n", "line 1: tag .*set is not allowed"),
        ("? [1, 2]\n: x\n", "line 1: a mapping key must be a plain value"),
        ("a: 1\n---\nb: 2\n", "line 2: invalid YAML"),
    ],
)
def test_refusals_name_the_line_and_stay_short(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        load_yaml(text, "r.yaml")  # the anchor is refused while composing: nothing is ever expanded
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_size_and_encoding_limits() -> None:
    with pytest.raises(UserError, match="over the limit"):
        load_yaml("x" * (2 << 20), "big.yaml")
    with pytest.raises(UserError, match="line 2: not valid UTF-8"):
        load_yaml(b"a: 1\nb: \xff\n", "r.yaml")
    with pytest.raises(UserError, match="more than 10 values"):
        load_yaml("[" + ", ".join("1" * 20) + "]", "r.yaml", max_nodes=10)


def test_shorten_quotes_at_most_the_limit() -> None:
    assert shorten("abc") == "'abc'"
    assert shorten("line\nbreak") == "'line\\nbreak'"
    long = shorten("x" * 10_000_000)
    assert len(long) == 80 and long.endswith("...")
    assert len(shorten(list(range(10**6)))) <= 80 and len(shorten(10**4000)) <= 80
    assert len(shorten("y" * 500, limit=20)) == 20


@pytest.mark.parametrize("name", ["demo", "a.b-c_d", "A1", "x" * 128])
def test_good_names(name: str) -> None:
    assert is_name(name) and check_name(name, "--dataset") == name


@pytest.mark.parametrize("name", ["demo\n", "", "-x", ".x", "a b", "a/b", "x" * 129, "é", None, 5, "a\x00"])
def test_bad_names_are_refused_with_a_short_message(name) -> None:
    assert not is_name(name)
    with pytest.raises(UserError, match="^--dataset .*: use letters"):
        check_name(name, "--dataset")
