"""Errors that are the user's to fix (bad file, bad option). The CLI prints one line, exits 2."""

from __future__ import annotations

import reprlib


class UserError(Exception):
    """Bad input from a user: a file, a row, a column or an option. Never a bug."""


def shorten(value: object, limit: int = 80) -> str:
    """`value` for an error message: its repr, on one line, at most `limit` characters ('...' when cut).

    Strings are quoted and escaped like `{value!r}` (a newline or control character never breaks the
    one-line message); containers show their first few items.
    """
    # reprlib formats only the start of a value: shortening a 5 MB string or a long list costs the same
    # as shortening a short one.
    bounded = reprlib.Repr()
    bounded.maxlevel = 3
    bounded.maxtuple = bounded.maxlist = bounded.maxarray = bounded.maxdict = 4
    bounded.maxset = bounded.maxfrozenset = bounded.maxdeque = 4
    bounded.maxstring = bounded.maxother = bounded.maxlong = limit + 8
    try:
        text = repr(value[: limit + 2]) if isinstance(value, str) else bounded.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the user's error
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."
