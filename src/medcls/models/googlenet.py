"""GoogLeNet / Inception v1 (Szegedy et al., CVPR 2015) and a batch-norm Inception v2.

===============  =============================================================
name             what
===============  =============================================================
``googlenet``    the paper: Table 1 widths, 5 x 5 branches, LRN in the stem,
                 ReLU after every conv, global average pooling, dropout 0.4,
                 one linear layer; two auxiliary classifiers after 4a and 4d
``inception_v2`` batch norm after every conv (Ioffe & Szegedy 2015) and the
                 5 x 5 branch factorised into two 3 x 3 convs; no LRN;
                 Table 1 widths kept
===============  =============================================================

Auxiliary classifiers (paper, sec. 5): 5 x 5 / 3 average pooling (adaptive to
4 x 4, identical at 14 x 14), a 1 x 1 conv with 128 filters, FC 1024, dropout
0.7, linear. In training the model returns :class:`AuxOutputs` and the loss is
main + 0.3 x (aux1 + aux2) (:func:`medcls.models.model_loss`); in eval only the
main logits exist. ``aux_logits=False`` removes them.

Small inputs: >= 160 px keeps the paper's stem (7 x 7 / 2 conv, two 3 x 3 / 2
max-pools); 64-159 px drops the first max-pool; below 64 px conv1 becomes
3 x 3 / 1 and the first max-pool is dropped (28 px: inception 3 at 14 x 14,
4 at 7 x 7, 5 at 4 x 4).

LRN settings are those of the BVLC Caffe GoogLeNet (size 5, alpha 1e-4 / 5
in the paper's sum form, beta 0.75, k 1). Initialisation: Glorot uniform.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from medcls.models._base import CONVS, NORMS, AuxOutputs, ClassifierModel, LocalResponseNorm
from medcls.models._registry import register_model

__all__ = ["GoogLeNet", "Inception", "TABLE1", "googlenet", "inception_v2"]

# Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
TABLE1: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _conv(cin: int, cout: int, k: int, bn: bool, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    pad = k // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout, eps=1e-3))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1; 1x1->3x3; 1x1->5x5 (or 3x3->3x3); pool->1x1."""

    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int, bn: bool = False,
                 factorise_5x5: bool = False):
        super().__init__()
        self.out_channels = c1 + c3 + c5 + pp
        self.branch1 = _conv(cin, c1, 1, bn)
        self.branch2 = nn.Sequential(_conv(cin, r3, 1, bn), _conv(r3, c3, 3, bn))
        if factorise_5x5:
            self.branch3 = nn.Sequential(_conv(cin, r5, 1, bn), _conv(r5, c5, 3, bn), _conv(c5, c5, 3, bn))
        else:
            self.branch3 = nn.Sequential(_conv(cin, r5, 1, bn), _conv(r5, c5, 5, bn))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), _conv(cin, pp, 1, bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = (self.branch1, self.branch2[0], self.branch3[0])  # the three 1 x 1 convolutions of x
        if _fusable(heads):
            # One convolution with the three kernels stacked on the output axis, then each
            # part through its own batch norm and ReLU: the same function as three
            # convolutions (each output channel sees only its own kernel), in one larger
            # matrix product instead of three thin ones (the 5 x 5 reduce has 16 to 48
            # outputs). The parameters stay where they are, so state dicts do not change.
            w = torch.cat([h[0].weight for h in heads])
            b = None if heads[0][0].bias is None else torch.cat([h[0].bias for h in heads])
            b1, r2, r3 = F.conv2d(x, w, b).split([h[0].out_channels for h in heads], 1)
            b1, r2, r3 = _after_first(self.branch1, b1), _after_first(heads[1], r2), _after_first(heads[2], r3)
            return torch.cat([b1, _after_first(self.branch2, r2), _after_first(self.branch3, r3), self.branch4(x)], 1)
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def _after_first(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``seq`` less its first module, applied to ``x`` (``seq[1:]`` would build a new Sequential per call)."""
    for module in itertools.islice(seq, 1, None):
        x = module(x)
    return x


def _fusable(heads: tuple[nn.Sequential, ...]) -> bool:
    """The branches' 1 x 1 convolutions are plain 2-D ones with no hook anyone would miss.

    A volume form (ACS / 3-D convolutions) calls each branch as it is, and so does a
    model with a hook on a branch (an explanation of one branch's output).
    """
    for h in heads:
        conv = h[0]
        if type(conv) is not nn.Conv2d or conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            return False
        for m in (h, conv):
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
                return False
    return True


class InceptionAux(nn.Module):
    def __init__(self, cin: int, num_classes: int, bn: bool):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = _conv(cin, 128, 1, bn)
        self.fc1 = nn.Linear(128 * 16, 1024)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)  # N x 2048
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNet(ClassifierModel):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, *,
                 batch_norm: bool = False, aux_logits: bool = True, dropout: float = 0.4):
        super().__init__()
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        bn, fact = batch_norm, batch_norm
        if input_size >= 64:
            self.conv1 = _conv(in_channels, 64, 7, bn, stride=2, padding=3)  # N x 64 x 112 x 112 at 224
        else:
            self.conv1 = _conv(in_channels, 64, 3, bn, stride=1, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True) if input_size >= 160 else nn.Identity()
        lrn = (lambda: LocalResponseNorm(5, alpha=1e-4 / 5, beta=0.75, k=1.0)) if not bn else nn.Identity
        self.lrn1 = lrn()
        self.conv2 = _conv(64, 64, 1, bn)
        self.conv3 = _conv(64, 192, 3, bn)
        self.lrn2 = lrn()
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)  # N x 192 x 28 x 28
        cin = 192
        blocks = {}
        for name, w in TABLE1.items():
            blocks[name] = Inception(cin, *w, bn=bn, factorise_5x5=fact)
            cin = blocks[name].out_channels
        self.inception3a, self.inception3b = blocks["3a"], blocks["3b"]  # N x 480 x 28 x 28
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)  # N x 480 x 14 x 14
        self.inception4a, self.inception4b, self.inception4c = blocks["4a"], blocks["4b"], blocks["4c"]
        self.inception4d, self.inception4e = blocks["4d"], blocks["4e"]  # N x 832 x 14 x 14
        self.maxpool4 = nn.MaxPool2d(3, 2, ceil_mode=True)  # N x 832 x 7 x 7
        self.inception5a, self.inception5b = blocks["5a"], blocks["5b"]  # N x 1024 x 7 x 7
        self.aux_logits = aux_logits
        if aux_logits:
            self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes, bn)  # 512 in
            self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes, bn)  # 528 in
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.gradcam_layer = "inception5b"
        self.init_weights()

    has_volume_form = True

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (*CONVS, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, NORMS):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def volume_linears(self) -> list[tuple[nn.Module, str, int]]:
        return [(a, "fc1", 4) for a in (self.aux1, self.aux2)] if self.aux_logits else []

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def _set_classifier(self, layer: nn.Linear) -> None:
        self.fc = layer

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.aux_logits:
            bn = isinstance(self.aux1.conv[1], NORMS)
            self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes, bn)
            self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes, bn)
            if self.volume_mode:  # the new heads take the volume maps too
                from medcls.models.volume import volume_head

                self.aux1, self.aux2 = (volume_head(a, self.volume_mode, "fc1", 4) for a in (self.aux1, self.aux2))

    def _features(self, x: torch.Tensor):
        x = self.lrn1(self.maxpool1(self.conv1(x)))
        x = self.maxpool2(self.lrn2(self.conv3(self.conv2(x))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        a1 = x
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        a2 = x
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        return x, a1, a2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor):
        feats, a1, a2 = self._features(x)
        logits = self.forward_head(feats)
        if self.training and self.aux_logits:
            return AuxOutputs(logits, (self.aux1(a1), self.aux2(a2)))
        return logits


@register_model
def googlenet(num_classes=1000, in_channels=3, input_size=224, **kw) -> GoogLeNet:
    """GoogLeNet (Inception v1) as published, with two auxiliary classifiers."""
    return GoogLeNet(num_classes, in_channels, input_size, batch_norm=False, **kw)


@register_model
def inception_v2(num_classes=1000, in_channels=3, input_size=224, **kw) -> GoogLeNet:
    """Inception with batch norm after every conv and the 5x5 branch factorised into two 3x3."""
    return GoogLeNet(num_classes, in_channels, input_size, batch_norm=True, **kw)
