"""Errors that mean "the user asked for something wrong", as opposed to a bug.

The command-line entry points catch :class:`UserError` and print its message with a
non-zero exit code instead of a traceback; everything else is a bug and keeps its traceback.

This is the one definition of :class:`UserError` in the repository. ``training.errors`` and
``serving.errors`` re-export it, so an error raised in one room (a bad checkpoint found by
``training.model.load_checkpoint``, bad metadata found by :mod:`export.artifact`) reaches the command
line of another as the same type, with no re-raising by hand.

Why here: every room must be able to import it. ``serving`` may import only ``index`` and the torch-free
artifact contract (``export/artifact.py``, this file, ``export/_io.py``), and its ONNX Runtime path must
not load ``training`` at all (``tests/serving/test_embedders.py`` checks), so the class cannot live in
``training``; ``index`` knows nothing of user commands. This file imports nothing (``export/__init__.py``
is empty), so ``training`` importing it brings in no export code and no cycle between files.
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
