"""Errors that mean "the user asked for something wrong", as opposed to a bug, and the exit codes.

The command-line entry points catch :class:`UserError` and print its message with a non-zero exit code
instead of a traceback; everything else is a bug and keeps its traceback. One class for every room, so an
error raised in one (a bad checkpoint found by ``training.model.load_checkpoint``, bad metadata found by
``export.artifact``) reaches the command line of another as the same type.

Exit codes: 1 for a mistake in what was asked (a missing file, a bad option, a gallery another process
writes), 2 for damaged data (a gallery that fails its load checks), 3 for a server that stopped but not
cleanly (requests cancelled, changes never saved).
"""

EXIT_USER = 1
EXIT_DAMAGED = 2
EXIT_UNCLEAN = 3


class UserError(Exception):
    """A mistake in the caller's input (missing folder, bad option, malformed file).

    Args:
        message: one sentence for the user.
        exit_code: the process exit status a CLI ends with (:data:`EXIT_USER` unless data is damaged).
    """

    def __init__(self, message: str, exit_code: int = EXIT_USER) -> None:
        super().__init__(message)
        self.exit_code = exit_code
