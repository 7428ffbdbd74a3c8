"""The foundation every room of xmreid may import, and which imports nothing of ours.

- :mod:`xmreid.errors`: :class:`~xmreid.errors.UserError` and the process exit codes;
- :mod:`xmreid.cli`: the ``python -m training|export|serving <command>`` dispatcher and the package version;
- :mod:`xmreid.atomic`: the one atomic file write (temporary file, fsync, ``os.replace``).
- :mod:`xmreid.machine`: the machine a result was measured on (CPU name, usable cores).

Standard library only, so ``index`` (which knows nothing of models) and the torch-free serving paths can use
it without pulling in any other room.
"""
