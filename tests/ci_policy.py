"""Strict CI mode: with ``CI`` set, a skipped test fails unless its reason is on :data:`ALLOWED_SKIP_REASONS`.

On a laptop a test whose optional piece is missing (a pinned package, Chromium, the Triton binary) skips and
says why. In CI every package of ``requirements.txt`` is installed and ``make test`` installs the browser and
the Triton server, so a skip there can only be a broken install silently hiding a suite. This module is a
pytest plugin (``tests/conftest.py`` registers it) whose hooks turn such skips into failures, at collection
and at run time; only tests that need hardware a CPU-only CI machine lacks (a CUDA GPU, TensorRT) may skip.

Test modules import :func:`require` instead of ``pytest.importorskip`` for pinned packages: it skips with the
reason outside CI and fails under CI, naming the import error.
"""

from __future__ import annotations

import importlib
import os
import re
from types import ModuleType
from typing import Any

import pytest

#: The skips CI accepts: a regular expression matched at the start of the skip reason, and why it may skip.
#: Each one needs a CUDA GPU or TensorRT, or is the CPU-only half of such a test that a GPU machine skips.
ALLOWED_SKIP_REASONS: tuple[tuple[str, str], ...] = (
    (r"needs TensorRT and a CUDA GPU\b", "TensorRT engine build and parity (export)"),
    (r"TensorRT not usable\b", "TensorRT embedder parity against ONNX Runtime (serving)"),
    (r"needs a CUDA GPU and onnxruntime-gpu\b", "Ray batch indexing on ONNX Runtime's CUDA provider"),
    (r"needs faiss-gpu and a CUDA GPU\b", "FAISS indexes on the GPU"),
    (r"a GPU is (here|present)\b", "a check of the CPU-only behaviour, which a GPU machine cannot show"),
    (r"TensorRT is usable here\b", "the fallback without TensorRT, which a TensorRT machine cannot show"),
)
_ALLOWED = tuple(re.compile(pattern) for pattern, _ in ALLOWED_SKIP_REASONS)
_TRUE = {"1", "true", "yes", "on"}


def strict() -> bool:
    """Whether skips are policed: the ``CI`` environment variable is set to a true value (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in _TRUE


def skip_allowed(reason: str) -> bool:
    """Whether a skip with this reason may stay a skip under CI."""
    reason = reason.removeprefix("Skipped: ").strip()
    return any(pattern.match(reason) for pattern in _ALLOWED)


def require(modname: str, reason: str | None = None) -> ModuleType:
    """Import a pinned test dependency: outside CI skip (with ``reason``) when it does not import, under CI fail.

    Unlike ``pytest.importorskip`` it treats any ``ImportError`` alike (a package that is installed but broken
    is as absent as a missing one), and it never lets CI pass with the tests that need the package unrun.
    """
    __tracebackhide__ = True  # report the skip or failure at the caller's line
    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        error = f"{type(exc).__name__}: {exc}"
    if strict():
        pytest.fail(f"CI: {modname} does not import ({error}); requirements.txt pins it, so the tests that need it "
                    f"must run, not skip", pytrace=False)
    pytest.skip(reason or f"{modname} does not import ({error})", allow_module_level=True)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason of a skipped report (its long representation is ``(path, line, "Skipped: reason")``)."""
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def police(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI, turn a skipped report whose reason is not allowed into a failure that quotes the reason."""
    if not strict() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if skip_allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"CI=true: skipped ({reason}); under CI only tests that need a CUDA GPU or TensorRT may "
                       f"skip (tests/ci_policy.py lists the allowed reasons)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    police(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report = yield
    police(report)
    return report
