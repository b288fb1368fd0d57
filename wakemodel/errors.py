"""User-facing error types.

Anything a user can cause (a bad file, a missing GPU, a malformed CSV) raises a
:class:`WakeModelError` whose message is one line naming the file or value and
what to do. The CLI prints that line and exits with code 2, without a traceback.
"""


class WakeModelError(Exception):
    """A known, user-facing error; its message is a single actionable line."""


class InputError(WakeModelError, ValueError):
    """An invalid argument value (also a ``ValueError`` for library callers)."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name.

    Used wherever a library's multi-line error is folded into one of ours.
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
