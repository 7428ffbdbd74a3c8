"""Shared helpers for the benchmark scripts: describe the machine, time calls, write results.

Every script writes ``benchmarks/results/<name>.json`` (machine + raw results), ``<name>.md`` (a
title, the caller's tables, then the machine and the exact command) and ``<name>.png`` (the
caller's plot), so each number can be traced to the hardware, library versions and command that
produced it (the LitServe parity tests record the device next to each threshold for the same reason).

Typical use::

    from benchmarks import _machine
    samples = _machine.time_calls(lambda: model(x), repeat=50, warmup=3)
    row = {"batch": 8, **_machine.summarize(samples)}
    fig, ax = _machine.pyplot().subplots()
    _machine.write_results("embed", {"rows": [row]}, _machine.markdown_table([row]), fig)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from xmreid.machine import cpu_model, usable_cores

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_LIBRARIES = ("numpy", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "torch", "torchvision", "onnxruntime",
                     "onnxruntime-gpu", "tensorrt", "opencv-python-headless", "fastapi", "uvicorn", "httpx")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def command_line() -> str:
    """The command that started this process, as a user would type it (``python -m pkg.mod args``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def shown_command(command: str) -> str:
    """``command`` as the reports print it: paths inside the repository relative to it, other absolute paths
    cut to their last component, so a report names no folder of the machine it ran on (the JSON keeps the
    exact command)."""

    def portable(token: str) -> str:
        if not token.startswith("/"):
            return token
        path = Path(token)
        try:
            return path.relative_to(REPO).as_posix() or "."
        except ValueError:
            return path.name or token

    try:
        tokens = shlex.split(command)
    except ValueError:  # unbalanced quotes: leave it as recorded
        return command
    shown = []
    for token in tokens:
        flag, eq, value = token.partition("=")
        shown.append(f"{flag}={portable(value)}" if eq and flag.startswith("--") else portable(token))
    return shlex.join(shown)


def ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def gpus() -> list[dict[str, str]]:
    """GPUs as ``nvidia-smi`` reports them (empty without an NVIDIA driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    return [{"name": r[0], "memory": r[1], "driver": r[2]} for r in rows if len(r) == 3]


def library_versions(names: Iterable[str] = DEFAULT_LIBRARIES) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def describe_machine(libraries: Iterable[str] = DEFAULT_LIBRARIES) -> dict[str, Any]:
    """CPU, cores, RAM, GPUs, Python, library versions, thread settings, load, date and command."""
    usable = usable_cores()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "cores_usable": usable, "ram_gib": ram_gib(), "gpus": gpus(),
        "python": platform.python_version(), "platform": platform.platform(),
        "libraries": library_versions(libraries),
        "threads_env": {v: os.environ[v] for v in _THREAD_VARS if v in os.environ},
        "load_average_1_5_15": load,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command_line(),
    }


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` over ``repeat`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean in milliseconds, and the sample count."""
    ordered = sorted(samples_s)
    if not ordered:
        return {"n": 0}

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1e3

    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "mean_ms": sum(ordered) / len(ordered) * 1e3, "n": len(ordered)}


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   digits: int = 3) -> str:
    """A GitHub Markdown table; floats get ``digits`` significant digits, missing cells are blank."""
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        return format_number(value, digits).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def format_number(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant digits (whole numbers from ``10**digits`` up), None blank."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_results(name: str, results: dict[str, Any], markdown: str, figure: Any = None,
                  out_dir: Path | None = None, machine: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and (given a matplotlib figure) ``<name>.png``.

    Args:
        name: file stem, e.g. ``"search"``.
        results: the raw numbers (JSON-able).
        markdown: the body of the Markdown report (tables, notes); the title, machine and command
            are added here.
        figure: a matplotlib figure to save as PNG.
        out_dir: where to write (default ``benchmarks/results``).
        machine: a :func:`describe_machine` result taken earlier (default: described now).

    Returns:
        The paths written, by kind (``json``, ``md``, ``png``).
    """
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    machine = machine or describe_machine()
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    paths["json"].write_text(json.dumps({"benchmark": name, "machine": machine, "results": results},
                                        indent=2, default=str) + "\n")
    gpu_text = ", ".join(f"{g['name']} ({g['memory']})" for g in machine["gpus"]) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    footer = (f"\n\n## Machine\n\n- CPU: {machine['cpu']}, {machine['cores']} cores "
              f"({machine['cores_usable']} usable), {machine['ram_gib']} GiB RAM\n- GPU: {gpu_text}\n"
              f"- Python {machine['python']}; {libs}\n- Threads: {machine['threads_env'] or 'library defaults'}; "
              f"load average {machine['load_average_1_5_15']}\n- Date: {machine['date']}\n"
              f"- Command: `{shown_command(machine['command'])}`\n")
    paths["md"].write_text(f"# Benchmark: {name}\n\n{markdown.strip()}{footer}")
    if figure is not None:
        paths["png"] = out / f"{name}.png"
        figure.savefig(paths["png"], dpi=120, bbox_inches="tight")
    return paths


def machine_line(machine: dict[str, Any]) -> str:
    """One line for a document that quotes a result: CPU, usable cores, load average at the start, day."""
    load = machine.get("load_average_1_5_15") or ["?"]
    return (f"{machine['cpu']}, {machine['cores_usable']} usable cores, load average {load[0]:g} at the start; "
            f"{machine['date'][:10]}")


def benchmark_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks.<name>``, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=(doc or "").split("\n\n")[0])


def add_output_args(parser: argparse.ArgumentParser, name: str, *, progress: bool = True) -> None:
    """The options every benchmark shares: ``--out`` (folder), ``--name`` (file stem) and ``--no-progress``."""
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", default=name, help="results file stem")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_and_write(args: Any, run: Callable[[Any], dict[str, Any]], report: Callable[[dict[str, Any]], str],
                  plot: Callable[[dict[str, Any]], Any], *,
                  libraries: Iterable[str] = DEFAULT_LIBRARIES) -> int:
    """The tail of a benchmark's ``main``: describe the machine, run, write JSON / Markdown / PNG, print.

    The machine is described before the run, so the recorded load average is the one the run started under.

    Args:
        args: the parsed command line; ``args.name`` is the file stem and ``args.out`` the folder (None: default).
        run: the measurement (``args`` -> JSON-able results); a :class:`UserError` from it means exit status 1.
        report: results -> Markdown body.
        plot: results -> matplotlib figure.
        libraries: the distributions whose versions the machine description lists.

    Returns:
        The exit status: 0, or 1 after one ``error:`` line on stderr.
    """
    import logging

    from xmreid.errors import UserError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = describe_machine(libraries)
    try:
        results = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report(results)
    paths = write_results(args.name, results, text, plot(results), out_dir=args.out, machine=machine)
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
