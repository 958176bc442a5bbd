"""The interface every medcls model shares, and layers the papers need."""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierModel", "AuxOutputs", "LocalResponseNorm", "model_loss", "AUX_WEIGHT", "CONVS", "NORMS"]

CONVS = (nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)

AUX_WEIGHT = 0.3  # GoogLeNet (Szegedy et al. 2014, sec. 5): auxiliary losses weighted by 0.3


class AuxOutputs(NamedTuple):
    """Training-time outputs of a model with auxiliary classifiers."""

    logits: torch.Tensor
    aux: tuple[torch.Tensor, ...]


def model_loss(output, target: torch.Tensor, criterion) -> torch.Tensor:
    """Loss of a model's output: main loss + 0.3 x each auxiliary loss when present."""
    if isinstance(output, AuxOutputs):
        loss = criterion(output.logits, target)
        for a in output.aux:
            loss = loss + AUX_WEIGHT * criterion(a, target)
        return loss
    return criterion(output, target)


class ClassifierModel(nn.Module, abc.ABC):
    """Uniform interface: training, explanation and fine-tuning never special-case a model.

    Subclasses set ``num_classes``, ``in_channels``, ``input_size`` and
    ``gradcam_layer`` (the dotted name of the module whose forward output, or several names joined by
    commas whose outputs together,
    Grad-CAM should use) and implement ``forward_features`` / ``forward_head``.
    """

    num_classes: int
    in_channels: int
    input_size: int
    gradcam_layer: str
    spatial_dims: int = 2  # 3 for the volume forms (medcls.models.volume)
    volume_mode: str | None = None  # None | acs | 3d
    has_volume_form: bool = False  # medcls.models.volume can convert it

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before pooling and the classifier."""

    @abc.abstractmethod
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling and the classifier (``pre_logits``: stop before the last linear layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier[-1]

    def volume_linears(self) -> list[tuple[nn.Module, str, int]]:
        """``(parent, attribute, p)`` of each linear layer that follows a flattened ``p x p`` map."""
        return []

    def init_weights(self) -> None:
        """The family's initialisation (called again once a volume form has its shapes)."""

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last linear layer (fine-tuning to a new task)."""
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes)
        nn.init.normal_(new.weight, 0, 0.01)
        nn.init.zeros_(new.bias)
        self._set_classifier(new)
        self.num_classes = num_classes

    def _set_classifier(self, layer: nn.Linear) -> None:
        self.classifier[-1] = layer


class LocalResponseNorm(nn.Module):
    """Local response normalisation as written in Krizhevsky et al. (2012), sec. 3.3.

    ``mode="inter"`` (across channels)::

        b[c] = a[c] / (k + alpha * sum_{j=max(0, c-n/2)}^{min(C-1, c+n/2)} a[j]^2) ** beta

    ``mode="intra"`` (within one channel, over an n x n spatial neighbourhood, zero padded)::

        b[c, y, x] = a[c, y, x] / (k + alpha * sum_{|dy|,|dx| <= n/2} a[c, y+dy, x+dx]^2) ** beta

    Note ``alpha`` multiplies the plain sum, as in the paper; PyTorch's and Caffe's
    LRN divide alpha by the window size, so ``torch.nn.LocalResponseNorm(n,
    alpha * n, beta, k)`` equals ``mode="inter"`` here. ``groups`` normalises each
    group of channels alone, as each GPU did in the paper's two-GPU network.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 mode: str = "inter", groups: int = 1, channels: int | None = None):
        super().__init__()
        if mode not in ("inter", "intra"):
            raise ValueError(f"LRN mode must be 'inter' or 'intra', got {mode!r}")
        if k <= 0:
            raise ValueError(f"LRN k must be positive, got {k}")
        if size < 1 or size % 2 == 0:  # an even window has no centre: the paper's n/2 either side needs n odd
            raise ValueError(f"LRN size must be odd (a window of n/2 either side of its centre), got {size}")
        self.size, self.alpha, self.beta, self.k, self.mode, self.groups = size, alpha, beta, k, mode, groups
        if mode == "inter" and groups > 1:
            if channels is None or channels % groups:
                raise ValueError(f"grouped LRN needs channels divisible by groups (got {channels}, {groups})")
            # band[c, j] = 1 when j is within size//2 of c and in the same group: the
            # windowed sum of squares is then a fixed 1x1 convolution (static shapes,
            # so it exports to ONNX, unlike a chunk-and-concatenate).
            idx = torch.arange(channels)
            near = (idx[:, None] - idx[None, :]).abs() <= size // 2
            same = (idx[:, None] // (channels // groups)) == (idx[None, :] // (channels // groups))
            self.register_buffer("band", (near & same).float()[:, :, None, None], persistent=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, mode={self.mode}, groups={self.groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # a volume: across channels as for an image; within one, over an n x n x n block
            if self.mode == "inter":
                return self.forward(x.flatten(3)).view_as(x)
            s = F.avg_pool3d(x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
            return self._scale(x, s * float(self.size ** 3))
        if self.mode == "intra":
            sq = (x * x)
            # avg_pool with count_include_pad gives sum / n^2 over the zero-padded window.
            s = F.avg_pool2d(sq, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
            s = s * float(self.size * self.size)
            return self._scale(x, s)
        band = self._band(x.shape[1], x.dtype, x.device) if self.groups == 1 else self.band.to(x.dtype)
        return self._scale(x, F.conv2d(x * x, band))

    def _scale(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # x / (k + alpha s)^beta, as x * exp(-beta log(.)): the base is >= k > 0, and on
        # 2 CPU cores this trains about twice as fast as pow (forward + backward).
        return x * torch.exp(torch.log(self.k + self.alpha * s) * -self.beta)

    def _band(self, channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``band[c, j] = 1`` for ``|j - c| <= n//2`` (n odd): the channels summed for channel c.

        Across channels the windowed sum of squares is a 1 x 1 convolution with this
        fixed band: static shapes (ONNX export works, unlike F.local_response_norm)
        and a matrix product over channels-last maps. The earlier 3-D average pool
        over a padded (N, 1, C, H, W) copy was GoogLeNet's most expensive layer on CPU.
        """
        key = (channels, dtype, device)
        cached = getattr(self, "_band_cache", None)
        if torch.jit.is_tracing():  # a trace (ONNX export) records how the band is made, the same every time
            cached = None
        if cached is None or cached[0] != key:
            d = torch.arange(channels)[None, :] - torch.arange(channels)[:, None]  # j - c
            band = (d.abs() <= self.size // 2).to(dtype)[:, :, None, None]
            self._band_cache = cached = (key, band.to(device))
        return cached[1]
