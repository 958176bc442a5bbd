"""The CNN families: parameter counts, shapes, paper details, equivalences, export."""

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from medcls.errors import ModelError
from medcls.models import AuxOutputs, LocalResponseNorm, base_name, count_params, create_model, list_models, \
    model_loss
from medcls.models.googlenet import TABLE1
from tests.conftest import run_cli

MODELS = [n for n in list_models() if base_name(n)[1] is None]  # the 2-D networks (volumes: test_volume.py)


def _n(model):
    return sum(p.numel() for p in model.parameters())


def _meta(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def test_registry_has_every_family():
    assert {"alexnet", "alexnet_onetower", "googlenet", "inception_v2"} <= set(MODELS)
    assert {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")} <= set(MODELS)
    with pytest.raises(ModelError, match="unknown model"):
        create_model("resnet50")


# ------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("name,expected", [
    ("vgg11", 132_863_336), ("vgg13", 133_047_848), ("vgg16", 138_357_544), ("vgg19", 143_667_240),
])
def test_vgg_param_counts_equal_torchvision(name, expected):
    ours = _n(_meta(name, num_classes=1000, in_channels=3, input_size=224))
    with torch.device("meta"):
        tv = _n(getattr(torchvision.models, name)())
        tv_bn = _n(getattr(torchvision.models, name + "_bn")())
    assert ours == tv == expected
    assert _n(_meta(name + "_bn", num_classes=1000, in_channels=3, input_size=224)) == tv_bn


def test_alexnet_param_counts():
    assert _n(_meta("alexnet", num_classes=1000, in_channels=3, input_size=224)) == 60_965_224
    split = _meta("alexnet", num_classes=1000, in_channels=3, input_size=224, devices=("meta", "meta"))
    assert _n(split) == 60_965_224
    with torch.device("meta"):
        tv = _n(torchvision.models.alexnet())
    assert _n(_meta("alexnet_onetower", num_classes=1000, in_channels=3, input_size=224)) == tv


def _table1_params(num_classes=1000) -> int:
    """GoogLeNet's parameters computed from the layer shapes of the paper's Table 1."""
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731  weights + biases
    total = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    cin = 192
    for c1, r3, c3, r5, c5, pp in TABLE1.values():
        total += conv(cin, c1, 1) + conv(cin, r3, 1) + conv(r3, c3, 3) + conv(cin, r5, 1) + conv(r5, c5, 5)
        total += conv(cin, pp, 1)
        cin = c1 + c3 + c5 + pp
    assert cin == 1024
    return total + 1024 * num_classes + num_classes


def test_googlenet_param_count_matches_table1():
    m = _meta("googlenet", num_classes=1000, in_channels=3, input_size=224, aux_logits=False)
    assert _n(m) == _table1_params()
    assert 6.8e6 <= _n(m) <= 7.0e6  # the paper rounds it to about 6.8 M


# ------------------------------------------------------------- shapes

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [28, 64, 128, 224])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes(name, size, channels):
    if size <= 64:  # real compute
        torch.manual_seed(0)
        m = create_model(name, num_classes=3, in_channels=channels, input_size=size).eval()
        with torch.no_grad():
            y = m(torch.randn(2, channels, size, size))
        assert torch.isfinite(y).all()
    else:  # shape propagation only: large VGGs at 224 px would dominate the suite
        m = _meta(name, num_classes=3, in_channels=channels, input_size=size).eval()
        y = m(torch.empty(2, channels, size, size, device="meta"))
    assert tuple(y.shape) == (2, 3)
    feats = m.forward_features(torch.zeros(1, channels, size, size, device=y.device))
    assert min(feats.shape[-2:]) >= 1  # the map never collapses


@pytest.mark.parametrize("name", MODELS)
def test_uniform_interface(name):
    m = create_model(name, num_classes=4, in_channels=1, input_size=32).eval()
    assert (m.num_classes, m.in_channels, m.input_size) == (4, 1, 32)
    assert isinstance(m.get_submodule(m.gradcam_layer), nn.Module)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        z = m.forward_head(m.forward_features(x), pre_logits=True)
        assert z.ndim == 2 and z.shape[0] == 2
        m.reset_classifier(7)
        assert m(x).shape == (2, 7) and m.num_classes == 7


def test_a_model_missing_its_head_fails_at_construction():
    from medcls.models._base import ClassifierModel

    class Half(ClassifierModel):
        def forward_features(self, x):
            return x

    with pytest.raises(TypeError, match="forward_head"):
        Half()


