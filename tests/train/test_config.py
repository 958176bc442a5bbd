"""Training defaults that depend on the data: epochs, batch size and learning rate."""

import os

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


def test_auto_epochs_see_about_20k_images_and_take_at_least_600_steps():
    from medcls.train.config import DEFAULT_MIN_STEPS

    assert DEFAULT_MIN_STEPS == 600
    cfg = TrainConfig(data="x")
    assert cfg.epochs_for(4708) == 17  # PneumoniaMNIST: 37 steps an epoch (4 epochs by items alone: 148 steps)
    assert cfg.epochs_for(9504) == 8  # AdrenalMNIST3D's 2.5-D stacks: 75 steps an epoch
    assert cfg.epochs_for(1188, 64) == 32  # its whole volumes: 19 steps an epoch (17 epochs by items)
    assert cfg.epochs_for(546) == 37  # BreastMNIST: the items rule already gives 629 steps
    assert cfg.epochs_for(250_000) == 4
    assert cfg.epochs_for(10) == 100
    assert TrainConfig(data="x", epochs=3).epochs_for(546) == 3


def test_bad_values_are_refused():
    with pytest.raises(MedclsError, match="batch-size"):
        TrainConfig(data="x", batch_size=0)
    with pytest.raises(MedclsError, match="optimizer"):
        TrainConfig(data="x", optimizer="adam")
    with pytest.raises(MedclsError, match="checkpoint-every"):
        TrainConfig(data="x", checkpoint_every=-1)
    for kw, flag in [(dict(lr=-1.0), "--lr"), (dict(lr=0.0), "--lr"), (dict(weight_decay=-1.0), "--weight-decay"),
                     (dict(label_smoothing=2.0), "--label-smoothing"), (dict(label_smoothing=1.0), "--label-smoothing"),
                     (dict(channels=0), "--channels"), (dict(size=0), "--size"), (dict(clip_grad=0.0), "--clip-grad"),
                     (dict(max_train_samples=0), "--max-train-samples"), (dict(warmup_epochs=-1.0), "warm-up")]:
        with pytest.raises(MedclsError, match=flag):
            TrainConfig(data="x", **kw)
    TrainConfig(data="x", lr=1e-4, weight_decay=0.0, label_smoothing=0.1, channels=3, clip_grad=1.0)  # all fine


def test_refit_is_asked_for_not_default():
    """On a fold held out of BreastMNIST's training split it helped AlexNet and hurt VGG-11-BN (README)."""
    assert TrainConfig(data="x").refit is False and TrainConfig(data="x", refit=True).refit
    assert TrainConfig.from_dict({"data": "x", "refit": None}).refit is False  # "auto" in older runs
    # labels held back on purpose stay held back
    with pytest.raises(MedclsError, match="--refit"):
        TrainConfig(data="x", refit=True, semi="pseudo", labelled_fraction=0.1)
    with pytest.raises(MedclsError, match="--refit"):
        TrainConfig(data="x", refit=True, labelled_fraction=0.1)


def test_ema_time_constant_is_about_two_epochs():
    assert TrainConfig.ema_decay(18) == pytest.approx(1 - 1 / 36)  # BreastMNIST at batch 32
    assert TrainConfig.ema_decay(1) == 0.9  # bounded for tiny runs
    assert TrainConfig.ema_decay(10**6) == 0.9999
    assert TrainConfig(data="x").ema is True


def test_auto_patience_is_half_the_epochs_but_at_least_8():
    assert TrainConfig(data="x").patience_for(37) == 18  # BreastMNIST: no stop before the LR has decayed
    assert TrainConfig(data="x").patience_for(4) == 8
    assert TrainConfig(data="x", patience=3).patience_for(37) == 3
    with pytest.raises(MedclsError):
        TrainConfig(data="x", patience=0)


def test_weight_ema_warms_up_then_settles_to_its_decay():
    import torch
    from torch.optim.swa_utils import AveragedModel

    from medcls.train.optim import ema_multi_avg_fn

    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.99), use_buffers=True)
    ema.update_parameters(model)  # the first call copies
    with torch.no_grad():
        model[0].bias.fill_(1.0)
        model[1].num_batches_tracked.fill_(7)
    old = ema.module[0].bias.clone()
    ema.update_parameters(model)  # t = 1: decay (1 + 1) / (10 + 1), not 0.99
    d = 2 / 11
    assert torch.allclose(ema.module[0].bias, d * old + (1 - d) * 1.0)
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers follow the model
    for _ in range(2000):
        ema.update_parameters(model)
    prev = ema.module[0].bias.clone()
    with torch.no_grad():
        model[0].bias.fill_(2.0)
    ema.update_parameters(model)  # late: the configured decay
    assert torch.allclose(ema.module[0].bias, 0.99 * prev + 0.01 * 2.0)


