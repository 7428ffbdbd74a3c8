"""The strict CI mode of ``ci_policy``: which skips CI allows, and that every other skip fails a ``CI=true`` run.

The policy is checked end to end: pytest runs in a subprocess on small generated test files, with the plugin
loaded, once with ``CI=true`` and once without, and the outcome of each generated test is read from JUnit XML.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import ci_policy
import pytest

TESTS = Path(__file__).resolve().parent

# The whole allow-list: widening it is a decision, so it shows up here as a changed test.
EXPECTED_ALLOWED = [
    r"needs TensorRT and a CUDA GPU\b",
    r"TensorRT not usable\b",
    r"needs a CUDA GPU and onnxruntime-gpu\b",
    r"needs faiss-gpu and a CUDA GPU\b",
    r"a GPU is (here|present)\b",
    r"TensorRT is usable here\b",
]

# The GPU/TensorRT skip reasons the suite uses (what a CPU-only CI machine, or a GPU one, prints).
GPU_REASONS = [
    "needs TensorRT and a CUDA GPU: TensorRT is not installed",
    "TensorRT not usable: no CUDA GPU is visible",
    "needs a CUDA GPU and onnxruntime-gpu (CUDA provider)",
    "needs faiss-gpu and a CUDA GPU (faiss.get_num_gpus() == 0 here)",
    "a GPU is present",
    "a GPU is here: the checks would run for real",
    "TensorRT is usable here; this checks the fallback without it",
]

# Skips that would hide a pinned dependency or an install step of `make test`: CI must fail on them.
INSTALL_REASONS = [
    "schemathesis is not installed (pip install schemathesis)",
    "tritonclient[grpc] is not installed (requirements.txt has it)",
    "--engine ray needs the optional ray[data] extra",
    "Milvus Lite (milvus-lite) is not installed",
    "Playwright is not installed (pip install playwright; the browser itself comes from Debian's chromium package)",
    "no Chromium at /usr/bin/chromium (apt-get install -y chromium, or set XMREID_CHROMIUM)",
    "no tritonserver binary: `make triton-server` installs nvidia-pytriton's bundled Triton into .triton/",
    "XMREID_OFFLINE=1: no package registry",
    "could not import 'hypothesis': No module named 'hypothesis'",
    "got empty parameter set for (x)",
    "mentions a GPU later: needs a CUDA GPU",
]

RUNTIME_TESTS = '''
import pytest

@pytest.fixture
def missing_browser():
    pytest.skip("no Chromium at /usr/bin/chromium (apt-get install -y chromium, or set XMREID_CHROMIUM)")

def test_passes():
    assert True

@pytest.mark.skipif(True, reason="needs faiss-gpu and a CUDA GPU (faiss.get_num_gpus() == 0 here)")
def test_gpu_mark():
    raise AssertionError("never runs")

def test_gpu_skip_inside():
    pytest.skip("a GPU is present")

def test_package_skip_inside():
    pytest.skip("schemathesis is not installed (pip install schemathesis)")

@pytest.mark.skipif(True, reason="no tritonserver binary: `make triton-server` installs it")
def test_install_mark():
    raise AssertionError("never runs")

def test_fixture_skip(missing_browser):
    raise AssertionError("never runs")

@pytest.mark.xfail(reason="a known failure is not a skip", strict=True)
def test_xfail():
    raise AssertionError("expected")
'''


def run_pytest(tmp_path: Path, source: str, *, ci: bool, name: str = "test_generated.py") -> tuple[int, dict, str]:
    """Run pytest with the policy plugin on one generated file; (exit code, {test: outcome}, output)."""
    work = tmp_path / ("ci" if ci else "laptop")
    work.mkdir(exist_ok=True)
    (work / "pytest.ini").write_text("[pytest]\n")  # keep the project's own options out of the inner run
    (work / name).write_text(textwrap.dedent(source))
    env = {key: value for key, value in os.environ.items() if key not in {"CI", "PYTEST_ADDOPTS"}}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(tmp_path / "site"), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    junit = work / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_policy", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", name], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    outcomes = {}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            kinds = [child.tag for child in case if child.tag in {"failure", "error", "skipped"}]
            outcomes[case.get("name") or ""] = kinds[0] if kinds else "passed"
    return proc.returncode, outcomes, proc.stdout + proc.stderr


def test_the_allowed_skip_reasons_are_exactly_the_gpu_and_tensorrt_ones() -> None:
    assert [pattern for pattern, _ in ci_policy.ALLOWED_SKIP_REASONS] == EXPECTED_ALLOWED
    assert all(why for _, why in ci_policy.ALLOWED_SKIP_REASONS)
    for reason in GPU_REASONS:
        assert ci_policy.skip_allowed(reason), reason
        assert ci_policy.skip_allowed(f"Skipped: {reason}"), reason
    for reason in INSTALL_REASONS:
        assert not ci_policy.skip_allowed(reason), reason


@pytest.mark.parametrize("value, strict", [("true", True), ("1", True), ("TRUE", True), ("yes", True),
                                           ("", False), ("false", False), ("0", False)])
def test_ci_variable_switches_strict_mode(monkeypatch: pytest.MonkeyPatch, value: str, strict: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert ci_policy.strict() is strict
    monkeypatch.delenv("CI")
    assert ci_policy.strict() is False


def test_under_ci_only_gpu_skips_stay_skips(tmp_path: Path) -> None:
    rc, outcomes, output = run_pytest(tmp_path, RUNTIME_TESTS, ci=True)
    assert rc == 1, output
    assert outcomes == {"test_passes": "passed", "test_gpu_mark": "skipped", "test_gpu_skip_inside": "skipped",
                        "test_package_skip_inside": "failure", "test_install_mark": "error",
                        "test_fixture_skip": "error", "test_xfail": "skipped"}, output
    assert "CI=true: skipped (schemathesis is not installed" in output
    assert "CI=true: skipped (no Chromium at /usr/bin/chromium" in output


def test_outside_ci_every_skip_stays_a_skip(tmp_path: Path) -> None:
    rc, outcomes, output = run_pytest(tmp_path, RUNTIME_TESTS, ci=False)
    assert rc == 0, output
    assert outcomes == {"test_passes": "passed", "test_gpu_mark": "skipped", "test_gpu_skip_inside": "skipped",
                        "test_package_skip_inside": "skipped", "test_install_mark": "skipped",
                        "test_fixture_skip": "skipped", "test_xfail": "skipped"}, output


def broken_package(tmp_path: Path) -> None:
    """A package on the inner run's path that is installed but fails to import, like a broken wheel."""
    package = tmp_path / "site" / "broken_dependency"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise ImportError("broken_dependency is broken on purpose")\n')


