"""Errors that mean "the user asked for something wrong", as opposed to a bug.

The command-line entry points catch :class:`UserError` and print its message with a
non-zero exit code instead of a traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the caller's input (missing folder, bad option, malformed file)."""
