"""Warm-up + cosine schedule: exact values at the landmarks."""

import math

import keras
import pytest

from simclr_tf2.optim import WarmUpAndCosineDecay, scaled_learning_rate, warmup_steps_for


@pytest.mark.parametrize(
    "scaling, peak",
    [("linear", 0.3 * 4096 / 256), ("sqrt", 0.3 * math.sqrt(4096))],
)
def test_landmarks(scaling, peak):
    schedule = WarmUpAndCosineDecay(0.3, 4096, total_steps=1000, warmup_steps=100, scaling=scaling)
    assert schedule.peak_learning_rate == pytest.approx(peak)
    expected = {
        0: 0.0,
        50: peak * 0.5,  # mid warm-up
        100: peak,  # end of warm-up: cosine starts at its peak
        550: peak * 0.5,  # mid cosine: cos(pi / 2) = 0
        325: peak * 0.5 * (1 + math.cos(math.pi * 0.25)),
        1000: 0.0,  # the last step
        1200: 0.0,  # past the end it stays at 0
    }
    for step, value in expected.items():
        # float32 evaluation.
        assert float(schedule(step)) == pytest.approx(value, rel=1e-6, abs=1e-6), step


def test_no_warmup_starts_at_peak():
    schedule = WarmUpAndCosineDecay(0.1, 256, total_steps=10, warmup_steps=0)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-7)


def test_helpers():
    assert scaled_learning_rate(0.075, 1024, "sqrt") == pytest.approx(0.075 * 32)
    assert scaled_learning_rate(0.3, 512, "linear") == pytest.approx(0.6)
    with pytest.raises(ValueError, match="learning_rate_scaling='cubic'"):
        scaled_learning_rate(0.3, 512, "cubic")
    # The paper's 10 warm-up epochs of ImageNet at batch 4096.
    assert warmup_steps_for(10, 1281167, 4096) == 3128


def test_serializes():
    schedule = WarmUpAndCosineDecay(0.3, 512, total_steps=100, warmup_steps=10, scaling="sqrt")
    restored = WarmUpAndCosineDecay.from_config(schedule.get_config())
    for step in (0, 5, 10, 60, 100):
        assert float(restored(step)) == pytest.approx(float(schedule(step)))
    via_keras = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(via_keras, WarmUpAndCosineDecay)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(total_steps=0), "total_steps=0"),
        (dict(total_steps=10, warmup_steps=11), "warmup_steps=11"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmUpAndCosineDecay(0.1, 256, **kwargs)
