"""Weight and momentum schedules as pure functions of ``(step, total_steps)``.

Nothing here holds state, so a resumed run reproduces every value exactly from
``trainer.global_step`` (lightly's approach). Each schedule is also a small frozen
dataclass so that it can be named in YAML:

    beta: {name: linear_warmup, value: 1.0, warmup: 0.2}

``warmup`` / ``period`` values below 1 are fractions of the total steps; values of at
least 1 are absolute step counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .registry import ConfigError, Registry

SCHEDULES: Registry[Schedule] = Registry("schedule", "schedule")


def _steps(x: float, total: int) -> float:
    return x * total if x < 1 else x


def constant(step: int, total: int, value: float) -> float:
    """``value`` at every step."""
    return float(value)


def linear_warmup(step: int, total: int, value: float, warmup: float, start: float = 0.0) -> float:
    """KL annealing: ``start`` → ``value`` linearly over ``warmup`` steps, then ``value``."""
    n = _steps(warmup, total)
    if n <= 0 or step >= n:
        return float(value)
    return float(start + (value - start) * step / n)


def linear(step: int, total: int, start: float, end: float) -> float:
    """``start`` → ``end`` linearly over the whole run (I-JEPA's EMA momentum 0.996 → 1.0)."""
    if total <= 0:
        return float(end)
    t = min(max(step / total, 0.0), 1.0)
    return float(start + (end - start) * t)


def cosine(step: int, total: int, start: float, end: float) -> float:
    """``start`` → ``end`` along a half cosine over the whole run."""
    if total <= 0:
        return float(end)
    t = min(max(step / total, 0.0), 1.0)
    return float(end - (end - start) * (1 + math.cos(math.pi * t)) / 2)


def cyclical(step: int, total: int, value: float, cycles: int = 4, ratio: float = 0.5) -> float:
    """Cyclical annealing (Fu et al. 2019): ``cycles`` repeats of 0 → ``value`` over the first
    ``ratio`` of each cycle, then ``value`` for the rest of it."""
    if total <= 0:
        return float(value)
    period = total / cycles
    tau = (step % period) / period
    return float(value * min(tau / ratio, 1.0)) if ratio > 0 else float(value)


def warmup_cosine(step: int, total: int, warmup: float, final: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up ``(step + 1) / (n + 1)`` over the first ``n`` steps
    (never exactly 0), then cosine from 1 to ``final`` at the last step."""
    n = _steps(warmup, total)
    if step < n:
        return float(step + 1) / float(n + 1)
    rest = max(total - n, 1)
    t = min((step - n) / rest, 1.0)
    return float(final + (1 - final) * (1 + math.cos(math.pi * t)) / 2)


class Schedule:
    """Base class: ``schedule(step, total) -> float``. Subclasses are frozen dataclasses."""

    def __call__(self, step: int, total: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def is_zero(self) -> bool:
        """True when the schedule is 0 at every step (e.g. β = 0)."""
        return False

    def check_nonnegative(self, option: str) -> None:
        """Raise a ConfigError if any level of the schedule is negative."""
        for k, v in vars(self).items():
            if k in ("value", "start", "end") and v < 0:
                raise ConfigError(f"{option}: {k} = {v} is negative; weights must be >= 0")


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant(Schedule):
    """A constant weight."""

    value: float = 1.0

    def __call__(self, step: int, total: int) -> float:
        return constant(step, total, self.value)

    def is_zero(self) -> bool:
        return self.value == 0


@SCHEDULES.register("linear_warmup")
@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """KL annealing from ``start`` to ``value`` over ``warmup`` steps (fraction if < 1)."""

    value: float = 1.0
    warmup: float = 0.2
    start: float = 0.0

    def __call__(self, step: int, total: int) -> float:
        return linear_warmup(step, total, self.value, self.warmup, self.start)

    def is_zero(self) -> bool:
        return self.value == 0 and self.start == 0


@SCHEDULES.register("linear")
@dataclass(frozen=True)
class Linear(Schedule):
    """Linear from ``start`` to ``end`` over the run."""

    start: float = 0.996
    end: float = 1.0

    def __call__(self, step: int, total: int) -> float:
        return linear(step, total, self.start, self.end)

    def is_zero(self) -> bool:
        return self.start == 0 and self.end == 0


@SCHEDULES.register("cosine")
@dataclass(frozen=True)
class Cosine(Schedule):
    """Half cosine from ``start`` to ``end`` over the run."""

    start: float = 0.996
    end: float = 1.0

    def __call__(self, step: int, total: int) -> float:
        return cosine(step, total, self.start, self.end)

    def is_zero(self) -> bool:
        return self.start == 0 and self.end == 0


@SCHEDULES.register("cyclical")
@dataclass(frozen=True)
class Cyclical(Schedule):
    """Cyclical KL annealing (Fu et al. 2019)."""

    value: float = 1.0
    cycles: int = 4
    ratio: float = 0.5

    def __post_init__(self):
        if self.cycles < 1:
            raise ConfigError(f"cyclical schedule: cycles = {self.cycles}; must be >= 1")
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"cyclical schedule: ratio = {self.ratio}; must be in (0, 1]")

    def __call__(self, step: int, total: int) -> float:
        return cyclical(step, total, self.value, self.cycles, self.ratio)

    def is_zero(self) -> bool:
        return self.value == 0


def build_schedule(spec: float | str | dict | Schedule, option: str, nonnegative: bool = True) -> Schedule:
    """A Schedule from a number (constant), a name, a ``{name: ..., **opts}`` mapping or a Schedule."""
    if isinstance(spec, bool):
        raise ConfigError(f"{option}: expected a number or a schedule, got {spec!r}")
    if isinstance(spec, int | float):
        sched: Schedule = Constant(float(spec))
    else:
        try:
            sched = SCHEDULES.build(spec, option)
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(option) else f"{option}: {e}") from None
        if not isinstance(sched, Schedule):
            raise ConfigError(f"{option}: {spec!r} is not a schedule")
    if nonnegative:
        sched.check_nonnegative(option)
    return sched
