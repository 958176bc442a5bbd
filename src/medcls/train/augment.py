"""Batched augmentation on tensors (one affine grid per batch, on the training device)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medcls.data.registry import MEDMNIST
from medcls.modalities import mirror_safe

__all__ = ["Augment", "Share", "AUGMENT_PRESETS", "default_hflip"]

# rotation (deg), translation (fraction), scale range, contrast/brightness jitter
AUGMENT_PRESETS = {
    "none": dict(rot=0.0, shift=0.0, scale=0.0, jitter=0.0, cutout=0.0),
    "light": dict(rot=10.0, shift=0.06, scale=0.08, jitter=0.1, cutout=0.0),
    "strong": dict(rot=20.0, shift=0.12, scale=0.15, jitter=0.3, cutout=0.25),
}


def default_hflip(dataset: str, modality: str) -> bool:
    """Whether left-right flips are a safe augmentation: the dataset's own rule, else its modality's."""
    info = MEDMNIST.get(dataset)
    if info is not None and info.hflip is not None:
        return info.hflip
    return mirror_safe(modality)


@dataclass(frozen=True)
class Share:
    """A process's block ``part`` of a batch of ``of`` items."""

    of: int
    part: slice

    @property
    def size(self) -> int:
        return self.part.stop - self.part.start


class Augment:
    """Small rotations, shifts and scales, optional left-right flips, contrast jitter.

    Works on a float batch ``(N, C, H, W)`` in [0, 1]; all random draws come from
    the given generator, so a run (and its resumption) is reproducible.
    """

    def __init__(self, preset: str = "light", hflip: bool = False):
        self.p = AUGMENT_PRESETS[preset]
        self.hflip = hflip
        self.enabled = preset != "none" or hflip

    def __call__(self, x: torch.Tensor, gen: torch.Generator, share: Share | None = None) -> torch.Tensor:
        """``share``: ``x`` is this process's block of a larger batch (data parallel training).

        The draws are made for the whole batch and this block's are used, so
        every item is augmented as it would be in one process, and every rank's
        generator stays in step with the others'.
        """
        if not self.enabled:
            return x
        n, dev = x.shape[0], x.device
        share = share or Share(n, slice(0, n))

        def rand() -> torch.Tensor:
            return torch.rand(share.of, generator=gen)[share.part]

        def u(lo, hi):
            return (rand() * (hi - lo) + lo).to(dev)

        p = self.p
        if p["rot"] or p["shift"] or p["scale"] or self.hflip:
            ang = u(-p["rot"], p["rot"]) * math.pi / 180
            sc = 1.0 / u(1 - p["scale"], 1 + p["scale"])
            flip = torch.ones(n, device=dev)
            if self.hflip:
                flip = torch.where(rand().to(dev) < 0.5, -1.0, 1.0)
            cos, sin = torch.cos(ang) * sc, torch.sin(ang) * sc
            theta = torch.stack([torch.stack([cos * flip, -sin, u(-p["shift"], p["shift"]) * 2], 1),
                                 torch.stack([sin * flip, cos, u(-p["shift"], p["shift"]) * 2], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if p["jitter"]:
            c = u(1 - p["jitter"], 1 + p["jitter"]).view(n, 1, 1, 1).to(x.dtype)
            b = (u(-p["jitter"], p["jitter"]) * 0.5).view(n, 1, 1, 1).to(x.dtype)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * c + mean + b).clamp(0, 1)
        if p["cutout"]:
            h, w = x.shape[-2:]
            ch, cw = max(1, int(h * p["cutout"])), max(1, int(w * p["cutout"]))
            cy = (rand() * h).long().to(dev)
            cx = (rand() * w).long().to(dev)
            yy = torch.arange(h, device=dev).view(1, h, 1)
            xx = torch.arange(w, device=dev).view(1, 1, w)
            m = ((yy - cy.view(n, 1, 1)).abs() <= ch // 2) & ((xx - cx.view(n, 1, 1)).abs() <= cw // 2)
            x = x.masked_fill(m.unsqueeze(1), 0.5)
        return x
