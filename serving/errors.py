"""Errors that mean "the user asked for something wrong", as opposed to a bug.

The command-line entry points catch :class:`UserError` and print its message with a
non-zero exit code instead of a traceback; everything else is a bug and keeps its traceback.

Exit codes: 1 for a mistake in what was asked (a missing file, a bad option, a gallery another process
writes), 2 for damaged data (a gallery that fails its load checks: :data:`EXIT_DAMAGED`), 3 for a server
that stopped but not cleanly (requests cancelled, changes never saved: :data:`EXIT_UNCLEAN`).
"""

# One class for serving and the artifact contract it reads models through (export/errors.py is torch-free):
# a metadata error raised by export.artifact is a serving UserError too, caught by the same handlers.
from export.errors import EXIT_USER, UserError

EXIT_DAMAGED = 2
EXIT_UNCLEAN = 3

__all__ = ["EXIT_DAMAGED", "EXIT_UNCLEAN", "EXIT_USER", "UserError"]
