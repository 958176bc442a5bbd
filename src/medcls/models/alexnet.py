"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012).

Variants:

=====================  =====================  ===========================================
name                   widths                 notes
=====================  =====================  ===========================================
``alexnet``            96-256-384-384-256     the paper: conv2/4/5 grouped in two (each half
                                              sees its own half), conv3 and FC connect
                                              across; LRN after conv1 and conv2;
                                              ``devices=(d0, d1)`` puts each half on its
                                              own device
``alexnet_onetower``   64-192-384-256-256     torchvision's single-tower layout (no LRN);
                                              its state dict loads as is
=====================  =====================  ===========================================

At 3 x 224 x 224 and 1000 classes the paper's network has 60,965,224
parameters and the one-tower 61,100,840.

Small inputs: the stem adapts so the map never collapses. Input >= 160 px uses
the paper's conv1 (11 x 11, stride 4, padding 2); 56-159 px a 5 x 5 stride-2
conv1; below 56 px a 3 x 3 stride-1 conv1. The three overlapping 3 x 3 stride-2
max-pools stay, and the pooled map before the FC layers is min(6, final map)
(6 x 6 as in the paper at 224 px; 2 x 2 at 28 px). Layer widths are the paper's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medcls.models._base import CONVS, ClassifierModel, LocalResponseNorm
from medcls.models._registry import register_model

__all__ = ["AlexNet", "AlexNetSplit", "alexnet", "alexnet_onetower", "alexnet_stem"]

# (out channels, kernel, groups in the two-tower net) for conv1..conv5
_PAPER = [(96, None, 1), (256, 5, 2), (384, 3, 1), (384, 3, 2), (256, 3, 2)]
_ONETOWER = [(64, None, 1), (192, 5, 1), (384, 3, 1), (256, 3, 1), (256, 3, 1)]


def alexnet_stem(input_size: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of conv1 for an input size."""
    if input_size >= 160:
        return 11, 4, 2
    if input_size >= 56:
        return 5, 2, 2
    return 3, 1, 1


def _final_map(input_size: int) -> int:
    k, s, p = alexnet_stem(input_size)
    m = (input_size + 2 * p - k) // s + 1
    for _ in range(3):  # pools after conv1, conv2, conv5 (convs 2-5 keep the size)
        m = (m - 3) // 2 + 1
    return m


def _lrn(mode: str | None, groups: int, channels: int) -> nn.Module:
    if mode is None:
        return nn.Identity()
    return LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, mode=mode, groups=groups, channels=channels)


class AlexNet(ClassifierModel):
    """AlexNet on one device. ``features`` / ``avgpool`` / ``classifier`` follow torchvision's names."""

    has_volume_form = True

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, *,
                 widths=_PAPER, lrn: str | None = "inter", fc_width: int = 4096, dropout: float = 0.5,
                 init: str = "paper"):
        super().__init__()
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.lrn_mode, self.widths = lrn, [w[0] for w in widths]
        k1, s1, p1 = alexnet_stem(input_size)
        (c1, _, _), (c2, k2, g2), (c3, k3, g3), (c4, k4, g4), (c5, k5, g5) = widths
        lrn_groups = 2 if g2 == 2 else 1
        norm = (lambda c: [_lrn(lrn, lrn_groups, c)]) if lrn else (lambda c: [])
        layers = [
            nn.Conv2d(in_channels, c1, k1, stride=s1, padding=p1), nn.ReLU(), *norm(c1),  # N x 96 x 55 x 55 at 224
            nn.MaxPool2d(3, 2),  # overlapping pooling: N x 96 x 27 x 27
            nn.Conv2d(c1, c2, k2, padding=k2 // 2, groups=g2), nn.ReLU(), *norm(c2),
            nn.MaxPool2d(3, 2),  # N x 256 x 13 x 13
            nn.Conv2d(c2, c3, k3, padding=1, groups=g3), nn.ReLU(),  # connects across the halves
            nn.Conv2d(c3, c4, k4, padding=1, groups=g4), nn.ReLU(),
            nn.Conv2d(c4, c5, k5, padding=1, groups=g5), nn.ReLU(),
            nn.MaxPool2d(3, 2),  # N x 256 x 6 x 6
        ]
        # Without LRN the indices are torchvision's, so its state dicts load as is.
        self.features = nn.Sequential(*layers)
        self.pool_size = min(6, _final_map(input_size))
        self.avgpool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * self.pool_size**2, fc_width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(),
            nn.Linear(fc_width, num_classes),
        )
        last_conv = max(i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d))
        self.gradcam_layer = f"features.{last_conv + 1}"  # the last conv's rectified output, as for VGG
        for i, m in enumerate((m for m in self.features if isinstance(m, nn.Conv2d)), start=1):
            m._paper_index = i  # the paper's conv numbering, for its unit biases
        self.classifier[1]._paper_hidden = self.classifier[4]._paper_hidden = True
        self.init = init
        self.init_weights()

    def init_weights(self) -> None:
        _init_alexnet(self, self.init)

    def volume_linears(self) -> list[tuple[nn.Module, str, int]]:
        return [(self.classifier, "1", self.pool_size)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)


