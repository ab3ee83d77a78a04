"""The one exception type vbp raises for bad input, so callers (and the CLI) can tell it apart."""


class VbpError(ValueError):
    """Bad input to vbp: the message says what was wrong and what to do instead."""
