"""The one exception type for problems a user can fix (bad input, bad config, missing files).

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class SVGError(Exception):
    """A user-facing error with a message that says what is wrong and, where possible, what to do."""


class InvalidValueError(SVGError, ValueError):
    """A number outside its allowed range, NaN or infinite (see ``utils.checks``).

    A ValueError, which is what Python callers expect of a bad argument, and an SVGError, so the CLI reports it
    as one line whichever layer (flag, config field, call argument) found it.
    """