def test_flip_tta_is_asked_for_not_default():
    assert TrainConfig(data="x").tta == "none"  # measured: no gain on BreastMNIST (see README)
    with pytest.raises(MedclsError, match="tta"):
        TrainConfig(data="x", tta="rot90")


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimiser_is_fused_and_steps_as_the_per_parameter_one(name, monkeypatch):
    import torch

    from medcls.train.optim import make_optimizer

    torch.manual_seed(0)
    nets = [torch.nn.Linear(5, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    w0 = nets[0].weight.detach().clone()
    fused = make_optimizer(name, [{"params": nets[0].parameters(), "weight_decay": 0.01}], 0.1)
    assert fused.defaults["fused"] is True
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    kw = {} if name == "adamw" else dict(momentum=0.9, nesterov=True)
    plain = cls([{"params": nets[1].parameters(), "weight_decay": 0.01}], lr=0.1, **kw)
    x = torch.randn(8, 5)
    for _ in range(5):
        for net, opt in zip(nets, (fused, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(nets[0].weight, w0)  # it did step

    import torch.utils._foreach_utils as fu

    monkeypatch.setattr(fu, "_get_fused_kernels_supported_devices", lambda: ["cuda"])  # no fused kernels here
    fallback = make_optimizer(name, [{"params": nets[0].parameters()}], 0.1)
    assert not fallback.defaults.get("fused")
    net = nets[0]
    net(x).square().mean().backward()
    fallback.step()  # and it steps


def test_flips_follow_anatomy_with_measured_dataset_exceptions():
    from medcls.train.augment import default_hflip

    assert not default_hflip("mychest", "DX") and not default_hflip("myct", "CT")  # mirrored anatomy
    assert default_hflip("mybreastus", "US") and default_hflip("slides", "SM")  # no handedness
    assert not default_hflip("breastmnist", "US")  # BUSI frames keep one layout (data/registry.py)
    assert not default_hflip("pneumoniamnist", "CR")


def test_device_strings_are_checked_against_this_machine(monkeypatch):
    import torch

    from medcls.infer import select_device

    assert select_device("cpu") == torch.device("cpu")
    for bad in ("foo", "", "meta", "cuda:x"):
        with pytest.raises(MedclsError, match="--device must be auto, cpu, cuda, cuda:N or mps"):
            select_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a one-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(MedclsError, match="cuda:1 asked for, but this machine has 1 CUDA device"):
        select_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MedclsError, match="no CUDA device"):
        select_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(MedclsError, match="MPS is not available"):
        select_device("mps")


@pytest.mark.parametrize("floor", [0, 300, 600, 5000])
def test_auto_epochs_take_at_least_min_steps_optimiser_steps(floor):
    """The floor in steps binds between the items rule and the 100-epoch cap, and is the least epochs that reach it."""
    cfg = TrainConfig(data="x", min_steps=floor)
    for n in (30, 546, 1188, 3766, 4708, 9504, 20_000, 250_000):
        bs = cfg.batch_for(n)
        spe = -(-n // bs)  # steps per epoch (the last batch is partial)
        epochs = cfg.epochs_for(n, bs)
        by_items = max(4, round(20_000 / n))
        assert 4 <= epochs <= 100
        assert epochs >= min(100, by_items)  # never fewer than the items rule gives
        if epochs < 100:
            assert epochs * spe >= floor  # the floor is reached ...
        if epochs > by_items:
            assert (epochs - 1) * spe < floor  # ... by the least number of epochs that reaches it


def test_min_steps_examples_and_precedence():
    assert TrainConfig(data="x", min_steps=600).epochs_for(4708, 128) == 17  # 37 steps an epoch: 629 >= 600 > 592
    assert TrainConfig(data="x", min_steps=600).epochs_for(546, 32) == 37  # BreastMNIST: the items rule binds
    assert TrainConfig(data="x", min_steps=600).epochs_for(250_000, 128) == 4  # a large set: 4 epochs of many steps
    assert TrainConfig(data="x", min_steps=0).epochs_for(4708) == 4  # no floor: the items rule alone
    assert TrainConfig(data="x", min_steps=10**6).epochs_for(4708) == 100  # never past 100 epochs
    assert TrainConfig(data="x", min_steps=600, epochs=3).epochs_for(4708) == 3  # --epochs wins
    # the batch given is the one the floor counts in: a smaller batch takes more steps an epoch
    assert TrainConfig(data="x", min_steps=600).epochs_for(4708, 32) < TrainConfig(data="x", min_steps=600).epochs_for(4708, 128)
    with pytest.raises(MedclsError, match="--min-steps"):
        TrainConfig(data="x", min_steps=-1)


def test_threads_follow_omp_num_threads_where_the_user_set_it(monkeypatch):
    import torch

    from medcls.infer import set_threads

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        set_threads()
        assert torch.get_num_threads() == 3, "the user's number, as PyTorch reads it"
        monkeypatch.delenv("OMP_NUM_THREADS")
        set_threads()
        assert torch.get_num_threads() == cores
        # torchrun sets OMP_NUM_THREADS=1 in every process by itself: its processes share the cores instead
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        set_threads()
        assert torch.get_num_threads() == max(1, cores // 2)
    finally:
        torch.set_num_threads(before)