@pytest.mark.parametrize("name", MODELS)
def test_weights_round_trip_through_safetensors(name, tmp_path):
    from medcls.train.checkpoint import load_weights, save_weights

    torch.manual_seed(0)
    a = create_model(name, num_classes=2, in_channels=1, input_size=28).eval()
    save_weights(a, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    b = create_model(name, num_classes=2, in_channels=1, input_size=28).eval()
    load_weights(b, tmp_path / "w.safetensors")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_split_alexnet_weights_round_trip(tmp_path):
    from medcls.train.checkpoint import load_weights, save_weights

    a = create_model("alexnet", num_classes=2, input_size=28, devices=("cpu", "cpu"))
    save_weights(a, tmp_path / "w.safetensors")
    b = create_model("alexnet", num_classes=2, input_size=28, devices=("cpu", "cpu"), init="kaiming")
    load_weights(b, tmp_path / "w.safetensors")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_gives_the_same_output(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=2, in_channels=3, input_size=28).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = m(x)
        m = m.to(memory_format=torch.channels_last)
        out = m(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- paper details

def test_lrn_inter_channel_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, 4)
    n, alpha, beta, k = 5, 1e-4 * 1000, 0.75, 2.0  # large alpha so the term matters
    ref = torch.empty_like(x)
    C = x.shape[1]
    for c in range(C):
        lo, hi = max(0, c - n // 2), min(C - 1, c + n // 2)
        s = (x[:, lo:hi + 1] ** 2).sum(1)
        ref[:, c] = x[:, c] / (k + alpha * s) ** beta
    out = LocalResponseNorm(n, alpha, beta, k, mode="inter")(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(nn.LocalResponseNorm(n, alpha * n, beta, k)(x), ref)  # PyTorch divides alpha by n


def test_lrn_intra_channel_formula():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 6)
    n, alpha, beta, k = 3, 0.05, 0.75, 2.0
    ref = torch.empty_like(x)
    H, W = x.shape[-2:]
    for y in range(H):
        for xx in range(W):
            win = x[:, :, max(0, y - 1):min(H, y + 2), max(0, xx - 1):min(W, xx + 2)]
            ref[:, :, y, xx] = x[:, :, y, xx] / (k + alpha * (win ** 2).sum((-1, -2))) ** beta
    torch.testing.assert_close(LocalResponseNorm(n, alpha, beta, k, mode="intra")(x), ref)


def test_lrn_gradient_matches_the_pow_form_and_k_must_be_positive():
    torch.manual_seed(2)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    n, alpha, beta, k = 5, 0.05, 0.75, 2.0
    LocalResponseNorm(n, alpha, beta, k)(x).square().sum().backward()
    g = x.grad.clone()
    x.grad = None
    nn.LocalResponseNorm(n, alpha * n, beta, k)(x).square().sum().backward()  # x / (.)^beta, autograd's own
    torch.testing.assert_close(g, x.grad)
    with pytest.raises(ValueError, match="k must be positive"):
        LocalResponseNorm(n, alpha, beta, 0.0)
    for even in (4, 0):  # no centred window: the grouped and ungrouped sums would disagree on which side
        with pytest.raises(ValueError, match="size must be odd"):
            LocalResponseNorm(even, alpha, beta, k, groups=2, channels=8)


def test_lrn_groups_normalise_each_half_alone():
    x = torch.randn(1, 8, 2, 2)
    full = LocalResponseNorm(5, 0.1, 0.75, 2.0, groups=2, channels=8)(x)
    halves = torch.cat([LocalResponseNorm(5, 0.1, 0.75, 2.0)(h) for h in x.chunk(2, 1)], 1)
    torch.testing.assert_close(full, halves)


@pytest.mark.parametrize("lrn", ["inter", "intra"])
def test_alexnet_lrn_selectable(lrn):
    m = create_model("alexnet", num_classes=2, input_size=64, lrn=lrn)
    modes = {mod.mode for mod in m.modules() if isinstance(mod, LocalResponseNorm)}
    assert modes == {lrn} and sum(isinstance(mod, LocalResponseNorm) for mod in m.modules()) == 2


def test_alexnet_paper_init():
    m = create_model("alexnet", num_classes=1000, in_channels=3, input_size=224)
    convs = [mod for mod in m.features if isinstance(mod, nn.Conv2d)]
    assert [bool((c.bias == 1).all()) for c in convs] == [False, True, False, True, True]
    assert convs[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert [mod.groups for mod in convs] == [1, 2, 1, 2, 2]
    fcs = [mod for mod in m.classifier if isinstance(mod, nn.Linear)]
    assert [bool((f.bias == 1).all()) for f in fcs] == [True, True, False]
    drops = [mod.p for mod in m.classifier if isinstance(mod, nn.Dropout)]
    assert drops == [0.5, 0.5]


@pytest.mark.parametrize("name", ["alexnet", "alexnet_onetower"])
def test_alexnet_is_initialised_once_whoever_builds_it(name, monkeypatch):
    import medcls.models.alexnet as A

    calls = []
    init = A._init_alexnet
    monkeypatch.setattr(A, "_init_alexnet", lambda m, how: (calls.append(how), init(m, how)))
    create_model(name, num_classes=10, in_channels=3, input_size=224, init="kaiming")
    assert calls == ["kaiming"]
    direct = A.AlexNet(10, 3, 224, widths=A._PAPER if name == "alexnet" else A._ONETOWER, init="paper")
    convs = [mod for mod in direct.features if isinstance(mod, nn.Conv2d)]
    assert [bool((c.bias == 1).all()) for c in convs] == [False, True, False, True, True]  # the paper's unit biases


@pytest.mark.parametrize("size", [28, 224])
def test_alexnet_split_equals_single_device(size):
    torch.manual_seed(0)
    single = create_model("alexnet", num_classes=10, in_channels=3, input_size=size, init="kaiming").eval()
    split = create_model("alexnet", num_classes=10, in_channels=3, input_size=size, devices=("cpu", "cpu")).eval()
    split.load_grouped_state_dict(single.state_dict())
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        a, b = single(x), split(x)
    assert a.std(0).mean() > 1e-3  # outputs depend on the input: the comparison is not vacuous
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_alexnet_split_trains_across_devices():
    m = create_model("alexnet", num_classes=2, in_channels=1, input_size=28, devices=("cpu", "cpu"), init="kaiming")
    y = m(torch.randn(3, 1, 28, 28))
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_vgg16_equals_torchvision_with_its_weights():
    torch.manual_seed(0)
    tv = torchvision.models.vgg16().eval()
    ours = create_model("vgg16", num_classes=1000, in_channels=3, input_size=224).eval()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))


def test_alexnet_onetower_equals_torchvision_with_its_weights():
    tv = torchvision.models.alexnet().eval()
    ours = create_model("alexnet_onetower", num_classes=1000, in_channels=3, input_size=224).eval()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))


