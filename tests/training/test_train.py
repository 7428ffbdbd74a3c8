"""The trainer, the evaluate CLI and the ablation command on the tiny config (seconds on CPU)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training.__main__ import main as cli
from training.ablation import build_parser as build_ablation_parser
from training.model import CHECKPOINT_KEYS, load_checkpoint
from training.train import main as train_main

pytestmark = pytest.mark.slow


def _tiny(repo_root: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(repo_root / "configs" / "tiny.yaml"), "--data-root", str(data), "--output-dir", str(out),
            "--no-progress", *extra]


def _tiny_ablation(repo_root: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """``python -m training ablation`` on the tiny config: one step per epoch, one evaluation draw."""
    return ["ablation", "--config", str(repo_root / "configs" / "tiny.yaml"), "--data-root", str(data), "--output-dir",
            str(out), "--max-steps-per-epoch", "1", "--eval-trials", "1", "--no-progress", *extra]


def test_checkpoint_holds_the_contract(tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["config"]["arch"] == "resnet18" and ckpt["config"]["batch_pairs"] == 8
    assert ckpt["model_config"]["height"] == 96 and ckpt["model_config"]["width"] == 32
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"])
    model, _ = load_checkpoint(tiny_checkpoint)
    assert model(torch.zeros(2, 3, 96, 32, dtype=torch.uint8)).shape == (2, 1536)
    run = tiny_checkpoint.parent
    # Resolved arguments beside the checkpoint: YAML values plus command-line overrides.
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["arch"] == "resnet18" and args["no_progress"] is True and args["output_dir"] == str(run)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["loss"]) > 0 for r in rows)
    assert float(rows[0]["lr_backbone"]) == pytest.approx(0.01) and float(rows[0]["lr_head"]) == pytest.approx(0.1)
    final = json.loads((run / "final_metrics.json").read_text())["sysu_all_single"]
    assert 0 <= final["r1"] <= final["r20"] <= 1 and final["trials"] == 2


def test_resume_reproduces_an_uninterrupted_run(repo_root, sysu_root, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_main(_tiny(repo_root, sysu_root, straight, "--epochs", "2", "--no-eval")) == 0
    assert train_main(_tiny(repo_root, sysu_root, split, "--epochs", "1", "--no-eval")) == 0
    assert torch.load(split / "last.pt", weights_only=True)["epoch"] == 1
    assert train_main(_tiny(repo_root, sysu_root, split, "--epochs", "2", "--no-eval",
                            "--resume", str(split / "last.pt"))) == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
    assert a["scheduler"] == b["scheduler"]
    # The resumed run's log continues the first one: epochs 1 and 2, once each.
    assert [int(r["epoch"]) for r in csv.DictReader((split / "metrics.csv").open())] == [1, 2]


@pytest.mark.parametrize("extra,message", [
    (["--data-root", "/nonexistent/data"], "not a directory"),
    (["--resume", "/nonexistent/last.pt"], "--resume checkpoint not found"),
    (["--device", "tpu"], "--device"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--cosine-classifier", "-1"], "--cosine-classifier must be >= 0"),
    (["--pretrained", "imagenet", "--zero-init-residual"], "--zero-init-residual is for a trunk trained from scratch"),
])
def test_user_mistakes_exit_1_with_a_message(repo_root, sysu_root, tmp_path, capsys, extra, message):
    argv = ["train", *_tiny(repo_root, sysu_root, tmp_path / "run"), *extra]
    assert cli(argv) == 1
    assert message in capsys.readouterr().err


def test_unknown_config_key_is_named(tmp_path, sysu_root, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("arch: resnet18\nbatch_size: 8\n")
    assert cli(["train", "--config", str(cfg), "--data-root", str(sysu_root), "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown keys ['batch_size']" in err and "batch_pairs" in err


def test_evaluate_cli_sysu_all_settings(tiny_checkpoint, sysu_root, tmp_path, capsys):
    out_json, plots = tmp_path / "eval.json", tmp_path / "plots"
    rc = cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "sysu", "--data-root", str(sysu_root),
              "--mode", "all,indoor", "--shot", "single,multi", "--trials", "2", "--out-json", str(out_json),
              "--plots", str(plots), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "R1" in table and "mINP" in table and "sysu_indoor_multi" in table and "±" in table
    assert "modality gap" in table and "train IR->RGB" in table and "xm_auc" in table
    gap = json.loads(out_json.read_text())["modality_gap"]
    assert set(gap) == {"test_ir_to_rgb", "test_rgb_to_rgb", "test_ir_to_ir", "train_ir_to_rgb", "alignment"}
    results = json.loads(out_json.read_text())["results"]
    assert set(results) == {"sysu_all_single", "sysu_all_multi", "sysu_indoor_single", "sysu_indoor_multi"}
    for m in results.values():
        assert 0 <= m["r1"] <= m["r10"] <= m["r20"] <= 1 and 0 <= m["mAP"] <= 1 and m["trials"] == 2
    # The fixture has 4 images per camera (< 10), so multi-shot galleries are the whole pool: no spread.
    assert results["sysu_all_multi"]["r1_std"] == 0.0
    assert (plots / "cmc.png").stat().st_size > 0 and (plots / "ranking.png").stat().st_size > 0


def test_evaluate_cli_regdb_and_bad_options(tiny_checkpoint, regdb_root, tmp_path, capsys):
    out_json = tmp_path / "regdb.json"
    rc = cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "regdb", "--data-root", str(regdb_root),
              "--trial", "2", "--out-json", str(out_json), "--no-progress"])
    assert rc == 0
    assert set(json.loads(out_json.read_text())["results"]) == {"regdb_trial2_visible_to_thermal",
                                                                "regdb_trial2_thermal_to_visible"}
    assert cli(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--dataset", "sysu",
                "--data-root", str(regdb_root)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "sysu", "--data-root",
                str(regdb_root), "--mode", "outdoor"]) == 1
    assert "valid values are all, indoor" in capsys.readouterr().err


def test_ablation_writes_table(repo_root, sysu_root, regdb_root, tmp_path):
    out = tmp_path / "ablation"
    # The default variants, less DFE w/o L_c (one more of the same kind of run) to keep the test short.
    assert build_ablation_parser().get_default("variants") == "baseline,no_lc,no_ld,dfe,dfe_bn"
    assert cli(_tiny_ablation(repo_root, sysu_root, out, "--regdb-root", str(regdb_root), "--seeds", "0,1",
                              "--epochs", "1", "--variants", "baseline,no_ld,dfe,dfe_bn")) == 0
    results = json.loads((out / "ablation.json").read_text())["results"]
    assert set(results) == {"sysu", "regdb"}
    table = results["sysu"]["settings"]["sysu_all_single"]
    assert list(table) == ["baseline", "no_ld", "dfe", "dfe_bn"] and table["dfe"]["seeds"] == [0, 1]
    assert set(results["regdb"]["settings"]) == {"visible_to_thermal", "thermal_to_visible"}
    # Paired differences are per seed: variant minus baseline of the same seed.
    d = results["sysu"]["paired"]["sysu_all_single"]["dfe"]["r1"]
    per = [table["dfe"]["r1_per_seed"][i] - table["baseline"]["r1_per_seed"][i] for i in range(2)]
    assert d["per_seed"] == pytest.approx(per) and d["mean"] == pytest.approx(sum(per) / 2)
    gap = results["sysu"]["gap"]["dfe"]
    assert {"test IR->RGB", "train IR->RGB", "xm_auc", "mmd"} <= set(gap) and len(gap["xm_auc"]["per_seed"]) == 2
    md = (out / "ablation.md").read_text()
    assert "| DFE w/o L_d |" in md and "variant − baseline" in md and "modality gap per variant" in md
    assert "## regdb: visible_to_thermal" in md
    # The variants really differ: the baseline never computes the alignment losses.
    rows = list(csv.DictReader((out / "sysu" / "baseline_seed0" / "metrics.csv").open()))
    assert float(rows[0]["dist"]) == 0.0 and float(rows[0]["corr"]) == 0.0
    rows = list(csv.DictReader((out / "sysu" / "dfe_seed0" / "metrics.csv").open()))
    assert float(rows[0]["dist"]) > 0.0 and float(rows[0]["corr"]) > 0.0
    # RegDB runs use RegDB's 1:11:2 weights.
    args = yaml.safe_load((out / "regdb" / "dfe_seed0" / "args.yaml").read_text())
    assert args["dataset"] == "regdb" and args["loss_preset"] == "regdb" and args["data_root"] == str(regdb_root)
    # "dfe" is the paper's L_d, "dfe_bn" the BatchNorm-normalised form; both are also paired against w/o L_d.
    # Every run trains its configured steps, whatever the config's wall-clock budget.
    assert args["ld_form"] == "paper" and args["time_budget_s"] == 0
    assert yaml.safe_load((out / "sysu" / "dfe_bn_seed1" / "args.yaml").read_text())["ld_form"] == "bn"
    vs_no_ld = results["sysu"]["paired_vs"]["no_ld"]["sysu_all_single"]["dfe_bn"]["r1"]["per_seed"]
    assert vs_no_ld == pytest.approx([table["dfe_bn"]["r1_per_seed"][i] - table["no_ld"]["r1_per_seed"][i]
                                      for i in range(2)])
    assert "Paired difference against DFE w/o L_d" in md and "| DFE (BatchNorm-normalised L_d) |" in md
    assert "Runs: 16 runs, finished " in md and "threads per run: one per core" in md and "(16 timed)" in md


def test_ablation_reuses_only_runs_with_the_same_arguments(repo_root, sysu_root, tmp_path, capsys):
    out = tmp_path / "ablation"
    base = _tiny_ablation(repo_root, sysu_root, out, "--seeds", "0", "--variants", "baseline", "--epochs", "1")
    assert cli(base) == 0
    run = out / "sysu" / "baseline_seed0"
    trained = (run / "last.pt").stat().st_mtime_ns
    # Another thread count only changes the speed: the run is reused, and so is one from before an option existed.
    args = yaml.safe_load((run / "args.yaml").read_text())
    del args["cosine_classifier"]
    (run / "args.yaml").write_text(yaml.safe_dump(args))
    assert cli([*base, "--threads", "1"]) == 0
    assert (run / "last.pt").stat().st_mtime_ns == trained
    capsys.readouterr()
    # Another step count is another experiment: refused, with what differs and the way out, and nothing retrained.
    assert cli([*base, "--max-steps-per-epoch", "2"]) == 1
    err = capsys.readouterr().err
    assert "max_steps_per_epoch: 1 -> 2" in err and "--force" in err and "Traceback" not in err
    assert (run / "last.pt").stat().st_mtime_ns == trained
    assert cli([*base, "--max-steps-per-epoch", "2", "--force"]) == 0
    assert yaml.safe_load((run / "args.yaml").read_text())["max_steps_per_epoch"] == 2
    assert [int(r["steps"]) for r in csv.DictReader((run / "metrics.csv").open())] == [2]  # a new log, not appended


def test_ablation_resumes_an_interrupted_run_to_the_same_model(repo_root, sysu_root, tmp_path, monkeypatch):
    import training.train as train_module

    def base(out: Path) -> list[str]:
        return _tiny_ablation(repo_root, sysu_root, out, "--seeds", "0", "--variants", "dfe", "--epochs", "2")

    assert cli(base(tmp_path / "straight")) == 0
    save = train_module.save_checkpoint

    def killed_after_first_epoch(path, payload):
        save(path, payload)
        raise KeyboardInterrupt  # stands for the machine going away after the epoch's checkpoint

    monkeypatch.setattr(train_module, "save_checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli(base(tmp_path / "split"))
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    run = tmp_path / "split" / "sysu" / "dfe_seed0"
    assert not (run / "final_metrics.json").exists()
    assert cli(base(tmp_path / "split")) == 0
    assert yaml.safe_load((run / "args.yaml").read_text())["resume"] == str(run / "last.pt")
    assert [int(r["epoch"]) for r in csv.DictReader((run / "metrics.csv").open())] == [1, 2]
    a = torch.load(tmp_path / "straight" / "sysu" / "dfe_seed0" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (run / "wall_seconds.txt").exists()  # only uninterrupted runs are timed
    report = (tmp_path / "split" / "ablation.md").read_text()
    assert "Runs: 1 runs, finished" in report and "timed" not in report
    assert "(one seed, %)" in report and not re.search(r"\d ± \d", report)  # one seed has no spread to show


def test_ablation_regdb_fallback_weights_and_forbidden_options(repo_root, sysu_root, regdb_root, tmp_path, capsys):
    out = tmp_path / "ablation111"
    base = _tiny_ablation(repo_root, sysu_root, out, "--regdb-root", str(regdb_root), "--seeds", "0", "--epochs", "1")
    assert cli([*base, "--variants", "dfe_unit", "--regdb-preset", "sysu"]) == 0
    args = yaml.safe_load((out / "regdb" / "dfe_unit_seed0" / "args.yaml").read_text())
    assert args["loss_preset"] == "sysu" and args["ld_form"] == "unit" and args["variant"] == "dfe"
    assert cli([*base, "--ld-form", "spread"]) == 1
    assert "--ld-form is set by the ablation itself" in capsys.readouterr().err


def test_gap_options_train_and_record_curves(repo_root, sysu_root, tmp_path, capsys):
    """Every modality-gap training option runs together; gap.csv holds the learning curve and
    final_metrics.json and the printed output carry the gap table."""
    run = tmp_path / "opts"
    rc = train_main(_tiny(repo_root, sysu_root, run, "--channel-aug", "1", "--grey-remap", "1", "--random-erasing",
                          "0.5", "--pairs-per-id", "4", "--triplet", "1", "--align-warmup-epochs", "1",
                          "--aug-warmup-epochs", "1", "--warmup-epochs", "1", "--optimizer", "adam", "--lr", "3e-4",
                          "--head-lr", "3e-3", "--classifier-std", "0.01", "--gap-every", "1"))
    assert rc == 0
    curve = list(csv.DictReader((run / "gap.csv").open()))
    assert [int(r["epoch"]) for r in curve] == [1, 2] and [int(r["steps"]) for r in curve] == [2, 4]
    assert {"test_ir_to_rgb_r1", "train_ir_to_rgb_r1", "xm_auc", "mmd"} <= set(curve[0])
    final = json.loads((run / "final_metrics.json").read_text())
    assert set(final) == {"sysu_all_single", "modality_gap"}
    assert 0 <= final["modality_gap"]["test_ir_to_rgb"]["r1"] <= 1
    assert float(curve[-1]["test_ir_to_rgb_r1"]) == pytest.approx(final["modality_gap"]["test_ir_to_rgb"]["r1"],
                                                                  abs=1e-5)
    out = capsys.readouterr().out
    assert "modality gap" in out and "alignment (test)" in out
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[0]["tri"]) > 0  # the triplet term ran
    # The warm-up scaled each step's rate but the epoch's scheduled rate is what the log (and the resume) keep.
    assert float(rows[0]["lr_backbone"]) == pytest.approx(3e-4) and float(rows[1]["lr_head"]) == pytest.approx(3e-3)
    assert torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4)


def test_bfloat16_autocast_trains(repo_root, sysu_root, tmp_path):
    """One step under bfloat16 autocast: recorded, finite, and not the fp32 step (one step only: where the CPU
    has no native bfloat16 each step is emulated and takes tens of seconds)."""
    losses = {}
    for amp in ("off", "bf16"):
        run = tmp_path / amp
        assert train_main(_tiny(repo_root, sysu_root, run, "--amp", amp, "--epochs", "1", "--max-steps-per-epoch",
                                "1", "--no-eval")) == 0
        assert yaml.safe_load((run / "args.yaml").read_text())["amp"] == amp
        losses[amp] = float(next(csv.DictReader((run / "metrics.csv").open()))["loss"])
    assert math.isfinite(losses["bf16"]) and losses["bf16"] != losses["off"]
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.05)


def test_throughput_and_probe_options_train(repo_root, sysu_root, tmp_path):
    """The images decoded once, one thread, the standardised form of L_d and the per-step probe run together;
    probe.csv holds the curves that show what the alignment losses act on."""
    run = tmp_path / "probe"
    rc = train_main(_tiny(repo_root, sysu_root, run, "--cache-images", "on", "--threads", "1",
                          "--ld-form", "standard", "--probe-every", "1", "--no-eval"))
    assert rc == 0
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["ld_form"] == "standard" and args["cache_images"] == "on"
    rows = list(csv.DictReader((run / "probe.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and [int(r["epoch"]) for r in rows] == [1, 1, 2, 2]
    first = rows[0]
    assert float(first["feat_norm"]) > 0 and float(first["bn_weight"]) == pytest.approx(1.0, abs=0.05)
    # The paper's L_d is the sum of its two terms; at BatchNorm's initial unit scale the other forms are close.
    ld_paper = float(first["ld_mean"]) + float(first["ld_sigma"])
    assert ld_paper > 0 and all(0.5 < float(first[f"ld_{f}"]) / ld_paper < 2 for f in ("standard", "spread"))
    assert 0 <= float(first["batch_auc"]) <= 1
    metrics = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(metrics[0]["dist"]) == pytest.approx(
        sum(float(r["ld_standard"]) for r in rows[:2]) / 2, rel=0.05)  # the loss trained is the standard form


def test_short_run_options_train(repo_root, sysu_root, tmp_path):
    """The options for a run of few steps (linear decay, identity-initialised residual blocks, a cosine
    classifier) train together and are recorded; the residual blocks' zeroed scales are learned."""
    run = tmp_path / "short"
    rc = train_main(_tiny(repo_root, sysu_root, run, "--lr-schedule", "linear", "--zero-init-residual",
                          "--cosine-classifier", "16", "--pretrained", "none"))
    assert rc == 0
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["lr_schedule"] == "linear" and args["zero_init_residual"] is True and args["cosine_classifier"] == 16
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    state = torch.load(run / "last.pt", weights_only=True)["model"]
    assert torch.count_nonzero(state["backbone.layer1.0.bn2.weight"]) > 0


