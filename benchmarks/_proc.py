"""CPU accounting and core pinning for the HTTP benchmark: what the OS says a process spent, not wall time.

A server's cost per request is the CPU time its process was charged while it answered them. Linux keeps
it in ``/proc/<pid>/stat`` (fields 14 and 15, ``utime`` and ``stime``, in clock ticks, summed over every
thread of the process; proc(5)); ``/proc/<pid>/task/<pid>/stat`` is the main thread alone, which for
uvicorn is the event loop. psutil reads the same files; it is not a requirement, so it is used only
where ``/proc`` is missing (macOS).

Pinning: on a small machine the load generator competes with the server for the same cores, and its
CPU time would show up as the server's latency. :func:`split_cores` gives the client the first usable
core and the server the rest, applied with ``sched_setaffinity`` (the system call ``taskset`` makes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds charged to a process so far.

    Attributes:
        total: user + system time of every thread.
        main_thread: user + system time of the main thread (None where it cannot be read).
    """

    total: float
    main_thread: float | None

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        main = None if self.main_thread is None or other.main_thread is None else self.main_thread - other.main_thread
        return CpuTimes(self.total - other.total, main)


def _stat_seconds(path: str) -> float:
    with open(path, "rb") as f:
        text = f.read().decode()
    # The command name (field 2) is in parentheses and may contain spaces: split after its closing one.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime: fields 14 and 15 of the line


def cpu_times(pid: int) -> CpuTimes | None:
    """CPU seconds charged to process ``pid`` (all threads, and its main thread), or None if unreadable.

    Resolution is one clock tick (10 ms on most kernels): measure over hundreds of requests.
    """
    try:
        return CpuTimes(_stat_seconds(f"/proc/{pid}/stat"), _stat_seconds(f"/proc/{pid}/task/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional: only where /proc is not available
    except ImportError:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return CpuTimes(float(t.user + t.system), None)


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask), sorted; [] where the OS cannot say."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def split_cores(cores: list[int] | None = None) -> tuple[set[int], set[int]] | None:
    """``(client cores, server cores)``: the first usable core for the load generator, the rest for the server.

    Returns:
        None on a machine with fewer than two usable cores (nothing to split) or without affinity support.
    """
    cores = usable_cores() if cores is None else sorted(cores)
    if len(cores) < 2:
        return None
    return {cores[0]}, set(cores[1:])


def pin(cores: set[int]) -> set[int] | None:
    """Run this process (the calling thread and the threads it starts from now on) on ``cores``.

    Returns:
        The previous affinity, to restore it; None where affinity is not supported.
    """
    try:
        previous = set(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cores)
    except (AttributeError, OSError):
        return None
    return previous


def describe(cores: set[int] | None) -> str:
    """``"1"`` / ``"1-3"`` / ``"0,2"``: a core set as ``taskset -c`` writes it."""
    if not cores:
        return "all"
    ordered = sorted(cores)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(map(str, ordered))
