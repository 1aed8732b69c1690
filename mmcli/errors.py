"""The one exception type for mistakes a user can make (bad files, bad flags).

The CLI's ``main()`` turns a :class:`UserError` into one line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, explained in one line.

    Name the input (file path, flag) and the problem, e.g.
    ``UserError("preds.json: image 42 has two predictions")``.
    """


def examples(ids: list, k: int = 3, show=repr) -> str:
    """The first ``k`` of ``ids`` for an error message, each through ``show``: ``'a', 'b', 'c' and 4 more``."""
    shown = ", ".join(show(i) for i in ids[:k])
    return shown + (f" and {len(ids) - k} more" if len(ids) > k else "")


def first_line(e: BaseException) -> str:
    """An exception's message for a one-line error: its first line, or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
