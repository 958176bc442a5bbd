"""Explanation maps: equal to Captum's, safe for the user's model, sane on a trained one, and end to end."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from medcls.errors import MedclsError
from medcls.explain import deletion_auc, explain, randomisation_correlation, saliency
from medcls.models import create_model
from tests.conftest import dcm, run_cli

captum = pytest.importorskip("captum")


def _captum_gradcam(model, layer, x, target):
    from captum.attr import LayerAttribution, LayerGradCam

    ref = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, tuple(x.shape[-2:]), "bilinear")[:, 0].detach()
    flat = ref.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return torch.where(hi > lo, (ref - lo) / (hi - lo), torch.zeros_like(ref))


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn", "googlenet"])
@pytest.mark.parametrize("channels", [1, 3])
def test_gradcam_equals_captum(name, channels):
    torch.manual_seed(0)
    kw = {"init": "kaiming"} if name == "alexnet" else {}  # the paper's N(0, 0.01) leaves conv5 all but silent
    m = create_model(name, num_classes=3, in_channels=channels, input_size=64, **kw).eval()
    x = torch.randn(3, channels, 64, 64)
    e = explain(m, x, "gradcam")
    ref = _captum_gradcam(m, m.get_submodule(m.gradcam_layer), x, torch.as_tensor(e.targets))
    assert e.maps.shape == (3, 64, 64) and float(ref.std()) > 0  # maps that vary: the comparison means something
    np.testing.assert_allclose(e.maps, ref.numpy(), atol=1e-4)


class _InplaceNet(nn.Module):
    """Conv -> in-place ReLU right after the hooked layer: the trap of pytorch-grad-cam #147 / captum #156."""

    gradcam_layer = "conv2"

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def test_inplace_relu_neither_corrupts_the_map_nor_is_changed():
    torch.manual_seed(1)
    m = _InplaceNet().eval()
    x = torch.randn(4, 1, 16, 16)
    target = torch.tensor([0, 1, 0, 1])
    ours = saliency(m, x, target, "gradcam")
    safe = copy.deepcopy(m)
    safe.relu.inplace = False
    reference = saliency(safe, x, target, "gradcam")
    torch.testing.assert_close(ours, reference)
    assert m.relu.inplace  # the user's model is as it was

    # and the trap is real: a plain hook keeps the activation the ReLU then overwrote
    kept = {}
    h = m.conv2.register_forward_hook(lambda _m, _i, o: kept.__setitem__("a", o))
    m(x)
    h.remove()
    assert (kept["a"] >= 0).all()  # rectified in place: its negative part, which Grad-CAM sums, is gone
    pre = m.conv2(m.relu(m.conv1(x)))
    assert (pre < 0).any()


def test_no_hook_is_left_and_the_model_is_untouched():
    torch.manual_seed(0)
    m = create_model("alexnet_onetower", num_classes=2, in_channels=1, input_size=28).train()
    x = torch.randn(2, 1, 28, 28)
    for p in m.parameters():
        p.grad = None
    with torch.inference_mode():  # the caller's context does not stop the gradients the map needs
        for _ in range(50):
            explain(m, x, "gradcam")
            explain(m, x, "gradcam++")
    assert all(not mod._forward_hooks and not mod._backward_hooks for mod in m.modules())
    assert m.training  # mode restored
    assert all(p.grad is None for p in m.parameters())  # no gradient left on the weights


def test_multilabel_gives_one_map_per_label_asked():
    torch.manual_seed(0)
    m = create_model("vgg11_bn", num_classes=4, in_channels=1, input_size=28)
    x = torch.randn(3, 1, 28, 28)
    e = explain(m, x, "gradcam", target=[0, 2], task="multilabel")
    assert e.maps.shape == (3, 2, 28, 28) and e.targets.tolist() == [[0, 2]] * 3
    assert np.allclose(e.probs, torch.sigmoid(m.eval()(x)).detach().numpy(), atol=1e-5)
    assert not np.allclose(e.maps[:, 0], e.maps[:, 1])  # each label its own map


def test_split_alexnet_maps_both_towers_like_the_grouped_network():
    torch.manual_seed(0)
    single = create_model("alexnet", num_classes=3, in_channels=1, input_size=64, init="kaiming").eval()
    split = create_model("alexnet", num_classes=3, in_channels=1, input_size=64, devices=("cpu", "cpu")).eval()
    split.load_grouped_state_dict(single.state_dict())
    x = torch.randn(2, 1, 64, 64)
    a = explain(single, x, "gradcam", target=1)
    b = explain(split, x, "gradcam", target=1)
    assert b.layer == "towers.0.relu5,towers.1.relu5"
    np.testing.assert_allclose(b.maps, a.maps, atol=1e-4)
    one_tower = explain(split, x, "gradcam", target=1, layer="towers.0.relu5")
    assert not np.allclose(one_tower.maps, a.maps, atol=1e-3)  # half the channels is another map


def test_bad_requests_are_one_line_errors():
    m = create_model("alexnet_onetower", num_classes=2, in_channels=1, input_size=28)
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(MedclsError, match="no layer 'features.99'"):
        explain(m, x, "gradcam", layer="features.99")
    with pytest.raises(MedclsError, match="unknown explanation method"):
        explain(m, x, "lime")
    with pytest.raises(MedclsError, match="out of range"):
        explain(m, x, "gradcam", target=5)


