"""Tests of the weight / momentum schedules: values at known steps, purity, building from config."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varjepa.registry import ConfigError
from varjepa.schedules import (
    SCHEDULES,
    Constant,
    Cosine,
    Cyclical,
    Linear,
    LinearWarmup,
    Schedule,
    build_schedule,
    constant,
    cosine,
    cyclical,
    linear,
    linear_warmup,
    warmup_cosine,
)

approx = pytest.approx

# ---------------------------------------------------------------- values at known steps


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 10_000])
def test_constant(step):
    assert constant(step, 100, 0.25) == 0.25
    assert Constant(0.25)(step, 100) == 0.25
    assert isinstance(Constant(2)(step, 100), float)


def test_linear_warmup_fraction():
    s = LinearWarmup(value=2.0, warmup=0.2)  # 20 steps of 100
    assert s(0, 100) == 0.0
    assert s(5, 100) == approx(0.5)
    assert s(10, 100) == approx(1.0)
    assert s(19, 100) == approx(1.9)
    assert s(20, 100) == 2.0
    assert s(99, 100) == 2.0
    assert s(500, 100) == 2.0
    # the fraction scales with the run length
    assert s(100, 1000) == approx(1.0)


def test_linear_warmup_absolute_and_start():
    assert linear_warmup(25, 1000, value=1.0, warmup=50) == approx(0.5)
    assert linear_warmup(50, 1000, value=1.0, warmup=50) == 1.0
    assert linear_warmup(0, 1000, value=1.0, warmup=50, start=0.5) == 0.5
    assert linear_warmup(25, 1000, value=1.0, warmup=50, start=0.5) == approx(0.75)
    # warmup = 1 means one absolute step, not "the whole run"
    assert linear_warmup(0, 1000, value=3.0, warmup=1) == 0.0
    assert linear_warmup(1, 1000, value=3.0, warmup=1) == 3.0
    # no warm-up: the value from step 0
    assert linear_warmup(0, 1000, value=3.0, warmup=0) == 3.0


def test_linear_momentum():
    s = Linear()  # I-JEPA EMA momentum 0.996 -> 1.0
    assert s(0, 1000) == approx(0.996, abs=1e-12)
    assert s(250, 1000) == approx(0.997, abs=1e-12)
    assert s(500, 1000) == approx(0.998, abs=1e-12)
    assert s(1000, 1000) == approx(1.0, abs=1e-12)
    assert s(5000, 1000) == approx(1.0, abs=1e-12)  # clamped after the end
    assert linear(-5, 1000, 0.5, 1.0) == 0.5  # clamped before the start
    assert linear(3, 0, 0.5, 1.0) == 1.0  # degenerate run length


def test_cosine():
    s = Cosine(start=0.0, end=1.0)
    assert s(0, 100) == approx(0.0, abs=1e-12)
    assert s(50, 100) == approx(0.5, abs=1e-12)
    assert s(100, 100) == approx(1.0, abs=1e-12)
    assert s(25, 100) == approx((1 - math.cos(math.pi / 4)) / 2, abs=1e-12)
    assert s(200, 100) == approx(1.0, abs=1e-12)
    assert cosine(50, 100, 0.996, 1.0) == approx(0.998, abs=1e-12)
    assert cosine(7, 0, 0.2, 0.9) == 0.9
    # decreasing direction
    assert cosine(25, 100, 1.0, 0.0) == approx((1 + math.cos(math.pi / 4)) / 2, abs=1e-12)


def test_cyclical_fu_et_al():
    s = Cyclical(value=2.0, cycles=4, ratio=0.4)  # period 25, ramp of 10 steps
    for start in (0, 25, 50, 75):
        assert s(start, 100) == 0.0
        assert s(start + 5, 100) == approx(1.0)
        assert s(start + 10, 100) == approx(2.0)  # reaches value at the ratio point
        for k in range(11, 25):
            assert s(start + k, 100) == 2.0  # and stays there until the cycle ends
    # ratio 1: the ramp takes the whole cycle
    assert cyclical(10, 40, value=1.0, cycles=2, ratio=1.0) == approx(0.5)
    # a period that does not divide the run: cycles start at 0, 10/3, 20/3
    assert cyclical(4, 10, value=1.0, cycles=3, ratio=0.5) == approx((4 - 10 / 3) / (10 / 3) / 0.5)
    assert cyclical(6, 10, value=1.0, cycles=3, ratio=0.5) == 1.0


def test_warmup_cosine():
    n, total = 10, 110
    warm = [warmup_cosine(k, total, warmup=n) for k in range(n)]
    assert warm == approx([(k + 1) / (n + 1) for k in range(n)])
    assert all(a < b for a, b in zip(warm, warm[1:], strict=False))
    assert warmup_cosine(n, total, warmup=n) == approx(1.0)
    assert warmup_cosine(60, total, warmup=n, final=0.1) == approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(total, total, warmup=n, final=0.1) == approx(0.1)
    assert warmup_cosine(10 * total, total, warmup=n, final=0.1) == approx(0.1)
    # warmup as a fraction of the run: 0.1 * 100 = 10 steps
    assert warmup_cosine(10, 100, warmup=0.1) == approx(1.0)
    assert warmup_cosine(55, 100, warmup=0.1) == approx(0.5)
    assert warmup_cosine(4, 100, warmup=0.1) == approx(5 / 11)
    after = [warmup_cosine(k, total, warmup=n) for k in range(n, total + 1)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))


# ---------------------------------------------------------------- purity / resumption

ALL = [
    Constant(0.7),
    LinearWarmup(value=1.5, warmup=0.3, start=0.1),
    LinearWarmup(value=1.0, warmup=17),
    Linear(),
    Cosine(start=1.0, end=0.1),
    Cyclical(value=1.0, cycles=3, ratio=0.5),
]


@pytest.mark.parametrize("sched", ALL, ids=lambda s: type(s).__name__)
def test_pure_and_resumable(sched):
    total = 97
    run = [sched(k, total) for k in range(total + 1)]
    assert run == [sched(k, total) for k in range(total + 1)]  # calling again gives the same
    # a "resumed" run: a fresh object built from the same config, evaluated from step k on
    fresh = type(sched)(**dataclasses.asdict(sched))
    for k in (0, 13, 50, 96):
        assert [fresh(j, total) for j in range(k, total + 1)] == run[k:]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.value = 3.0  # type: ignore[misc]


@settings(max_examples=25, deadline=None)
@given(
    start=st.floats(0, 2),
    end=st.floats(0, 2),
    total=st.integers(1, 10_000),
    step=st.integers(-10, 20_000),
)
def test_linear_and_cosine_stay_between_endpoints(start, end, total, step):
    lo, hi = min(start, end), max(start, end)
    for fn in (linear, cosine):
        v = fn(step, total, start, end)
        assert lo - 1e-12 <= v <= hi + 1e-12
        assert fn(step, total, start, end) == v


@settings(max_examples=25, deadline=None)
@given(
    value=st.floats(0, 5),
    cycles=st.integers(1, 8),
    ratio=st.floats(0.05, 1.0),
    total=st.integers(8, 5000),
    data=st.data(),
)
def test_cyclical_bounds_and_periodicity(value, cycles, ratio, total, data):
    step = data.draw(st.integers(0, total - 1))
    v = cyclical(step, total, value, cycles, ratio)
    assert 0.0 <= v <= value + 1e-12
    if total % cycles == 0:  # integer period: the schedule repeats exactly
        period = total // cycles
        assert cyclical(step % period, total, value, cycles, ratio) == approx(v, abs=1e-9)
        assert cyclical((step // period) * period, total, value, cycles, ratio) == 0.0


@settings(max_examples=25, deadline=None)
@given(value=st.floats(0, 3), warmup=st.integers(1, 100), step=st.integers(0, 200))
def test_linear_warmup_monotone(value, warmup, step):
    a = linear_warmup(step, 1000, value, warmup)
    b = linear_warmup(step + 1, 1000, value, warmup)
    assert 0.0 <= a <= b <= value + 1e-12


# ---------------------------------------------------------------- build_schedule / validation


def test_build_from_number():
    s = build_schedule(0.5, "loss.beta")
    assert s == Constant(0.5)
    assert s(123, 1000) == 0.5
    assert build_schedule(2, "loss.beta") == Constant(2.0)


def test_build_from_name_and_mapping():
    assert build_schedule("cosine", "model.ema") == Cosine()
    assert build_schedule("linear", "model.ema")(0, 10) == approx(0.996)
    s = build_schedule({"name": "linear_warmup", "value": 2.0, "warmup": 0.1}, "loss.beta")
    assert s == LinearWarmup(value=2.0, warmup=0.1)
    assert s(5, 100) == approx(1.0)
    s = build_schedule({"name": "cyclical", "cycles": 2, "ratio": 0.5}, "loss.beta")
    assert s(25, 100) == approx(1.0) and s(50, 100) == 0.0


def test_build_from_schedule_object():
    s = Cyclical(value=0.5)
    assert build_schedule(s, "loss.beta") is s


@pytest.mark.parametrize(
    "spec, field",
    [
        (-1.0, "value"),
        (-2, "value"),
        ({"name": "constant", "value": -0.1}, "value"),
        ({"name": "linear_warmup", "start": -1.0}, "start"),
        ({"name": "linear", "start": 0.9, "end": -1.0}, "end"),
        ({"name": "cosine", "start": -0.5}, "start"),
        ({"name": "cyclical", "value": -1.0}, "value"),
    ],
)
def test_negative_values_rejected(spec, field):
    with pytest.raises(ConfigError) as info:
        build_schedule(spec, "loss.beta")
    msg = str(info.value)
    assert msg.startswith("loss.beta:")
    assert field in msg and "negative" in msg


def test_negative_allowed_when_not_required_nonnegative():
    s = build_schedule({"name": "linear", "start": -1.0, "end": 1.0}, "x", nonnegative=False)
    assert s(50, 100) == approx(0.0)


@pytest.mark.parametrize("spec", [True, False])
def test_bool_rejected(spec):
    with pytest.raises(ConfigError, match="loss.beta"):
        build_schedule(spec, "loss.beta")


def test_build_errors_name_the_option():
    with pytest.raises(ConfigError) as info:
        build_schedule("exponential", "loss.beta")
    msg = str(info.value)
    assert msg.startswith("loss.beta:")
    for name in SCHEDULES.names():
        assert name in msg
    with pytest.raises(ConfigError, match=r"^loss\.beta:.*bogus"):
        build_schedule({"name": "constant", "bogus": 1}, "loss.beta")


def test_build_non_schedule_class_path_rejected():
    with pytest.raises(ConfigError, match=r"^loss\.beta:.*not a schedule"):
        build_schedule({"class_path": "collections.OrderedDict"}, "loss.beta")


@pytest.mark.parametrize("opts", [{"cycles": 0}, {"cycles": -2}, {"ratio": 0.0}, {"ratio": 1.5}])
def test_cyclical_validation(opts):
    with pytest.raises(ConfigError):
        Cyclical(**opts)
    with pytest.raises(ConfigError):
        build_schedule({"name": "cyclical", **opts}, "loss.beta")


@pytest.mark.parametrize(
    "sched, zero",
    [
        (Constant(0.0), True),
        (Constant(1e-9), False),
        (LinearWarmup(value=0.0, start=0.0), True),
        (LinearWarmup(value=0.0, start=1.0), False),
        (LinearWarmup(value=1.0), False),
        (Linear(start=0.0, end=0.0), True),
        (Linear(start=0.0, end=1.0), False),
        (Cosine(start=0.0, end=0.0), True),
        (Cosine(start=1.0, end=0.0), False),
        (Cyclical(value=0.0), True),
        (Cyclical(value=1.0), False),
    ],
)
def test_is_zero(sched, zero):
    assert sched.is_zero() is zero
    values = [sched(k, 50) for k in range(51)]
    # is_zero() agrees with the values the schedule actually takes
    assert all(v == 0 for v in values) is zero


def test_is_zero_from_config_and_base_default():
    assert build_schedule(0, "loss.beta").is_zero()
    assert not build_schedule(0.1, "loss.beta").is_zero()

    class Custom(Schedule):
        def __call__(self, step, total):
            return 0.0

    assert Custom().is_zero() is False  # conservative default
