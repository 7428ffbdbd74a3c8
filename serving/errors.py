"""Errors that mean "the user asked for something wrong", as opposed to a bug.

The command-line entry points catch :class:`UserError` and print its message with a
non-zero exit code instead of a traceback; everything else is a bug and keeps its traceback.

Exit codes: 1 for a mistake in what was asked (a missing file, a bad option, a gallery another process
writes), 2 for damaged data (a gallery that fails its load checks: :data:`EXIT_DAMAGED`), 3 for a server
that stopped but not cleanly (requests cancelled, changes never saved: :data:`EXIT_UNCLEAN`).
"""

EXIT_USER = 1
EXIT_DAMAGED = 2
EXIT_UNCLEAN = 3


class UserError(Exception):
    """A mistake in the caller's input (missing folder, bad option, malformed file).

    Args:
        message: one sentence for the user.
        exit_code: the process exit status the CLI ends with (1 unless the data is damaged: 2).
    """

    def __init__(self, message: str, exit_code: int = EXIT_USER) -> None:
        super().__init__(message)
        self.exit_code = exit_code
