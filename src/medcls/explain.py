"""Where a CNN looked: Grad-CAM, Grad-CAM++, occlusion and integrated gradients.

``explain(run_or_model, images, method=..., target=None)`` returns one map per
image (and per label asked for) at the input's resolution, in [0, 1].

Occlusion and integrated gradients are Captum's (``captum.attr.Occlusion``,
``IntegratedGradients``). Grad-CAM and Grad-CAM++ share one pair of hooks on the
model's ``gradcam_layer``; ``tests/test_explain.py`` checks the Grad-CAM maps
against Captum's ``LayerGradCam`` on the same layer. The hooks avoid the traps
the saliency libraries' trackers record:

- the layer's output is handed on as a clone, so an in-place ReLU after it
  (AlexNet, VGG) rewrites the clone, not the activation kept for the map; the
  model's modules are not changed (no silent ``inplace=False``);
- every hook is removed in ``finally`` and the model's train/eval mode
  restored; gradients are taken at the activation only, so no parameter's
  ``.grad`` changes;
- gradients are taken even when the caller is inside ``torch.no_grad()`` or
  ``torch.inference_mode()``;
- models returning a tuple or named tuple (GoogLeNet's auxiliary heads in
  training mode) are explained on their main output; maps are taken in eval mode,
  where the auxiliary heads are absent.

Sanity checks after Adebayo et al. (NeurIPS 2018) and Petsiuk et al. (2018):
:func:`randomisation_correlation` (maps of the trained model against the same
architecture re-initialised: a map that explains the weights changes with them)
and :func:`deletion_auc` (remove pixels in the map's order; a faithful map makes
the class probability fall fast).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcls.errors import MedclsError

__all__ = ["METHODS", "Explanation", "explain", "saliency", "randomisation_correlation", "deletion_auc",
           "resolve_layer"]

METHODS = ("gradcam", "gradcam++", "occlusion", "ig")


@dataclass
class Explanation:
    # (N, H, W) in [0, 1] at the input resolution ((N, D, H, W) for volumes); (N, T, ...) for several targets
    maps: np.ndarray
    probs: np.ndarray  # (N, K) the model's probabilities
    targets: np.ndarray  # (N,) or (N, T): what each map explains (class or label index)
    method: str
    layer: str | None  # the Grad-CAM layer (None for occlusion / ig)


def resolve_layer(model: nn.Module, layer: str | None = None) -> tuple[str, list[nn.Module]]:
    """The modules a layer-based map hooks: ``layer`` by dotted name, else the model's ``gradcam_layer``.

    Several names joined by commas (the two towers of the split AlexNet) make one
    map over all their channels, as if their outputs were concatenated.
    """
    name = layer or getattr(model, "gradcam_layer", None)
    if not name:
        raise MedclsError(f"{type(model).__name__} names no Grad-CAM layer; pass one (e.g. the last convolution)")
    modules = dict(model.named_modules())
    missing = [n for n in name.split(",") if n.strip() not in modules]
    if missing:
        convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Conv3d))][-4:]
        raise MedclsError(f"the model has no layer {missing[0]!r}; its last convolutions are {', '.join(convs)}")
    return name, [modules[n.strip()] for n in name.split(",")]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, tuple):  # a (named) tuple: the main output first
        out = out[0]
    return out.float()


def _probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, 1)


@contextlib.contextmanager
def _explaining(model: nn.Module):
    """Eval mode and gradients on, whatever the caller's context; everything restored afterwards."""
    was_training = model.training
    try:
        with torch.inference_mode(False), torch.enable_grad():
            model.eval()
            yield
    finally:
        model.train(was_training)


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1] by its own maximum (a map of zeros stays zero)."""
    flat = maps.flatten(1)
    view = (-1,) + (1,) * (maps.ndim - 1)
    lo = flat.min(1).values.view(view)
    hi = flat.max(1).values.view(view)
    return torch.where(hi > lo, (maps - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(maps))


def _cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, modules: list[nn.Module],
         plus: bool) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) or Grad-CAM++ (Chattopadhay et al. 2018) at the modules' outputs."""
    acts: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(i):
        def forward_hook(_m, _inp, out):
            out = out[0] if isinstance(out, tuple) else out
            acts[i] = out
            return out.clone()  # what runs on (an in-place ReLU included) is a copy; the activation stays intact
        return forward_hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        x = x.detach().clone().requires_grad_(True)  # a graph exists even when every weight is frozen
        logits = _logits(model, x)
        score = logits.gather(1, target.view(-1, 1)).sum()
        # the gradient at the activations alone: no parameter's .grad is touched
        grads = torch.autograd.grad(score, acts)
    finally:
        for h in handles:
            h.remove()
    cam = None
    space = tuple(range(2, x.ndim))  # the spatial axes: (H, W), or (D, H, W) for a volume
    for a, g in zip(acts, grads):
        a, g = a.detach().float().to(x.device), g.detach().float().to(x.device)
        if plus:
            # Grad-CAM++ weights (eq. 19 of the paper with the exponential output, as its authors' code):
            # alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g))
            g2, g3 = g.pow(2), g.pow(3)
            denom = 2 * g2 + a.sum(dim=space, keepdim=True) * g3
            alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
            weights = (alpha * F.relu(g)).sum(dim=space, keepdim=True)
        else:
            weights = g.mean(dim=space, keepdim=True)
        part = (weights * a).sum(1, keepdim=True)
        cam = part if cam is None else cam + part
    cam = F.relu(cam)
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    return F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)[:, 0]


