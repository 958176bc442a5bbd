"""Volume networks: the ACS layer against its definition, every family's ACS and 3-D forms, 3-D augmentation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medcls.errors import MedclsError, ModelError
from medcls.models import base_name, count_params, create_model, list_models, model_loss, model_stats, volume_name
from medcls.models.volume import ACSConv, acs_split
from medcls.train.augment import Augment, Share
from medcls.train.checkpoint import load_weights, save_weights

FAMILIES = ("vgg11_bn", "alexnet", "googlenet", "inception_v2")
VOLUME_MODELS = [n for n in list_models() if base_name(n)[1] is not None]


def _acs_by_definition(x, weight, bias, stride, padding, dilation, groups):
    """Yang et al.'s definition: the output channels split in three; each part's 2-D kernel is a 3-D kernel
    that is zero outside its central axial / coronal / sagittal plane, applied with the layer's stride and
    padding on every axis; the three outputs concatenated."""
    out_ch, cin, k, _ = weight.shape
    per = out_ch // groups
    parts = []
    for g in range(groups):
        wg, xg = weight[g * per:(g + 1) * per], x[:, g * cin:(g + 1) * cin]
        start, outs = 0, []
        for axis, n in enumerate(acs_split(per)):
            if n == 0:
                continue
            full = torch.zeros(n, cin, k, k, k, dtype=weight.dtype)
            index = [slice(None), slice(None), slice(None), slice(None), slice(None)]
            index[2 + axis] = k // 2
            full[tuple(index)] = wg[start:start + n]
            start += n
            outs.append(F.conv3d(xg, full, None, stride, padding, dilation))
        parts.append(torch.cat(outs, 1))
    out = torch.cat(parts, 1)
    return out if bias is None else out + bias.view(1, -1, 1, 1, 1)


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation,groups", [
    (3, 8, 3, 1, 1, 1, 1),     # VGG's 3x3, same padding
    (1, 7, 11, 4, 2, 1, 1),    # AlexNet's first layer: padding below k // 2, the flat axis is cropped
    (4, 10, 5, 1, 2, 1, 2),    # grouped (AlexNet's towers), a split that does not divide by three
    (2, 6, 3, 2, 0, 1, 1),     # stride 2, no padding
    (2, 5, 3, 1, 2, 2, 1),     # dilated
    (3, 4, 1, 1, 0, 1, 1),     # 1 x 1: the three views are one kernel
])
def test_acs_conv_equals_its_definition(cin, cout, k, stride, padding, dilation, groups):
    torch.manual_seed(0)
    conv = ACSConv(cin, cout, k, stride, padding, dilation, groups)
    x = torch.randn(2, cin, 13, 15, 17)  # unequal sides: an axis mix-up shows
    got = conv(x)
    want = _acs_by_definition(x, conv.weight, conv.bias, stride, padding, dilation, groups)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_acs_split_and_refusals():
    assert acs_split(64) == (22, 21, 21) and acs_split(5) == (2, 2, 1) and sum(acs_split(96)) == 96
    with pytest.raises(ModelError, match="odd kernel"):
        ACSConv(1, 3, 4)
    with pytest.raises(ModelError, match="volumes"):
        ACSConv(1, 3, 3, padding=1)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ModelError, match="one device"):
        create_model("alexnet_acs", devices=["cpu", "cpu"])


def test_every_2d_model_has_both_volume_forms_with_the_2d_kernels():
    """ACS keeps every 2-D kernel's parameters; 3-D kernels hold k times as many (k x k x k for k x k)."""
    two_d = [n for n in list_models() if base_name(n)[1] is None]
    assert sorted(VOLUME_MODELS) == sorted(volume_name(n, m) for n in two_d for m in ("acs", "3d"))
    for name in FAMILIES:
        with torch.device("meta"):
            flat = create_model(name, num_classes=2, in_channels=1, input_size=28)
            acs = create_model(f"{name}_acs", num_classes=2, in_channels=1, input_size=28)
            full = create_model(f"{name}_3d", num_classes=2, in_channels=1, input_size=28)
        k2 = [m.weight for m in flat.modules() if isinstance(m, nn.Conv2d)]
        ka = [m.weight for m in acs.modules() if isinstance(m, ACSConv)]
        k3 = [m.weight for m in full.modules() if isinstance(m, nn.Conv3d)]
        assert [w.shape for w in ka] == [w.shape for w in k2] and len(k3) == len(k2)
        assert all(w3.shape == (*w2.shape, w2.shape[-1]) for w2, w3 in zip(k2, k3))
        assert not any(type(m) is nn.Conv2d or isinstance(m, nn.BatchNorm2d) for m in full.modules())