class _LooksTopLeft(nn.Module):
    """A model whose score is the mean of the top-left quadrant: what an honest map must find."""

    def forward(self, x):
        s = x[:, :, :8, :8].mean((1, 2, 3))
        return torch.stack([-s, s], 1) * 10


def test_deletion_auc_rewards_the_true_region():
    x = torch.rand(4, 1, 16, 16) + 0.5
    right = np.zeros((4, 16, 16), np.float32)
    right[:, :8, :8] = 1 + np.random.default_rng(0).random((4, 8, 8))
    wrong = np.zeros_like(right)
    wrong[:, 8:, 8:] = 1 + np.random.default_rng(1).random((4, 8, 8))
    t = torch.ones(4, dtype=torch.long)
    good, bad = deletion_auc(_LooksTopLeft(), x, right, t), deletion_auc(_LooksTopLeft(), x, wrong, t)
    assert (good < bad - 0.2).all()
    occ = explain(_LooksTopLeft(), x, "occlusion", target=1)
    assert occ.maps[:, :8, :8].mean() > 5 * occ.maps[:, 8:, 8:].mean()  # Captum's occlusion finds it too


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, medmnist_dir):
    run = tmp_path_factory.mktemp("explain") / "run"
    from medcls.cli import main

    rc = main(["train", "--data", "pneumoniamnist", "--data-dir", str(medmnist_dir), "--model", "alexnet_onetower",
               "--model-arg", "fc_width=64", "--epochs", "3", "--max-train-samples", "600", "--out", str(run), "--device", "cpu",
               "--checkpoint-every", "0"])
    assert rc == 0
    return run


def test_randomisation_test_on_a_trained_model(trained_run, medmnist_dir):
    from medcls.data import load_dataset, to_items
    from medcls.runs import load_run

    r = load_run(trained_run, "cpu")
    ds = load_dataset("pneumoniamnist", data_dir=str(medmnist_dir))
    x = r.inputs(to_items(ds, "test", channels=1).x[:16])
    rho = randomisation_correlation(r.model, x, "gradcam")
    assert abs(rho) < 0.5, rho
    # a model compared with itself correlates perfectly: the measure can tell
    same = saliency(r.model, x, r.model(x).argmax(1), "gradcam").numpy()
    assert np.allclose(same, saliency(r.model, x, r.model(x).argmax(1), "gradcam").numpy())


def test_explain_cli_on_real_dicom_and_nifti(trained_run, tmp_path, capsys):
    import nibabel.testing

    nifti = f"{nibabel.testing.data_path}/anatomical.nii"
    ct = dcm("CT_small.dcm")
    out = tmp_path / "maps"
    rc, stdout, err = run_cli(["explain", trained_run, ct, nifti, "--out", out, "--method", "gradcam++",
                               "--sanity", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "sanity" in stdout and "rank correlation" in stdout
    rec = json.loads((out / "CT_small.json").read_text())
    assert rec["method"] == "gradcam++" and rec["layer"] and rec["class"] in rec["probabilities"]
    assert 0 <= rec["peak"]["row"] < 128 and 0 <= rec["peak"]["col"] < 128  # the file's own 128 x 128 grid
    vol = json.loads((out / "anatomical.json").read_text())
    assert vol["items"] > 1 and len(vol["decisive"]) == 3 and "slice" in vol["peak"]
    assert vol["decisive"][0]["probability"] >= vol["decisive"][-1]["probability"]
    png = (out / "CT_small.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    rc, stdout, err = run_cli(["predict", trained_run, ct, "--explain", tmp_path / "p", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert (tmp_path / "p" / "CT_small.png").is_file() and "heat map" in stdout


def test_explain_cli_refuses_clearly(trained_run, tmp_path, capsys):
    ct = dcm("CT_small.dcm")
    rc, _, err = run_cli(["explain", trained_run, ct, "--out", tmp_path, "--target", "tumour"], capsys)
    assert rc == 2 and "unknown class 'tumour'" in err and "Traceback" not in err
    rc, _, err = run_cli(["explain", trained_run, ct, "--out", tmp_path, "--layer", "nope"], capsys)
    assert rc == 2 and "no layer 'nope'" in err
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    rc, _, err = run_cli(["explain", trained_run, junk, "--out", tmp_path], capsys)
    assert rc == 2 and str(junk) in err


def test_a_classical_run_is_told_maps_need_a_cnn(tmp_path, capsys, medmnist_dir):
    run = tmp_path / "cls"
    rc, _, err = run_cli(["classical", "--data", "breastmnist", "--data-dir", medmnist_dir, "--features", "stats",
                          "--classifier", "bayes", "--out", run], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["explain", run, dcm("CT_small.dcm"), "--out", tmp_path / "m"], capsys)
    assert rc == 2 and "classical pipeline" in err and "need a CNN run" in err


def test_report_shows_a_gallery_of_right_and_wrong_answers(trained_run):
    report = (trained_run / "report.html").read_text()
    assert (trained_run / "gallery.png").is_file()
    assert "Where the model looked (test)" in report and report.count("data:image/png;base64,") >= 5