def _occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from captum.attr import Occlusion

    s = x.shape[-1]
    win = max(3, s // 7)  # a 4x4 patch at 28 px, 32x32 at 224 px (a 4^3 cube at 28^3)
    stride = max(1, win // 2)
    space = x.ndim - 2
    attr = Occlusion(lambda t: _logits(model, t)).attribute(
        x, target=target, sliding_window_shapes=(x.shape[1],) + (win,) * space,
        strides=(x.shape[1],) + (stride,) * space, baselines=0.0, perturbations_per_eval=16)
    return F.relu(attr.sum(1))  # where hiding the patch lowered the class score


def _integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(lambda t: _logits(model, t)).attribute(x, target=target, baselines=0.0, n_steps=32,
                                                                        internal_batch_size=64)
    return attr.abs().sum(1)


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str = "gradcam",
             layer: str | None = None) -> torch.Tensor:
    """Maps ``(N, H, W)`` in [0, 1] for a normalised input batch ``x`` and one target index per item."""
    if method not in METHODS:
        raise MedclsError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    with _explaining(model):
        x, target = x.detach().clone(), target.clone()  # normal tensors even if made under inference_mode
        if method in ("gradcam", "gradcam++"):
            _, modules = resolve_layer(model, layer)
            maps = _cam(model, x, target, modules, plus=method == "gradcam++")
        elif method == "occlusion":
            maps = _occlusion(model, x.detach(), target)
        else:
            maps = _integrated_gradients(model, x.detach(), target)
    return _normalise(maps.detach())


def _targets(probs: torch.Tensor, target, n_outputs: int) -> torch.Tensor:
    """``(N, T)`` target indices; default the predicted class (multi-label: the most likely label)."""
    n = probs.shape[0]
    if target is None:
        return probs.argmax(1).view(-1, 1)
    t = torch.as_tensor(np.atleast_1d(np.asarray(target, dtype=np.int64)), device=probs.device)
    if ((t < 0) | (t >= n_outputs)).any():
        raise MedclsError(f"target {np.asarray(target).tolist()} out of range: the model has {n_outputs} outputs")
    return t.view(1, -1).expand(n, -1) if t.ndim == 1 else t


def explain(run_or_model, images, method: str = "gradcam", target=None, *, layer: str | None = None,
            task: str | None = None, batch_size: int = 64) -> Explanation:
    """Maps for a batch of images.

    Args:
        run_or_model: a CNN run (``medcls.runs.CNNRun``: ``images`` are the uint8
            items ``(N, C, H, W)`` its model takes, as ``run.prepare_file`` gives
            them) or an ``nn.Module`` (``images`` a normalised float tensor or array).
        method: gradcam | gradcam++ | occlusion | ig.
        target: class (or label) index, or a list of them (one map each for every
            image), or an ``(N, T)`` array of targets per image; default: the
            predicted class.
        layer: the module for Grad-CAM(++), by dotted name; default the model's
            ``gradcam_layer``.
        task: binary | multiclass | multilabel (a run knows its own).

    Returns:
        :class:`Explanation` with maps at the input resolution.
    """
    if isinstance(run_or_model, nn.Module):
        model = run_or_model
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).float()
        device = next(model.parameters(), torch.empty(0)).device
        x = x.to(device)
        task = task or "multiclass"
    else:
        run = run_or_model
        if not hasattr(run, "inputs"):
            raise MedclsError(f"{getattr(run, 'root', run)}: maps need a CNN run; a classical pipeline works on "
                              "hand-made features (HOG, SIFT, statistics), not on pixels a gradient can reach")
        model, x, task = run.model, run.inputs(np.asarray(images)), run.task
    if x.ndim not in (4, 5):
        raise MedclsError(f"images must be a batch (N, C, H, W), or of volumes (N, C, D, H, W), got shape "
                          f"{tuple(x.shape)}")
    name = resolve_layer(model, layer)[0] if method in ("gradcam", "gradcam++") else None
    maps, probs, targets = [], [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        with _explaining(model), torch.no_grad():
            logits = _logits(model, xb)
        p = _probabilities(logits, task)
        t = _targets(p, target[i:i + batch_size] if np.ndim(target) == 2 else target, logits.shape[1])
        maps.append(torch.stack([saliency(model, xb, t[:, j], method, layer) for j in range(t.shape[1])], 1))
        probs.append(p)
        targets.append(t)
    m = torch.cat(maps).cpu().numpy().astype(np.float32)
    t = torch.cat(targets).cpu().numpy()
    if t.shape[1] == 1:
        m, t = m[:, 0], t[:, 0]
    return Explanation(m, torch.cat(probs).cpu().numpy(), t, method, name)


def _reinitialised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every layer's parameters drawn again (``reset_parameters``)."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters") and m is not fresh:
                m.reset_parameters()
    return fresh


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps; a constant map (no evidence anywhere) counts as uncorrelated."""
    from scipy.stats import spearmanr

    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def randomisation_correlation(model: nn.Module, x: torch.Tensor, method: str = "gradcam", target=None,
                              layer: str | None = None, seed: int = 0) -> float:
    """Mean Spearman rank correlation between the maps of ``model`` and of the same architecture re-initialised.

    The model-randomisation test of Adebayo et al. (2018): maps that depend on what
    the model learned change when the weights do, so the correlation is low; an
    edge detector's maps would not change.
    """
    with _explaining(model), torch.no_grad():
        t = _logits(model, x).argmax(1) if target is None else torch.full((len(x),), int(target), device=x.device)
    trained = saliency(model, x, t, method, layer).cpu().numpy()
    fresh = _reinitialised(model, seed)
    random_maps = saliency(fresh, x, t, method, layer).cpu().numpy()
    return float(np.mean([_spearman(a, b) for a, b in zip(trained, random_maps)]))


def deletion_auc(model: nn.Module, x: torch.Tensor, maps: np.ndarray, target: torch.Tensor, task: str = "multiclass",
                 steps: int = 16, baseline: float = 0.0) -> np.ndarray:
    """Per image: the mean target probability as the map's most salient pixels are removed first.

    Petsiuk et al. (2018): pixels go to ``baseline`` (0: the training mean after
    normalisation) in ``steps`` equal shares, most salient first; the area under
    the probability curve (0..1) is low for a map that found what the model uses.
    """
    n, _, h, w = x.shape
    order = torch.as_tensor(np.argsort(-maps.reshape(n, -1), axis=1, kind="stable"), device=x.device)
    curve = []
    with _explaining(model), torch.no_grad():
        for k in range(steps + 1):
            cut = int(round(k * h * w / steps))
            mask = torch.ones(n, h * w, device=x.device)
            if cut:
                mask.scatter_(1, order[:, :cut], 0.0)
            xk = x * mask.view(n, 1, h, w) + baseline * (1 - mask.view(n, 1, h, w))
            p = _probabilities(_logits(model, xk), task)
            curve.append(p.gather(1, target.view(-1, 1))[:, 0].cpu().numpy())
    c = np.stack(curve, 1)  # (N, steps + 1)
    return ((c[:, 1:] + c[:, :-1]) / 2).mean(1)  # trapezoid over [0, 1]
