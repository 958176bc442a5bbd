"""Training defaults that depend on the data: epochs, batch size and learning rate."""

import pytest

from medcls.errors import MedclsError
from medcls.train.config import TrainConfig


def test_auto_batch_keeps_at_least_16_steps_per_epoch_on_small_sets():
    cfg = TrainConfig(data="x")
    assert cfg.batch_for(4708) == 128  # PneumoniaMNIST train
    assert cfg.batch_for(546) == 32  # BreastMNIST train: 17 steps, not 5
    assert cfg.batch_for(1500) == 64
    assert cfg.batch_for(100) == 32  # never below 32
    for n in (100, 546, 1500, 4708, 50_000):
        bs = cfg.batch_for(n)
        assert n / bs >= 16 or bs == 32


def test_learning_rate_scales_with_the_batch_unless_given():
    assert TrainConfig(data="x").learning_rate(32) == pytest.approx(2.5e-4)
    assert TrainConfig(data="x", optimizer="sgd").learning_rate(128) == pytest.approx(0.01)
    assert TrainConfig(data="x", lr=0.05).learning_rate(32) == 0.05
    assert TrainConfig(data="x", batch_size=16).batch_for(10_000) == 16


def test_auto_epochs_see_about_20k_images():
    cfg = TrainConfig(data="x")
    assert cfg.epochs_for(4708) == 4
    assert cfg.epochs_for(546) == 37
    assert cfg.epochs_for(10) == 100
    assert TrainConfig(data="x", epochs=3).epochs_for(546) == 3


def test_bad_values_are_refused():
    with pytest.raises(MedclsError, match="batch-size"):
        TrainConfig(data="x", batch_size=0)
    with pytest.raises(MedclsError, match="optimizer"):
        TrainConfig(data="x", optimizer="adam")


def test_ema_time_constant_is_about_two_epochs():
    assert TrainConfig.ema_decay(18) == pytest.approx(1 - 1 / 36)  # BreastMNIST at batch 32
    assert TrainConfig.ema_decay(1) == 0.9  # bounded for tiny runs
    assert TrainConfig.ema_decay(10**6) == 0.9999
    assert TrainConfig(data="x").ema is True