@pytest.mark.parametrize("name", ["googlenet", "inception_v2"])
def test_auxiliary_classifiers_train_vs_eval(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=3, in_channels=1, input_size=64)
    x, t = torch.randn(4, 1, 64, 64), torch.tensor([0, 1, 2, 1])
    m.train()
    out = m(x)
    assert isinstance(out, AuxOutputs) and len(out.aux) == 2
    ce = nn.CrossEntropyLoss()
    expected = ce(out.logits, t) + 0.3 * (ce(out.aux[0], t) + ce(out.aux[1], t))
    torch.testing.assert_close(model_loss(out, t, ce), expected)
    m.eval()
    assert isinstance(m(x), torch.Tensor) and m(x).shape == (4, 3)
    off = create_model(name, num_classes=3, in_channels=1, input_size=64, aux_logits=False).train()
    assert isinstance(off(x), torch.Tensor) and count_params(off) < count_params(m)


def test_inception_v2_has_batchnorm_and_factorised_5x5():
    v2 = create_model("inception_v2", num_classes=2, input_size=64)
    v1 = create_model("googlenet", num_classes=2, input_size=64)
    assert any(isinstance(m, nn.BatchNorm2d) for m in v2.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in v1.modules())
    k = lambda m: [c.kernel_size[0] for c in m.inception3a.branch3.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert k(v1) == [1, 5] and k(v2) == [1, 3, 3]
    assert any(isinstance(m, LocalResponseNorm) for m in v1.modules())


# ------------------------------------------------------------- export / compile

@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_agrees_with_onnxruntime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from medcls.models.export import export_onnx

    torch.manual_seed(0)
    m = create_model(name, num_classes=3, in_channels=1, input_size=28).eval()
    path = export_onnx(m, tmp_path / f"{name}.onnx", in_channels=1, size=28)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 28, 28)  # batch 5: the batch axis is dynamic
    got = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, m(x).numpy(), atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_trace(name):
    m = create_model(name, num_classes=2, in_channels=1, input_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    traced = torch.jit.trace(m, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), m(x))


