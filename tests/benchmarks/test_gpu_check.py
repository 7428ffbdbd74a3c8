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
