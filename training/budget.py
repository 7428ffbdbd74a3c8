"""A wall-clock budget for the training loop: a slow machine trains fewer steps, not for longer.

The schedule (learning-rate decays at epoch boundaries, the learning-rate / alignment / augmentation warm-ups)
is defined on epochs, and an epoch is a fixed fraction of the run. :class:`StepPlan` decides how many steps each
epoch takes. Without a budget, or on a machine fast enough to run every step inside it, that is the configured
number and the run is exactly the step-budget run (deterministic for a fixed seed and thread count). When the
measured step rate says the remaining steps will not fit in the remaining time, the plan gives every remaining
epoch the same smaller number of steps (so each schedule stage keeps its share of the time) and re-checks as it
goes; when the budget is spent, the current epoch ends and no further epoch starts.

The budget covers the loop: steps, the per-epoch checkpoint and any learning-curve evaluation. Their per-epoch
overhead is measured and reserved. The final test evaluation runs after it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class StepPlan:
    """Steps per epoch under an optional time budget.

    Args:
        epochs: Epochs of the run.
        steps_per_epoch: Configured steps of a full epoch.
        time_budget_s: Seconds the loop may take (None or <= 0: no budget, every epoch runs in full).
        clock: Monotonic seconds (injectable for tests).
        elapsed_s: Budget already used by the epochs a resumed run continues after.
        check_every: Steps between re-plans inside an epoch.
        window: Recent steps whose mean duration is the rate estimate (a run's first steps are slower than the
            rest: allocator and kernel warm-up, so the estimate never averages over the whole run).
    """

    def __init__(self, epochs: int, steps_per_epoch: int, time_budget_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, elapsed_s: float = 0.0, check_every: int = 10,
                 window: int = 20) -> None:
        if epochs < 1 or steps_per_epoch < 1:
            raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
        self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)
        self.budget = float(time_budget_s) if time_budget_s and time_budget_s > 0 else None
        self.clock, self.check_every = clock, max(1, int(check_every))
        self._used_before, self._t0 = float(elapsed_s), None
        self._durations: deque[float] = deque(maxlen=max(2, int(window)))
        self._last: float | None = None  # end of the previous step (or start of the epoch)
        self._epoch_end: float | None = None
        self._overhead = 0.0  # seconds between one epoch's last step and the next epoch's first
        self._epoch, self._done = -1, 0
        self._current = self._future = self.steps_per_epoch
        self.exhausted = False

    # ---------------------------------------------------------------------------------------- timing

    def start(self) -> None:
        """Start the clock (just before the first epoch)."""
        self._t0 = self.clock()

    def elapsed(self) -> float:
        """Budget seconds used so far, including those before a resume."""
        return self._used_before + (0.0 if self._t0 is None else self.clock() - self._t0)

    def steps(self) -> int:
        """Steps the current epoch is planned to take (it may change as the epoch runs)."""
        return self._current

    @property
    def limited(self) -> bool:
        """Whether the budget has cut the plan below the configured steps."""
        return self._current < self.steps_per_epoch or self._future < self.steps_per_epoch

    # ---------------------------------------------------------------------------------------- events

    def begin_epoch(self, epoch: int) -> int:
        """Plan ``epoch`` (0-based) and return its steps; 0 when the budget is spent (stop training)."""
        now = self.clock()
        if self._epoch_end is not None:
            self._overhead = now - self._epoch_end
        self._epoch, self._done, self._last = int(epoch), 0, now
        if self.budget is not None and self.elapsed() >= self.budget:
            self.exhausted = True
            self._current = 0
            return 0
        self._current = self._future
        self._replan()
        return self._current

    def step_done(self) -> None:
        """Record one finished step of the current epoch; re-plan every ``check_every`` steps."""
        now = self.clock()
        if self._last is not None:
            self._durations.append(now - self._last)
        self._last, self._done = now, self._done + 1
        if self.budget is None:
            return
        if self.elapsed() >= self.budget:
            if not self.exhausted:
                log.info("time budget of %.0f s spent after %d steps of epoch %d", self.budget, self._done,
                         self._epoch + 1)
            self.exhausted, self._current = True, self._done
        elif self._done % self.check_every == 0:
            self._replan()

    def end_epoch(self) -> None:
        """Mark the end of the current epoch's steps (what follows until the next epoch is overhead)."""
        self._epoch_end = self.clock()

    # -------------------------------------------------------------------------------------- planning

    def _replan(self) -> None:
        if self.budget is None or len(self._durations) < min(5, self._durations.maxlen):
            return
        per_step = sum(self._durations) / len(self._durations)
        left = self.budget - self.elapsed()
        later = self.epochs - self._epoch - 1
        # Every epoch, this one included, ends with its overhead (checkpoint, learning-curve evaluation).
        reserve = (later + 1) * self._overhead
        needed = (self._current - self._done) * per_step + later * self.steps_per_epoch * per_step + reserve
        if needed <= left and self._future == self.steps_per_epoch and self._current >= self.steps_per_epoch:
            return  # fast enough: the configured plan stands
        # Steps that fit in what is left, shared equally by this epoch (counting its done steps) and the later ones.
        available = max(0.0, left - reserve) / max(per_step, 1e-9)
        share = math.floor((available + self._done) / (later + 1))
        new_current = min(self.steps_per_epoch, max(self._done, share, 1 if self._done == 0 else 0))
        new_future = min(self.steps_per_epoch, max(1, share))
        if (new_current, new_future) != (self._current, self._future):
            log.info("time budget: %.0f s left at %.2f s/step -> %d steps in epoch %d, %d in each of the %d later",
                     left, per_step, new_current, self._epoch + 1, new_future, later)
        self._current, self._future = new_current, new_future


#: Learning-rate schedules: ``step`` (decays by ``--lr-gamma`` every ``--step-size`` epochs, the paper's) or a
#: decay on every step over the fraction of the run done: ``linear`` to 0 (the schedule Li et al., "Budgeted
#: Training", ICLR 2020, found best when the number of steps is limited) or ``cosine`` to 0.
LR_SCHEDULES: tuple[str, ...] = ("step", "linear", "cosine")


def decay_factor(schedule: str, epochs: int, epoch: int, step: int, steps: int) -> float:
    """The per-step learning-rate factor of ``schedule`` at ``step`` of ``epoch`` (of ``steps`` steps).

    ``step`` is 1 throughout (its decays happen at epoch boundaries, outside); ``linear`` and ``cosine`` fall from 1
    at the first step to 0 after the last, measured in epochs like the warm-ups, so a budget-shortened run still
    ends its decay at its last step.
    """
    if schedule == "step":
        return 1.0
    done = min(1.0, (epoch + step / max(steps, 1)) / max(epochs, 1))
    if schedule == "linear":
        return 1.0 - done
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: {', '.join(LR_SCHEDULES)}")


def warmup_factor(epochs: float, epoch: int, step: int, steps: int, start: float = 0.0) -> float:
    """A linear warm-up from ``start`` to 1 over ``epochs`` epochs, at ``step`` of ``epoch`` (of ``steps`` steps).

    Measured in epochs, i.e. in fractions of the run: with every epoch in full this is
    ``start + (1 - start) * (epoch * steps + step) / (epochs * steps)``, the step count of a step-budget run.
    """
    return min(1.0, start + (1.0 - start) * (epoch * steps + step) / (epochs * steps))
