"""Errors that are the user's to fix (bad file, bad option). The CLI prints one line, exits 2."""


class UserError(Exception):
    """Bad input from a user: a file, a row, a column or an option. Never a bug."""


def shorten(value: object, limit: int = 80) -> str:
    """A bounded `repr` of `value`, at most `limit` characters: an error message never echoes a huge or
    deeply nested value back (reprlib stops after a few levels and items, so the cost is bounded too)."""
    import reprlib

    brief = reprlib.Repr()
    brief.maxlevel, brief.maxstring, brief.maxother, brief.maxlong = 3, limit, limit, 40
    for name in ("maxtuple", "maxlist", "maxarray", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
        setattr(brief, name, 6)
    try:
        text = brief.repr(value)
    except Exception:  # noqa: BLE001 (a value whose repr fails still gets a message)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