@pytest.mark.parametrize("module", ["broken_dependency", "absent_dependency_xyz"])
def test_require_fails_under_ci_and_skips_outside(tmp_path: Path, module: str) -> None:
    broken_package(tmp_path)
    source = f'''
        from ci_policy import require

        dependency = require("{module}", reason="{module} is not installed")

        def test_uses_it():
            assert dependency
        '''
    rc, _, output = run_pytest(tmp_path, source, ci=True)
    assert rc != 0 and f"CI: {module} does not import" in output, output
    assert "1 error" in output, output
    rc, _, output = run_pytest(tmp_path, source, ci=False)
    assert rc == pytest.ExitCode.NO_TESTS_COLLECTED and "1 skipped" in output, output  # the whole file skips


def test_a_module_level_importorskip_fails_collection_under_ci(tmp_path: Path) -> None:
    source = '''
        import pytest

        pytest.importorskip("absent_dependency_xyz", reason="absent_dependency_xyz is not installed")

        def test_uses_it():
            pass
        '''
    rc, _, output = run_pytest(tmp_path, source, ci=True)
    assert rc != 0 and "CI=true: skipped (absent_dependency_xyz is not installed)" in output, output
    rc, _, output = run_pytest(tmp_path, source, ci=False)
    assert rc == pytest.ExitCode.NO_TESTS_COLLECTED and "1 skipped" in output, output  # the whole file skips
