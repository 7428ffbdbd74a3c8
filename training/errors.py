"""``UserError`` for the training room: the one class, defined in :mod:`export.errors`.

The command-line entry points catch :class:`UserError` and print its message with a
non-zero exit code instead of a traceback; everything else is a bug and keeps its traceback.

This is the only file of ``training`` that imports another room, and it imports a leaf that imports
nothing (``export/errors.py``, whose docstring says why the class lives there), so ``export`` and
``serving`` catch the very exceptions ``training`` raises with no re-raising by hand.
"""

from export.errors import UserError

__all__ = ["UserError"]
