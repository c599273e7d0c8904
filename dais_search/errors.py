"""The one exception type for problems a user can fix.

The CLI prints a :class:`UserError` as ``error: <message>`` and exits with status 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

__all__ = ["DivergedError", "UserError"]


class UserError(ValueError):
    """Bad input (file, name, option) with a message that names the problem and the fix."""


class DivergedError(UserError):
    """A run produced a non-finite loss, gradient, weight or metric. The message names the stage and
    the step; nothing from the diverged state is saved (the last good checkpoint stays as it was)."""
