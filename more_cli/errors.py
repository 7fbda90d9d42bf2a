"""The one exception type that means "the user can fix this".

The CLI prints a ``UserError`` as a single ``error: ...`` line and exits with code 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input (recipe, data, paths, flags). The message names the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []
