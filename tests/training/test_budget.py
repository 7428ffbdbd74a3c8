"""The training time budget (training.budget.StepPlan) with a fake clock, alone and inside the trainer."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest
import torch

from training import train as train_mod
from training.budget import StepPlan, decay_factor, warmup_factor


class FakeClock:
    """Seconds that advance only when the simulated machine works."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(plan: StepPlan, clock: FakeClock, step_s: float, overhead_s: float = 0.0,
             slow_first_s: float = 0.0) -> list[int]:
    """Run the plan as the trainer does; returns the steps each epoch took."""
    taken = []
    plan.start()
    for epoch in range(plan.epochs):
        if plan.begin_epoch(epoch) == 0:
            break
        done = 0
        while done < plan.steps():
            clock.now += step_s + (slow_first_s if epoch == 0 and done == 0 else 0.0)
            done += 1
            plan.step_done()
        plan.end_epoch()
        clock.now += overhead_s
        taken.append(done)
    return taken


def test_without_a_budget_every_epoch_runs_in_full() -> None:
    clock = FakeClock()
    assert simulate(StepPlan(4, 50, None, clock=clock), clock, step_s=10.0) == [50, 50, 50, 50]


def test_a_fast_machine_runs_the_configured_steps_despite_a_slow_first_step() -> None:
    # 4 x 50 steps at 0.25 s = 50 s of a 100 s budget; a first step of 5 s (warm-up) must not cut the plan.
    clock = FakeClock()
    plan = StepPlan(4, 50, 100.0, clock=clock)
    assert simulate(plan, clock, step_s=0.25, overhead_s=1.0, slow_first_s=5.0) == [50, 50, 50, 50]
    assert not plan.limited and not plan.exhausted


def test_a_slow_machine_gets_fewer_steps_spread_over_every_epoch_within_the_budget() -> None:
    # 4 x 50 steps at 1 s = 200 s, budget 100 s: every epoch still runs (each schedule stage keeps its share),
    # with about a quarter of what fits, and the loop ends within the budget plus one step.
    clock = FakeClock()
    plan = StepPlan(4, 50, 100.0, clock=clock, check_every=5)
    taken = simulate(plan, clock, step_s=1.0, overhead_s=2.0)
    assert len(taken) == 4 and all(t >= 1 for t in taken)
    assert taken[0] <= 50 and max(taken[1:]) < 30
    assert sum(taken) + 2 * len(taken) <= 100 + 1
    assert sum(taken) >= 85  # the budget is used, not wasted: 100 s minus the reserved overheads
    assert plan.limited


def test_a_machine_that_slows_down_midway_is_cut_and_the_loop_stops_at_the_budget() -> None:
    clock = FakeClock()
    plan = StepPlan(4, 50, 60.0, clock=clock, check_every=5)
    plan.start()
    taken = []
    for epoch in range(4):
        if plan.begin_epoch(epoch) == 0:
            break
        done = 0
        while done < plan.steps():
            clock.now += 0.2 if epoch == 0 else 3.0  # a competitor arrives after the first epoch
            done += 1
            plan.step_done()
        plan.end_epoch()
        taken.append(done)
    assert taken[0] == 50
    assert plan.elapsed() <= 60.0 + 3.0  # at most one step past the budget
    assert sum(taken) < 200


def test_the_budget_counts_the_time_used_before_a_resume() -> None:
    clock = FakeClock()
    plan = StepPlan(4, 50, 100.0, clock=clock, elapsed_s=100.0)
    plan.start()
    assert plan.begin_epoch(2) == 0 and plan.exhausted


def test_warmup_factor_is_the_step_count_fraction_for_full_epochs() -> None:
    # 2 warm-up epochs of 150 steps: step 75 of epoch 1 is 225 / 300 of the way, from 0.01.
    assert warmup_factor(2, 1, 75, 150, start=0.01) == 0.01 + 0.99 * 225 / 300
    assert warmup_factor(2, 0, 0, 150) == 0.0 and warmup_factor(2, 3, 0, 150) == 1.0
    # A budget-shortened epoch of 30 steps advances the warm-up by the same fraction as a full one.
    assert warmup_factor(2, 1, 15, 30) == pytest.approx(warmup_factor(2, 1, 75, 150))


