"""The 2-D CNNs as volume networks: ACS convolutions and true 3-D (inflated) versions.

===========  ==================================================================
suffix       what every 2-D layer becomes
===========  ==================================================================
``_acs``     ACS convolutions (Yang et al., "Reinventing 2D convolutions for 3D
             images", IEEE JBHI 2021): a conv's output channels are split in
             three, and each part's 2-D k x k kernel is applied as a 3-D kernel
             that is flat along one axis (1 x k x k axial, k x 1 x k coronal,
             k x k x 1 sagittal); the parts are concatenated. The weights keep
             their 2-D shapes, so the parameter count is the 2-D network's
             (less the first FC layer, which sees a 3-D map).
``_3d``      full 3-D kernels k x k x k, as in I3D (Carreira & Zisserman 2017):
             Conv3d / MaxPool3d / BatchNorm3d / AdaptiveAvgPool3d with the 2-D
             definition's kernel sizes, strides and paddings on every axis.
===========  ==================================================================

Either way batch norm, pooling and the adaptive pool before the classifier act
on three axes; the FC layer after a flattened ``p x p`` map sees ``p x p x p``
and grows by ``p``; LRN normalises across channels (or over a k x k x k
neighbourhood in its intra-channel form). Weights are initialised by the
family's own rule applied to the volume shapes (a from-scratch network, not a
2-D one's weights inflated). Inputs are ``(N, C, D, H, W)`` cubes of side
``input_size`` (28 to 1024); the 2-D small-input rules (stems, kept pools)
apply on every axis.

The ACS split is acsconv's: ``C // 3`` channels each, the remainder going to
the axial then the coronal part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medcls.errors import ModelError
from medcls.models._base import LocalResponseNorm

__all__ = ["ACSConv", "acs_split", "to_volume", "volume_head", "VOLUME_MODES", "inflate_linear_inputs",
           "volume_name", "base_name", "register_volume_variants"]

VOLUME_MODES = ("acs", "3d")


def acs_split(channels: int) -> tuple[int, int, int]:
    """(axial, coronal, sagittal) output channels of an ACS convolution."""
    base, rest = divmod(channels, 3)
    return base + (rest >= 1), base + (rest >= 2), base


class ACSConv(nn.Conv2d):
    """A 2-D convolution's weights applied to a volume as axial, coronal and sagittal 3-D kernels.

    ``weight`` is ``(out, in / groups, k, k)`` as in the 2-D layer. Output
    channels ``[0, a)`` use the kernel as ``1 x k x k`` (flat along depth),
    ``[a, a + c)`` as ``k x 1 x k`` and the rest as ``k x k x 1``. Along its flat
    axis a part pads by ``padding - k // 2`` (cropping when that is negative) so
    every part has the output shape of the full ``k x k x k`` convolution with
    the layer's stride and padding: the same as a 3-D kernel that is zero
    outside its central plane. Grouped convolutions (AlexNet's towers) split
    each group's output channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True, device=None, dtype=None):
        if kernel_size % 2 == 0:
            raise ModelError(f"ACS convolution needs an odd kernel (its central plane), got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         device=device, dtype=dtype)
        self.split = acs_split(out_channels // groups)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> "ACSConv":
        k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        if isinstance(p, str) or len({k[0], k[1]}) + len({s[0], s[1]}) + len({p[0], p[1]}) + len({d[0], d[1]}) > 4:
            raise ModelError(f"ACS conversion needs square kernels, strides, paddings and dilations, got {conv}")
        return cls(conv.in_channels, conv.out_channels, k[0], s[0], p[0], d[0], conv.groups, conv.bias is not None,
                   device=conv.weight.device, dtype=conv.weight.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", acs_split={self.split}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ModelError(f"an ACS convolution takes (N, C, D, H, W) volumes, got shape {tuple(x.shape)}")
        if self.kernel_size[0] == 1:  # all three views of a 1 x 1 kernel are the same 1 x 1 x 1 kernel
            w = self.weight[:, :, None]
            return F.conv3d(x, w, self.bias, self.stride[0], self.padding[0], self.dilation[0], self.groups)
        if self.groups == 1:
            out = self._acs(x, self.weight)
        else:
            cin, cout = self.in_channels // self.groups, self.out_channels // self.groups
            out = torch.cat([self._acs(x[:, g * cin:(g + 1) * cin], self.weight[g * cout:(g + 1) * cout])
                             for g in range(self.groups)], 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1, 1)

    def _acs(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        k, s, p, d = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        flat_pad = p - d * (k // 2)  # the flat axis sees only the central plane of a k-wide window
        parts, start = [], 0
        for axis, n in enumerate(self.split):
            if n == 0:
                continue
            w = weight[start:start + n].unsqueeze(2 + axis)
            start += n
            xi, pad = x, [p, p, p]
            if flat_pad >= 0:
                pad[axis] = flat_pad
            else:
                xi = x.narrow(2 + axis, -flat_pad, x.shape[2 + axis] + 2 * flat_pad)
                pad[axis] = 0
            parts.append(F.conv3d(xi, w, None, s, tuple(pad), d))
        return torch.cat(parts, 1)


def _conv3d(conv: nn.Conv2d) -> nn.Conv3d:
    return nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0],
                     padding=conv.padding[0], dilation=conv.dilation[0], groups=conv.groups,
                     bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)


def _bn3d(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                          track_running_stats=bn.track_running_stats, device=bn.weight.device if bn.affine else None)


def _maxpool3d(m: nn.MaxPool2d) -> nn.MaxPool3d:
    return nn.MaxPool3d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)


def _adaptive3d(m: nn.AdaptiveAvgPool2d) -> nn.AdaptiveAvgPool3d:
    size = m.output_size if isinstance(m.output_size, int) else m.output_size[0]
    return nn.AdaptiveAvgPool3d(size)


def _convert(module: nn.Module, mode: str) -> None:
    for name, child in module.named_children():
        if isinstance(child, ACSConv):
            continue
        if isinstance(child, nn.Conv2d):
            new = ACSConv.from_conv2d(child) if mode == "acs" else _conv3d(child)
            for attr in ("_paper_index",):  # AlexNet's init reads the paper's conv numbering
                if hasattr(child, attr):
                    setattr(new, attr, getattr(child, attr))
            setattr(module, name, new)
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _bn3d(child))
        elif isinstance(child, nn.MaxPool2d):
            setattr(module, name, _maxpool3d(child))
        elif isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(module, name, _adaptive3d(child))
        elif isinstance(child, (nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout2d)):
            raise ModelError(f"no volume form for {type(child).__name__} ({name})")
        elif isinstance(child, LocalResponseNorm):
            continue  # works on volumes as it is
        else:
            _convert(child, mode)


def inflate_linear_inputs(layer: nn.Linear, factor: int) -> nn.Linear:
    """A linear layer after a flattened ``p x p`` map, widened for a ``p x p x p`` one."""
    new = nn.Linear(layer.in_features * factor, layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    for attr in ("_paper_hidden",):
        if hasattr(layer, attr):
            setattr(new, attr, getattr(layer, attr))
    return new


def volume_head(head: nn.Module, mode: str, attr: str, factor: int) -> nn.Module:
    """A 2-D head module in its volume form, its linear layer ``attr`` widened by ``factor`` (fresh weights)."""
    _convert(head, mode)
    setattr(head, attr, inflate_linear_inputs(getattr(head, attr), factor))
    return head


def to_volume(model: nn.Module, mode: str) -> nn.Module:
    """Turn a medcls 2-D model into its ACS (``"acs"``) or 3-D (``"3d"``) form, in place; returns it.

    The model names the linear layers that follow a flattened map
    (``volume_linears``) and re-initialises itself (``init_weights``) once the
    layers have their volume shapes.
    """
    if mode not in VOLUME_MODES:
        raise ModelError(f"volume mode must be acs or 3d, not {mode!r}")
    if not getattr(model, "has_volume_form", False):
        raise ModelError(f"{type(model).__name__} has no volume form (the split AlexNet spans two devices; "
                         "train the one-device alexnet)")
    linears = model.volume_linears()
    _convert(model, mode)
    for parent, attr, factor in linears:
        old = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
        new = inflate_linear_inputs(old, factor)
        if attr.isdigit():
            parent[int(attr)] = new
        else:
            setattr(parent, attr, new)
    model.spatial_dims = 3
    model.volume_mode = mode
    model.init_weights()
    return model


def volume_name(name: str, mode: str) -> str:
    """The registry name of a 2-D model's volume form: ``vgg11_bn`` + ``3d`` -> ``vgg11_bn_3d``."""
    return f"{name}_{mode}"


def base_name(name: str) -> tuple[str, str | None]:
    """``(2-D name, volume mode)`` of a registry name (mode None for a 2-D model)."""
    for mode in VOLUME_MODES:
        if name.endswith(f"_{mode}"):
            return name[: -len(mode) - 1], mode
    return name, None


def register_volume_variants(names) -> None:
    """Register ``NAME_acs`` and ``NAME_3d`` for each 2-D model name."""
    from medcls.models._registry import model_entrypoint, register_model

    def variant(base: str, mode: str):
        build2d = model_entrypoint(base)

        def build(num_classes: int = 2, in_channels: int = 1, input_size: int = 28, **kwargs) -> nn.Module:
            if kwargs.get("devices") is not None:
                raise ModelError(f"{base}_{mode}: a volume network runs on one device (no devices=)")
            kwargs.pop("devices", None)
            return to_volume(build2d(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                                     **kwargs), mode)

        build.__name__ = volume_name(base, mode)
        kind = "ACS convolutions" if mode == "acs" else "3-D (inflated) kernels"
        build.__doc__ = f"{base} for volumes, with {kind} (medcls.models.volume)."
        return build

    for base in names:
        for mode in VOLUME_MODES:
            register_model(variant(base, mode))