def _init_alexnet(model: nn.Module, init: str) -> None:
    """``paper``: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC
    layers (to give ReLUs positive inputs early), 0 elsewhere. ``kaiming``: He init."""
    if init not in ("paper", "kaiming"):
        raise ValueError(f"init must be 'paper' or 'kaiming', got {init!r}")
    convs = [m for m in model.modules() if isinstance(m, CONVS)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in convs + linears:
        if init == "paper":
            nn.init.normal_(m.weight, 0.0, 0.01)
        else:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
    if init == "paper":
        # conv index in the paper's order; the split model holds two of each.
        for m in convs:
            if getattr(m, "_paper_index", None) in (2, 4, 5):
                nn.init.ones_(m.bias)
        for m in linears:
            if getattr(m, "_paper_hidden", False):
                nn.init.ones_(m.bias)


class _Tower(nn.Module):
    """One device's half of the paper's network."""

    def __init__(self, in_channels: int, stem, lrn: str | None, fc_in: int, fc_width: int, pool_size: int):
        super().__init__()
        k1, s1, p1 = stem
        self.conv1 = nn.Conv2d(in_channels, 48, k1, stride=s1, padding=p1)
        self.conv2 = nn.Conv2d(48, 128, 5, padding=2)
        self.conv3 = nn.Conv2d(256, 192, 3, padding=1)  # sees both towers
        self.conv4 = nn.Conv2d(192, 192, 3, padding=1)
        self.conv5 = nn.Conv2d(192, 128, 3, padding=1)
        self.relu5 = nn.ReLU()  # a module of its own: Grad-CAM takes conv5's rectified output here
        self.fc6 = nn.Linear(fc_in, fc_width // 2)  # sees both towers
        self.fc7 = nn.Linear(fc_width, fc_width // 2)  # sees both towers
        self.lrn = _lrn(lrn, 1, 0)
        self.pool = nn.MaxPool2d(3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.relu = nn.ReLU()
        for i, c in enumerate([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], start=1):
            c._paper_index = i
        self.fc6._paper_hidden = self.fc7._paper_hidden = True


class AlexNetSplit(ClassifierModel):
    """The paper's two-GPU AlexNet: each tower on its own device.

    Activations cross devices only where the paper's network connects the
    halves: into conv3, fc6, fc7 and the final layer (on the first device).
    With the same weights it computes exactly what :class:`AlexNet` (grouped
    convolutions on one device) computes; see :meth:`load_grouped_state_dict`.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, *,
                 devices: Sequence[str | torch.device] = ("cpu", "cpu"), lrn: str | None = "inter",
                 fc_width: int = 4096, dropout: float = 0.5, init: str = "paper"):
        super().__init__()
        if len(devices) != 2:
            raise ValueError(f"the split AlexNet needs two devices, got {devices}")
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.devices = tuple(torch.device(d) for d in devices)
        self.pool_size = min(6, _final_map(input_size))
        fc_in = 256 * self.pool_size**2
        stem = alexnet_stem(input_size)
        self.towers = nn.ModuleList(_Tower(in_channels, stem, lrn, fc_in, fc_width, self.pool_size) for _ in range(2))
        self.dropout = nn.Dropout(dropout)
        self.fc8 = nn.Linear(fc_width, num_classes)
        self.gradcam_layer = "towers.0.relu5,towers.1.relu5"  # one map over both towers' channels
        _init_alexnet(self, init)
        for t, d in zip(self.towers, self.devices):
            t.to(d)
        self.fc8.to(self.devices[0])

    def get_classifier(self) -> nn.Linear:
        return self.fc8

    def _set_classifier(self, layer: nn.Linear) -> None:
        self.fc8 = layer.to(self.devices[0])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        t0, t1 = self.towers
        d0, d1 = self.devices
        h = [t.pool(t.lrn(t.relu(t.conv1(x.to(d))))) for t, d in zip(self.towers, self.devices)]
        h = [t.pool(t.lrn(t.relu(t.conv2(a)))) for t, a in zip(self.towers, h)]
        # conv3 connects across: each device gets the other's maps.
        h = [t0.relu(t0.conv3(torch.cat([h[0], h[1].to(d0)], 1))),
             t1.relu(t1.conv3(torch.cat([h[0].to(d1), h[1]], 1)))]
        h = [t.relu(t.conv4(a)) for t, a in zip(self.towers, h)]
        h = [t.pool(t.relu5(t.conv5(a))) for t, a in zip(self.towers, h)]
        return torch.cat([h[0], h[1].to(d0)], 1)  # for Grad-CAM/embeddings on the first device

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        t0, t1 = self.towers
        d0, d1 = self.devices
        half = x.shape[1] // 2
        f = [torch.flatten(t.avgpool(a), 1) for t, a in
             zip(self.towers, (x[:, :half].to(d0), x[:, half:].to(d1)))]
        full0, full1 = torch.cat([f[0], f[1].to(d0)], 1), torch.cat([f[0].to(d1), f[1]], 1)
        g = [t0.relu(t0.fc6(self.dropout(full0))), t1.relu(t1.fc6(self.dropout(full1)))]
        full0, full1 = torch.cat([g[0], g[1].to(d0)], 1), torch.cat([g[0].to(d1), g[1]], 1)
        g = [t0.relu(t0.fc7(self.dropout(full0))), t1.relu(t1.fc7(self.dropout(full1)))]
        z = torch.cat([g[0], g[1].to(d0)], 1)
        return z if pre_logits else self.fc8(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def load_grouped_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load the weights of a one-device :class:`AlexNet` (grouped convolutions)."""
        conv_keys = [k[: -len(".weight")] for k, v in sd.items() if k.startswith("features.") and
                     k.endswith(".weight") and v.ndim == 4]
        conv_keys.sort(key=lambda k: int(k.split(".")[1]))
        for i, key in enumerate(conv_keys, start=1):
            w, b = sd[f"{key}.weight"], sd[f"{key}.bias"]
            for h, t in enumerate(self.towers):
                n = w.shape[0] // 2
                conv = getattr(t, f"conv{i}")
                conv.weight.copy_(w[h * n:(h + 1) * n])
                conv.bias.copy_(b[h * n:(h + 1) * n])
        for name, key in (("fc6", "classifier.1"), ("fc7", "classifier.4")):
            w, b = sd[f"{key}.weight"], sd[f"{key}.bias"]
            n = w.shape[0] // 2
            for h, t in enumerate(self.towers):
                getattr(t, name).weight.copy_(w[h * n:(h + 1) * n])
                getattr(t, name).bias.copy_(b[h * n:(h + 1) * n])
        self.fc8.weight.copy_(sd["classifier.6.weight"])
        self.fc8.bias.copy_(sd["classifier.6.bias"])


@register_model
def alexnet(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, *,
            devices: Sequence[str] | None = None, lrn: str | None = "inter", **kwargs) -> nn.Module:
    """The paper's AlexNet: two towers as grouped convolutions, or on two devices.

    Args:
        devices: ``None`` for one device (grouped convs); ``("cuda:0", "cuda:1")``
            (or ``("cpu", "cpu")``) to place each tower on its own device.
        lrn: ``"inter"`` (across channels, the paper's), ``"intra"`` (within a
            channel) or ``None``.
    """
    if devices is not None:
        return AlexNetSplit(num_classes, in_channels, input_size, devices=devices, lrn=lrn, **kwargs)
    return AlexNet(num_classes, in_channels, input_size, widths=_PAPER, lrn=lrn, **kwargs)


@register_model
def alexnet_onetower(num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, **kwargs) -> AlexNet:
    """torchvision's single-tower AlexNet (64-192-384-256-256, no LRN)."""
    return AlexNet(num_classes, in_channels, input_size, widths=_ONETOWER, lrn=None, **kwargs)
