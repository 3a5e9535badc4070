"""The one error type a user of the toolkit is meant to read."""


class PgoError(ValueError):
    """Bad input or configuration: one line naming the value, where it came from, and what is valid.

    Command-line entry points print the message (no traceback) and exit with status 2.
    """
