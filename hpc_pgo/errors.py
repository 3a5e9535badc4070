"""The one error type a user of the toolkit is meant to read."""


class PgoError(ValueError):
    """Bad input or configuration: one line naming the value, where it came from, and what is valid.

    Command-line entry points print the message (no traceback) and exit with status 2.
    """


def check_options(options: dict, rules: dict, what: str) -> None:
    """PgoError "<what> option <name>=<value> is invalid: must be <description>" for the first
    option whose rule (name -> (predicate, description)) fails; a bool never passes a rule."""
    for name, value in options.items():
        valid, description = rules[name]
        ok = False
        try:
            ok = not isinstance(value, bool) and bool(valid(value))
        except TypeError:
            pass
        if not ok:
            raise PgoError(f"{what} option {name}={value!r} is invalid: must be {description}")