def test_decay_factors_on_the_fraction_of_the_run() -> None:
    # Step 75 of epoch 1 (0-based) of a 4-epoch run of 150-step epochs is 1.5 / 4 = 0.375 of the way.
    assert decay_factor("linear", 4, 1, 75, 150) == pytest.approx(0.625)
    assert decay_factor("cosine", 4, 1, 75, 150) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.375)))
    assert decay_factor("cosine", 4, 2, 0, 150) == pytest.approx(0.5)
    assert decay_factor("step", 4, 3, 149, 150) == 1.0  # its decays are the epoch scheduler's
    # First step at full rate, last step close to 0, and a budget-shortened epoch at the same fraction.
    assert decay_factor("linear", 4, 0, 0, 150) == 1.0
    assert decay_factor("linear", 4, 3, 149, 150) == pytest.approx(1 / 600)
    assert decay_factor("linear", 4, 1, 15, 30) == pytest.approx(decay_factor("linear", 4, 1, 75, 150))
    with pytest.raises(ValueError, match="valid: step, linear, cosine"):
        decay_factor("exp", 4, 0, 0, 150)


def test_lr_scale_is_the_warmup_times_the_decay() -> None:
    args = argparse.Namespace(warmup_epochs=1.0, lr_schedule="linear", epochs=4)
    plan = StepPlan(4, 10)
    plan.begin_epoch(0)
    # Step 5 of the first of 4 epochs: warm-up 0.01 + 0.99 * 0.5, decay 1 - 0.5 / 4.
    assert train_mod._lr_scale(args, 0, plan)(5) == pytest.approx((0.01 + 0.99 * 0.5) * 0.875)
    args.lr_schedule = "step"
    assert train_mod._lr_scale(args, 0, plan)(5) == pytest.approx(0.505)
    args.warmup_epochs = 0.0
    assert train_mod._lr_scale(args, 0, plan) is None  # the paper's schedule: the epoch scheduler alone


@pytest.mark.slow
def test_per_step_schedules_replace_the_epoch_decay(repo_root, sysu_root, tmp_path, monkeypatch):
    seen: list[float] = []
    real_step = torch.optim.SGD.step

    def record(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    run = tmp_path / "linear"
    argv = _tiny(repo_root, sysu_root, run, "--epochs", "2", "--max-steps-per-epoch", "2", "--lr", "0.04",
                 "--warmup-epochs", "0", "--lr-schedule", "linear", "--step-size", "1", "--lr-gamma", "0.1")
    assert train_mod.main(argv) == 0
    # 4 steps falling linearly from 0.04 to 0; the step schedule's x0.1 after epoch 1 is not applied on top.
    assert seen == pytest.approx([0.04, 0.03, 0.02, 0.01])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [float(r["lr_backbone"]) for r in rows] == pytest.approx([0.04, 0.04])


def _tiny(repo_root: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(repo_root / "configs" / "tiny.yaml"), "--data-root", str(data), "--output-dir", str(out),
            "--no-progress", "--no-eval", *extra]


@pytest.mark.slow
def test_trainer_on_a_fast_clock_matches_the_run_without_a_budget(repo_root, sysu_root, tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(train_mod, "_clock", clock)  # time stands still: the machine is infinitely fast
    plain, budgeted = tmp_path / "plain", tmp_path / "budget"
    assert train_mod.main(_tiny(repo_root, sysu_root, plain, "--epochs", "2")) == 0
    assert train_mod.main(_tiny(repo_root, sysu_root, budgeted, "--epochs", "2", "--time-budget-s", "60")) == 0
    a, b = (torch.load(p / "last.pt", weights_only=True) for p in (plain, budgeted))
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert b["steps_done"] == 4 and b["budget_used_s"] == 0.0


@pytest.mark.slow
def test_trainer_on_a_slow_clock_stops_at_the_budget_and_still_evaluates(repo_root, sysu_root, tmp_path,
                                                                         monkeypatch):
    class TickingClock(FakeClock):
        def __call__(self) -> float:  # every reading is 7 s later: each step costs several readings
            self.now += 7.0
            return self.now

    monkeypatch.setattr(train_mod, "_clock", TickingClock())
    run = tmp_path / "slow"
    argv = _tiny(repo_root, sysu_root, run, "--epochs", "3", "--max-steps-per-epoch", "4", "--time-budget-s", "40")
    assert train_mod.main([a for a in argv if a != "--no-eval"] + ["--eval-trials", "1"]) == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert 1 <= len(rows) <= 3 and sum(int(r["steps"]) for r in rows) < 12
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["steps_done"] == sum(int(r["steps"]) for r in rows) and ckpt["budget_used_s"] >= 40
    assert "sysu_all_single" in json.loads((run / "final_metrics.json").read_text())
