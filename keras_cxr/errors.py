"""Errors that are the user's to fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (a path, a CSV, an option). Message is one line, names the input."""

    exit_code = 2


class DataError(UserError):
    """A data file or folder that cannot be used as it is."""
