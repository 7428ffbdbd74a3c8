"""Errors that mean "the user asked for something wrong", as opposed to a bug.

The command-line entry points catch :class:`UserError` and print its message with a
non-zero exit code instead of a traceback; everything else is a bug and keeps its traceback.

This module is part of the torch-free artifact contract (:mod:`export.artifact`): serving raises and
catches this very class (``serving.errors`` re-exports it), so an error the contract raises while
serving reads a model reaches serving's command line as the same type, with no re-raising by hand.
"""

#: Process exit status of a mistake in what was asked (see ``serving.errors`` for the others).
EXIT_USER = 1


class UserError(Exception):
    """A mistake in the caller's input (missing folder, bad option, malformed file).

    Args:
        message: one sentence for the user.
        exit_code: the process exit status a CLI ends with (1 unless serving finds damaged data: 2).
    """

    def __init__(self, message: str, exit_code: int = EXIT_USER) -> None:
        super().__init__(message)
        self.exit_code = exit_code
