"""VGG (Simonyan & Zisserman, ICLR 2015), configurations A, B, D, E = VGG-11/13/16/19.

3 x 3 convolutions, stride 1, padding 1; each block closed by a 2 x 2 max-pool,
stride 2; three FC layers (4096, 4096, classes) with dropout 0.5; optional batch
norm after every convolution. Module names follow torchvision, so its state
dicts load as is. Parameters at 3 x 224 x 224 and 1000 classes: VGG-11
132,863,336; VGG-13 133,047,848; VGG-16 138,357,544; VGG-19 143,667,240.

Small inputs: a max-pool is kept only while the map stays at least 2 x 2 after
it (28 px: 28 -> 14 -> 7 -> 3, the last two pools become identities; 64 px keeps
all five, ending at 2 x 2); the pooled map before the FC layers is
min(7, final map) instead of always 7 x 7, so small inputs are not upsampled
into a 25,088-wide FC layer.

Initialisation: Glorot (Xavier) uniform, zero biases — the paper's note that
this trains the deep configurations without pre-training from VGG-11.
"""

from __future__ import annotations

import torch
from torch import nn

from medcls.models._base import CONVS, NORMS, ClassifierModel
from medcls.models._registry import register_model

__all__ = ["VGG", "CFGS", "make_layers", "vgg11", "vgg13", "vgg16", "vgg19",
           "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # VGG-11
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # VGG-13
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # VGG-16
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(cfg: list[int | str], in_channels: int, batch_norm: bool, input_size: int) -> tuple[nn.Sequential, int]:
    """Conv stack for a configuration; returns (layers, final map size)."""
    layers: list[nn.Module] = []
    size = input_size
    for v in cfg:
        if v == "M":
            if size // 2 >= 2:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            else:
                layers.append(nn.Identity())  # keeps torchvision's indices
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU())
        in_channels = int(v)
    return nn.Sequential(*layers), size


class VGG(ClassifierModel):
    def __init__(self, cfg: str, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, *,
                 batch_norm: bool = False, dropout: float = 0.5, fc_width: int = 4096):
        super().__init__()
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.features, final = make_layers(CFGS[cfg], in_channels, batch_norm, input_size)
        self.pool_size = min(7, final)
        self.avgpool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.classifier = nn.Sequential(
            nn.Linear(512 * self.pool_size**2, fc_width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc_width, num_classes),
        )
        last_conv = max(i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d))
        # Grad-CAM looks at the last conv block's activation (after BN/ReLU).
        self.gradcam_layer = f"features.{last_conv + (2 if batch_norm else 1)}"
        self.init_weights()

    has_volume_form = True

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (*CONVS, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, NORMS):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def volume_linears(self) -> list[tuple[nn.Module, str, int]]:
        return [(self.classifier, "0", self.pool_size)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)


def _vgg(cfg: str, bn: bool, num_classes: int, in_channels: int, input_size: int, **kwargs) -> VGG:
    return VGG(cfg, num_classes, in_channels, input_size, batch_norm=bn, **kwargs)


@register_model
def vgg11(num_classes=1000, in_channels=3, input_size=224, **kw) -> VGG:
    """VGG-11 (configuration A)."""
    return _vgg("A", False, num_classes, in_channels, input_size, **kw)


@register_model
def vgg13(num_classes=1000, in_channels=3, input_size=224, **kw) -> VGG:
    """VGG-13 (configuration B)."""
    return _vgg("B", False, num_classes, in_channels, input_size, **kw)


@register_model
def vgg16(num_classes=1000, in_channels=3, input_size=224, **kw) -> VGG:
    """VGG-16 (configuration D)."""
    return _vgg("D", False, num_classes, in_channels, input_size, **kw)


@register_model
def vgg19(num_classes=1000, in_channels=3, input_size=224, **kw) -> VGG:
    """VGG-19 (configuration E)."""
    return _vgg("E", False, num_classes, in_channels, input_size, **kw)


@register_model
def vgg11_bn(num_classes=1000, in_channels=3, input_size=224, **kw) -> VGG:
    """VGG-11 with batch norm."""
    return _vgg("A", True, num_classes, in_channels, input_size, **kw)


@register_model
def vgg13_bn(num_classes=1000, in_channels=3, input_size=224, **kw) -> VGG:
    """VGG-13 with batch norm."""
    return _vgg("B", True, num_classes, in_channels, input_size, **kw)


@register_model
def vgg16_bn(num_classes=1000, in_channels=3, input_size=224, **kw) -> VGG:
    """VGG-16 with batch norm."""
    return _vgg("D", True, num_classes, in_channels, input_size, **kw)


@register_model
def vgg19_bn(num_classes=1000, in_channels=3, input_size=224, **kw) -> VGG:
    """VGG-19 with batch norm."""
    return _vgg("E", True, num_classes, in_channels, input_size, **kw)
