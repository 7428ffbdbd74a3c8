"""Turn a gallery item's ``source`` into a file the server may read, and nothing else.

A ``source`` is metadata: ``python -m serving index`` stores paths relative to the image root it crawled,
but anyone with the API key can ``POST /gallery`` an item whose source is ``../../etc/passwd`` or
``/root/.ssh/id_rsa``, and a file under a root may be a symlink to anywhere. So a source is never opened
as given. :func:`resolve_source` accepts it only when it is a plain relative path and, after every symlink
is followed (``os.path.realpath``), the file still lies inside one of the configured roots (containment
checked with ``os.path.commonpath`` on the resolved paths; a string prefix test would let ``/data/img``
"contain" ``/data/img-private``). Everything else raises :class:`UnsafeSourceError`.

The roots themselves are resolved too, so a root that is itself a symlink (``/srv/images -> /mnt/nas``)
works, and a link *inside* a root that points elsewhere inside the same root works as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

logger = logging.getLogger(__name__)


class SourceError(Exception):
    """A gallery item's source cannot be served; the message is safe to show a client (no server paths)."""


class UnsafeSourceError(SourceError):
    """The source is absolute, climbs with ``..``, or resolves (through symlinks) outside every image root."""


class SourceNotFoundError(SourceError):
    """The source is acceptable but no image root holds a regular file at that path (it was moved or deleted)."""


def _is_within(path: str, root: str) -> bool:
    # Both arguments are realpath()s, so no "..", no symlinks and no trailing separators are left to fool it.
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows) or a mix of absolute and relative paths
        return False


def check_relative(source: str) -> PurePosixPath:
    """Validate a stored source as a relative path that cannot climb out of the folder it is joined to.

    Args:
        source: the item's ``source`` metadata (POSIX separators, as the indexer writes it).

    Returns:
        The source as a relative POSIX path.

    Raises:
        UnsafeSourceError: empty, contains a NUL byte, is absolute (POSIX, Windows drive or UNC), or has
            a ``..`` component. ``..`` is refused even when it would stay inside the root
            (``a/../b``): the indexer never writes one, so its presence means a hand-made source.
    """
    if not isinstance(source, str) or not source.strip():
        raise UnsafeSourceError("the item has an empty source")
    if "\x00" in source:
        raise UnsafeSourceError("the item's source contains a NUL byte")
    normalised = source.replace("\\", "/")
    if PurePosixPath(normalised).is_absolute() or PureWindowsPath(source).drive or PureWindowsPath(source).root:
        raise UnsafeSourceError("the item's source is an absolute path; only paths relative to an image root "
                                "are served")
    relative = PurePosixPath(normalised)
    if ".." in relative.parts:
        raise UnsafeSourceError("the item's source contains '..'; only paths inside an image root are served")
    return relative


def locate_source(source: str, roots: Iterable[str | Path]) -> tuple[Path, PurePosixPath]:
    """``(real root, path inside it)`` of the file ``source`` names under the first image root that holds it.

    The path inside the root is the resolved one (no links left in it), so the file can then be opened with
    :func:`serving.core.beneath.open_beneath`, which refuses any link that appears on the way afterwards.

    Args:
        source: the item's ``source`` metadata, relative to the root it was indexed from.
        roots: the configured image roots, tried in order (a gallery built from several folders).

    Raises:
        UnsafeSourceError: see :func:`check_relative`, or the path resolves outside its root (a symlink
            that leaves it). Checked for every root before giving up, so an escape is reported as such
            rather than as "not found".
        SourceNotFoundError: no root holds a regular file at ``source`` (or no roots are configured).
    """
    relative = check_relative(source)
    escaped = False
    for root in roots:
        try:
            real_root = os.path.realpath(root)
            candidate = os.path.realpath(os.path.join(real_root, *relative.parts))
        except OSError as exc:  # a component changed while it was resolved (a link swapped, a folder removed)
            logger.warning("source %r could not be resolved under %s: %s", source, root, exc)
            continue
        if not os.path.isdir(real_root):
            continue
        if not _is_within(candidate, real_root):
            escaped = True  # with no ".." and no absolute part, only a symlink can lead out of the root
            continue
        if os.path.isfile(candidate):
            return Path(real_root), PurePosixPath(Path(candidate).relative_to(real_root).as_posix())
    if escaped:
        logger.warning("refused source %r: it resolves outside the image roots (a symlink leaves them)", source)
        raise UnsafeSourceError("the item's source resolves outside the image roots (through a symlink)")
    raise SourceNotFoundError("no image root holds the item's source file; it may have been moved or deleted")


def resolve_source(source: str, roots: Iterable[str | Path]) -> Path:
    """The real path of the file ``source`` names under the first image root that holds it.

    Returns:
        The fully resolved path of a regular file inside one of ``roots``.

    Raises:
        UnsafeSourceError, SourceNotFoundError: as :func:`locate_source`.
    """
    root, inside = locate_source(source, roots)
    return root.joinpath(*inside.parts)
