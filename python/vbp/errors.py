"""The one exception type vbp raises for bad input, so callers (and the CLI) can tell it apart."""


class VbpError(ValueError):
    """Bad input to vbp: the message says what was wrong and what to do instead."""


def malformed(exc: BaseException) -> str:
    """What a loader tripped on in a malformed file, in the file's terms rather than Python's ("'NoneType' object is
    not subscriptable"): a missing entry by name, a value of the wrong kind as such, vbp's own checks as they are."""
    if isinstance(exc, KeyError):
        return f"it has no entry {exc.args[0]!r}" if exc.args else "an entry is missing"
    if isinstance(exc, (TypeError, AttributeError)):
        return "an entry holds a value of the wrong kind (null, or a number, text or list where another is expected)"
    return " ".join(str(exc).split())