@pytest.mark.slow
def test_torch_compile():
    m = create_model("alexnet", num_classes=2, in_channels=1, input_size=28, init="kaiming").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m)(x), m(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- CLI

def test_models_cli_json(capsys):
    rc, out, _ = run_cli(["models", "--json", "--classes", "5", "--channels", "3", "--size", "64"], capsys)
    rows = json.loads(out)
    assert rc == 0 and [r["name"] for r in rows] == list_models()
    by = {r["name"]: r for r in rows}
    for name in ("alexnet", "googlenet", "vgg11_bn"):
        m = create_model(name, num_classes=5, in_channels=3, input_size=64)
        aux = sum(count_params(c) for n, c in m.named_children() if n.startswith("aux"))
        assert by[name]["params"] == count_params(m) - aux and by[name]["flops"] > 0
    assert by["vgg19"]["flops"] > by["vgg16"]["flops"] > by["vgg13"]["flops"] > by["vgg11"]["flops"]


def test_lrn_band_is_the_channel_window_for_any_width_and_layout():
    """The banded 1 x 1 convolution sums the same channel window as the formula, channels-last included,
    and one module serves inputs of different widths (its band is rebuilt per width)."""
    torch.manual_seed(3)
    lrn = LocalResponseNorm(5, 0.1, 0.75, 2.0)
    for c in (3, 7, 64):
        x = torch.randn(2, c, 5, 4)
        ref = torch.empty_like(x)
        for i in range(c):
            s = (x[:, max(0, i - 2):min(c, i + 3)] ** 2).sum(1)
            ref[:, i] = x[:, i] / (2.0 + 0.1 * s) ** 0.75
        torch.testing.assert_close(lrn(x), ref)
        torch.testing.assert_close(lrn(x.contiguous(memory_format=torch.channels_last)), ref)
    assert "band" not in dict(lrn.named_buffers()) and not lrn.state_dict()  # nothing new in a checkpoint


@pytest.mark.parametrize("name", ["googlenet", "inception_v2"])
def test_inception_fused_reductions_are_the_three_branches(name):
    """One convolution over the stacked 1 x 1 kernels gives the outputs and gradients of three separate ones."""
    import medcls.models.googlenet as g

    torch.manual_seed(4)
    m = create_model(name, num_classes=3, in_channels=1, input_size=32).train()
    block = m.inception4b
    x = torch.randn(4, block.branch1[0].in_channels, 6, 6, requires_grad=True)
    assert g._fusable((block.branch1, block.branch2[0], block.branch3[0]))
    torch.manual_seed(5)
    fused = block(x)
    gx_fused, gw_fused = torch.autograd.grad(fused.square().sum(), (x, block.branch3[0][0].weight))
    unfused = torch.cat([block.branch1(x), block.branch2(x), block.branch3(x), block.branch4(x)], 1)
    gx, gw = torch.autograd.grad(unfused.square().sum(), (x, block.branch3[0][0].weight))
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_fused, gx, rtol=1e-3, atol=1e-4)  # float sums in another order (batch norm)
    torch.testing.assert_close(gw_fused, gw, rtol=1e-3, atol=1e-4)


def test_inception_branches_run_one_by_one_when_hooked_or_in_volume_form():
    import medcls.models.googlenet as g

    m = create_model("googlenet", num_classes=2, in_channels=1, input_size=32)
    heads = (m.inception3a.branch1, m.inception3a.branch2[0], m.inception3a.branch3[0])
    seen = []
    handle = m.inception3a.branch3[0][0].register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    assert not g._fusable(heads)
    m.eval()(torch.randn(1, 1, 32, 32))
    assert seen and seen[0][1] == 16  # the hook saw the 5 x 5 reduce's own output
    handle.remove()
    assert g._fusable(heads)
    v = create_model("googlenet_acs", num_classes=2, in_channels=1, input_size=28)
    assert not g._fusable((v.inception3a.branch1, v.inception3a.branch2[0], v.inception3a.branch3[0]))



@pytest.mark.parametrize("size,groups", [(5, 1), (7, 1), (3, 2)])
def test_lrn_band_gradient_passes_gradcheck(size, groups):
    torch.manual_seed(6)
    lrn = LocalResponseNorm(size, 0.3, 0.75, 1.5, groups=groups, channels=6 if groups > 1 else None).double()
    assert torch.autograd.gradcheck(lrn, (torch.randn(2, 6, 3, 3, dtype=torch.double, requires_grad=True),))