@pytest.mark.parametrize("size", [28, 64])
def test_volume_stats_at_both_sizes(size):
    for name in VOLUME_MODELS:
        s = model_stats(name, 2, 1, size)
        assert s["input"] == [1, size, size, size] and s["params"] > 0 and s["flops"] > 0, name
    # a 3-D kernel does k times the work of an ACS one at the same place
    assert model_stats("vgg11_bn_3d", 2, 1, size)["flops"] > 2 * model_stats("vgg11_bn_acs", 2, 1, size)["flops"]


@pytest.mark.parametrize("mode", ["acs", "3d"])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_round_trips_at_28_and_64(family, mode, tmp_path):
    torch.manual_seed(0)
    for size in (28, 64):
        model = create_model(f"{family}_{mode}", num_classes=3, in_channels=1, input_size=size)
        assert model.spatial_dims == 3 and model.volume_mode == mode
        n = 1
        x = torch.rand(n, 1, size, size, size)
        model.train()
        loss = model_loss(model(x), torch.zeros(n, dtype=torch.long), nn.CrossEntropyLoss())
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        model.eval()
        with torch.no_grad():
            want = model(x)
        assert want.shape == (n, 3)
        if size == 64:
            continue
        path = tmp_path / f"{family}_{mode}_{size}.safetensors"
        save_weights(model, path)
        again = create_model(f"{family}_{mode}", num_classes=3, in_channels=1, input_size=size)
        load_weights(again, path)
        with torch.no_grad():
            torch.testing.assert_close(again.eval()(x), want, atol=0, rtol=0)
        assert count_params(again) == count_params(model) == model_stats(f"{family}_{mode}", 3, 1, size)["params_train"]


def test_a_2d_image_is_refused_by_a_volume_model():
    model = create_model("vgg11_bn_3d", num_classes=2, in_channels=1, input_size=28)
    with pytest.raises((RuntimeError, ValueError)):  # torch's own refusal (medcls refuses earlier, by shape)
        model(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ModelError, match="volumes"):
        create_model("vgg11_bn_acs", num_classes=2, in_channels=1, input_size=28)(torch.zeros(1, 1, 28, 28))


# ---------------------------------------------------------------- 3-D augmentation

def test_volume_augmentation_is_reproducible_bounded_and_shared_like_one_process():
    x = torch.rand(6, 1, 12, 14, 16)
    aug = Augment("light", hflip=True)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    # two processes, each with its block of the batch and its own generator in step, see the same items
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    parts = torch.cat([aug(x[:4], g1, Share(6, slice(0, 4))), aug(x[4:], g2, Share(6, slice(4, 6)))])
    torch.testing.assert_close(parts, a)
    assert torch.equal(Augment("none")(x, torch.Generator()), x)


def test_volume_mirror_is_left_right():
    """With no rotation, shift, scale or jitter, the only change a flip makes is along W."""
    aug = Augment("none", hflip=True)
    x = torch.rand(32, 1, 5, 6, 7)
    out = aug(x, torch.Generator().manual_seed(0))
    for i in range(len(x)):
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(out[i], x[i].flip(-1), atol=1e-5)
    assert any(not torch.allclose(out[i], x[i], atol=1e-5) for i in range(len(x)))


def test_volume_cutout_is_a_cube():
    aug = Augment("strong")
    aug.p = {**aug.p, "rot": 0.0, "shift": 0.0, "scale": 0.0, "jitter": 0.0}
    x = torch.zeros(3, 1, 20, 20, 20)
    out = aug(x, torch.Generator().manual_seed(1))
    for v in out[:, 0]:
        zs, ys, xs = torch.nonzero(v == 0.5, as_tuple=True)
        assert len(zs) > 0
        sides = [int(t.max() - t.min() + 1) for t in (zs, ys, xs)]
        assert len(zs) == np.prod(sides) and max(sides) <= 5  # one box, a quarter of each side at most


# ---------------------------------------------------------------- preparation of volume files

def test_resize_volume_with_spacing_keeps_millimetres():
    """A 12 mm-radius ball stored in 0.5 x 1 x 2 mm voxels, resampled to 2 mm: a ball of radius 6 voxels."""
    from medcls.modalities import resize_volume

    sp = (0.5, 1.0, 2.0)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip((96, 48, 24), sp)], indexing="ij")
    ball = ((zz ** 2 + yy ** 2 + xx ** 2) <= 12.0 ** 2).astype(np.float32)
    out = resize_volume(ball, 32, sp, 2.0)
    assert out.shape == (32, 32, 32)
    for axis in range(3):
        profile = out.max(axis=tuple(a for a in range(3) if a != axis))
        assert abs(float((profile > 0.5).sum()) - 12) <= 1.5  # 24 mm across, in 2 mm voxels
    stretched = resize_volume(ball, 32)
    assert stretched.shape == (32, 32, 32)
    with pytest.raises(MedclsError, match="coarser"):
        resize_volume(ball, 32, sp, 0.01)
    with pytest.raises(MedclsError, match="spacing"):
        resize_volume(ball, 32, None, 2.0)
