"""Errors that are the user's to fix (bad file, bad option). The CLI prints one line, exits 2."""


class UserError(Exception):
    """Bad input from a user: a file, a row, a column or an option. Never a bug."""
