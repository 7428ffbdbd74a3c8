"""Open a file beneath a directory so that no component of the path can be swapped for a link on the way.

Checking a path (``realpath``) and then opening it by name loses a race: between the two, any folder on the
way can be replaced by a symbolic link to somewhere else, and ``O_NOFOLLOW`` only guards the last component.
:func:`open_beneath` therefore opens the root once and resolves the relative path from that descriptor with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` (Linux 5.6+), which refuses, atomically, any ``..`` that
climbs out and any symbolic link on the way. Where the kernel has no ``openat2`` it walks the path one
component at a time with directory descriptors (``O_NOFOLLOW | O_DIRECTORY`` for each folder, ``O_NOFOLLOW``
for the file), which gives the same guarantee with more system calls.

The caller passes a path already resolved under the root (:func:`serving.core.paths.resolve_source`), so a
legitimate path holds no link and every refusal here means the tree changed under it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import PurePosixPath

# From linux/openat2.h: resolve flags and the system call number (the same on every architecture, 5.6+).
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_syscall() -> ctypes._CFuncPtr | None:
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall
    except (OSError, AttributeError):
        return None


_syscall = _load_syscall()
_have_openat2: bool | None = None if _syscall is not None else False


class EscapeError(OSError):
    """The path leaves the root, or a component of it is a link: the tree changed under the caller."""


def _openat2(dir_fd: int, relative: str, flags: int) -> int:  # only called when _syscall is set
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(relative)),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), relative)
    return int(fd)


def _walk(dir_fd: int, parts: tuple[str, ...], flags: int) -> int:
    """The component-by-component fallback: each folder opened from its parent's descriptor, links refused."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    current = dir_fd
    try:
        for name in parts[:-1]:
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | nofollow | os.O_CLOEXEC, dir_fd=current)
            if current != dir_fd:
                os.close(current)
            current = nxt
        return os.open(parts[-1], flags | nofollow | os.O_CLOEXEC, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


def open_beneath(root: str | os.PathLike[str], relative: str | PurePosixPath, flags: int = os.O_RDONLY, *,
                 use_openat2: bool | None = None) -> int:
    """Open ``root / relative`` for reading without following any link or leaving ``root``.

    Args:
        root: the directory the file must lie beneath (opened once, following links in the root's own path:
            an operator may configure a linked root).
        relative: a relative POSIX path with no ``..`` and no empty components.
        flags: ``os.open`` flags for the file (read-only by default).
        use_openat2: force (True) or forbid (False) the ``openat2`` path; None picks it where the kernel has it.

    Returns:
        An open file descriptor of a regular file; the caller closes it.

    Raises:
        EscapeError: a component is a symbolic link, or the path climbs out of ``root``.
        FileNotFoundError / NotADirectoryError / PermissionError / OSError: as ``open`` would.
    """
    global _have_openat2
    flags |= os.O_NONBLOCK  # a FIFO planted under the root must not hang the request in open()
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise EscapeError(errno.EXDEV, "the path is not a plain relative path", str(relative))
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        want = _have_openat2 if use_openat2 is None else use_openat2
        fd = -1
        if want is not False and _syscall is not None:
            try:
                fd = _openat2(root_fd, "/".join(parts), flags)
                _have_openat2 = True
            except OSError as exc:
                if exc.errno == errno.ENOSYS and use_openat2 is None:
                    _have_openat2 = False  # an old kernel: the walk below from now on
                elif exc.errno in (errno.ELOOP, errno.EXDEV):
                    raise EscapeError(exc.errno, "a component of the path is a link or leaves the root",
                                      str(relative)) from None
                else:
                    raise
        if fd < 0:
            try:
                fd = _walk(root_fd, parts, flags)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link_on_the_way(root_fd, parts):
                    raise EscapeError(errno.ELOOP, "a component of the path is a link", str(relative)) from None
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(relative))
        return fd
    finally:
        os.close(root_fd)


def _is_link_on_the_way(root_fd: int, parts: tuple[str, ...]) -> bool:
    # O_NOFOLLOW | O_DIRECTORY on a link gives ENOTDIR on some systems and ELOOP on others; tell the cases apart.
    path = ""
    for name in parts:
        path = f"{path}/{name}" if path else name
        try:
            if stat.S_ISLNK(os.stat(path, dir_fd=root_fd, follow_symlinks=False).st_mode):
                return True
        except OSError:
            return False
    return False
