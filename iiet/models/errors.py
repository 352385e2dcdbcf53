"""One exception type for bad user input.

Raise ``IIETError("what is wrong; how to fix it")`` for anything a user can correct (a missing file, a wrong config
value, an impossible iteration plan, a vocabulary mismatch, a corrupt checkpoint). The CLI prints it as a single
``iiet: error: ...`` line and exits with status 2; Python callers can catch it (it is a ``ValueError``).
"""


class IIETError(ValueError):
    """Bad input that the user can fix; the message names the problem and the fix."""


class SchemeConfigError(IIETError):
    """A scheme value the model cannot be built with; the message says how to fix it."""
