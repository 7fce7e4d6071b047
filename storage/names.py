"""Names a user gives to things in the lake (datasets, recipes): one rule, checked in one place."""

from __future__ import annotations

import re

from storage.errors import UserError, shorten

NAME_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit, at most 128 characters"
# `\Z`, not `$`: `$` also matches before a trailing newline, which would let "name\n" through.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME.match(value) is not None


def check_name(value: object, what: str) -> str:
    """`value` if it is a valid name, else UserError("{what} {value!r}: use ..."); `what` names the
    option or field, e.g. "--dataset" or "recipe.yaml: line 2: name"."""
    if not is_name(value):
        raise UserError(f"{what} {shorten(value)}: use {NAME_RULE}")
    return value