def test_amp_modes(repo_root, sysu_root, tmp_path, capsys):
    from training.train import OPTIMIZERS, parse_args
    from training.train_options import OPTIMIZER_NAMES

    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES  # the parser's choices and the builders agree
    base = _tiny(repo_root, sysu_root, tmp_path / "run")
    assert parse_args(base).amp == "auto" and parse_args([*base, "--no-amp"]).amp == "off"
    assert parse_args([*base, "--amp"]).amp == "auto" and parse_args([*base, "--amp", "bf16"]).amp == "bf16"
    cfg = tmp_path / "old.yaml"
    cfg.write_text((repo_root / "configs" / "tiny.yaml").read_text() + "amp: false\n")  # an older args.yaml
    assert parse_args(["--config", str(cfg), "--data-root", str(sysu_root), "--output-dir", str(tmp_path)]).amp == "off"
    assert cli(["train", *base, "--amp", "fp16", "--device", "cpu"]) == 1
    assert "--amp fp16 needs a CUDA device" in capsys.readouterr().err


def test_sleeping_openmp_threads_change_no_number(repo_root, sysu_root, tmp_path, monkeypatch):
    """``python -m training`` makes idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the environment
    says otherwise; the trained weights are bit for bit those of a run whose threads spin."""
    from training.__main__ import main as training_main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert training_main(["--version"]) == 0 and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert training_main(["--version"]) == 0 and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # explicit wins
    states = []
    for policy in ("ACTIVE", "PASSIVE"):
        out = tmp_path / policy
        env = {**os.environ, "OMP_WAIT_POLICY": policy, "PYTHONPATH": str(repo_root)}
        subprocess.run([sys.executable, "-m", "training", "train", *_tiny(repo_root, sysu_root, out, "--no-eval",
                                                                        "--threads", "2")],
                       env=env, cwd=repo_root, check=True, capture_output=True)
        states.append(torch.load(out / "last.pt", weights_only=True)["model"])
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())


@pytest.mark.parametrize("extra,message", [
    (["--channel-aug", "1.5"], "--channel-aug is a probability"),
    (["--pairs-per-id", "3"], "--pairs-per-id 3 must divide --batch-pairs 8"),
    (["--optimizer", "lbfgs"], "invalid choice"),
    (["--classifier-std", "0"], "--classifier-std must be > 0"),
    (["--ld-form", "cosine"], "invalid choice"),
    (["--time-budget-s", "-5"], "--time-budget-s must be >= 0"),
])
def test_gap_option_mistakes(repo_root, sysu_root, tmp_path, capsys, extra, message):
    argv = ["train", *_tiny(repo_root, sysu_root, tmp_path / "run"), *extra]
    try:
        rc = cli(argv)
    except SystemExit as exc:  # argparse's own choices error
        rc = exc.code
    assert rc in (1, 2)
    assert message in capsys.readouterr().err
