"""``python -m benchmarks.gpu_check``: on a machine without a GPU every check skips with its reason and the
command exits 0; ``--simulate-on-cpu`` runs the torch checks' own code on the CPU (no GPU claim)."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check


def test_without_gpu_every_check_says_why_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check._machine, "RESULTS_DIR", tmp_path)
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the checks would run for real")
    assert gpu_check.main([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(gpu_check.CHECKS)
    assert all(" skipped: " in line and len(line.split("skipped: ")[1]) > 10 for line in lines), lines
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {c["name"]: c["status"] for c in report["results"]["checks"]} == dict.fromkeys(gpu_check.CHECKS, "skipped")
    assert "| train_step | skipped |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_simulated_torch_checks_run_the_real_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check._machine, "RESULTS_DIR", tmp_path)
    assert gpu_check.main(["--simulate-on-cpu", "--checks", "torch_embedder,search_http"]) == 0
    out = capsys.readouterr().out
    assert "torch_embedder    passed" in out and "search_http       passed" in out
    assert not list(tmp_path.iterdir())  # a simulation writes no results


def test_unknown_check_is_a_clear_error(capsys):
    assert gpu_check.main(["--checks", "warp_drive"]) == 2
    assert "valid checks are train_step" in capsys.readouterr().err


def _bare_site(root, distributions: tuple[str, ...]) -> str:
    """A folder holding only ``distributions`` and what they require: a machine with nothing else installed."""
    import importlib.metadata as md
    import os
    import re

    todo, seen = list(distributions), set()
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # a requirement for another Python (its marker is not read here)
            continue
        todo += [re.split(r"[\s<>=~!;\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
        for top in {f.parts[0] for f in dist.files or [] if not f.parts[0].startswith("..")}:
            if top != "__pycache__" and not (root / top).exists() and os.path.exists(dist.locate_file(top)):
                os.symlink(dist.locate_file(top), root / top)
    return str(root)


@pytest.mark.parametrize("installed", [("torch", "numpy"), ("torch",)], ids=["torch+numpy", "torch-only"])
def test_a_bare_machine_with_only_torch_names_what_each_check_needs(tmp_path, installed):
    # --simulate-on-cpu stands in for the GPU, so every skip here is for a missing package, none for the GPU.
    import os
    import subprocess
    import sys

    from tests.deploy.stack import REPO

    site = _bare_site(tmp_path, installed)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{site}"}
    proc = subprocess.run([sys.executable, "-S", "-m", "benchmarks.gpu_check", "--simulate-on-cpu"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(None, 1) for line in proc.stdout.strip().splitlines())
    assert list(lines) == list(gpu_check.CHECKS)
    for check, line in lines.items():
        missing = [gpu_check.PACKAGES[m] for m in gpu_check.NEEDS[check] if m not in installed]
        assert line == f"skipped: needs {', '.join(missing)}, not installed here", (check, line)
    assert ("numpy" in lines["faiss_gpu"]) == ("numpy" not in installed)


def test_every_check_names_its_packages_and_docs_list_them():
    assert set(gpu_check.NEEDS) == set(gpu_check.CHECKS)
    assert all(m in gpu_check.PACKAGES for modules in gpu_check.NEEDS.values() for m in modules)
    from tests.deploy.stack import REPO

    rows = {line.split("|")[1].strip(): line for line in (REPO / "docs" / "gpu.md").read_text().splitlines()
            if line.startswith("| `")}
    for check, modules in gpu_check.NEEDS.items():
        row = rows.get(f"`{check}`")
        assert row, f"docs/gpu.md's table has no row for {check}"
        for module in modules:
            package = gpu_check.PACKAGES[module].split(" (")[0]
            assert package in row, (check, package)
