"""Batched augmentation on tensors (one affine grid per batch, on the training device)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medcls.data.registry import MEDMNIST
from medcls.modalities import mirror_safe

__all__ = ["Augment", "Share", "AUGMENT_PRESETS", "default_hflip", "mixup_pairs"]

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

    Works on a float batch ``(N, C, H, W)`` or of volumes ``(N, C, D, H, W)`` in [0, 1]; all random draws come from
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
            x = self._affine(x, n, dev, rand, u)
        if p["jitter"]:
            view = (n,) + (1,) * (x.ndim - 1)
            c = u(1 - p["jitter"], 1 + p["jitter"]).view(view).to(x.dtype)
            b = (u(-p["jitter"], p["jitter"]) * 0.5).view(view).to(x.dtype)
            mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
            x = ((x - mean) * c + mean + b).clamp(0, 1)
        if p["cutout"]:
            x = self._cutout(x, n, dev, rand)
        return x

    def _affine(self, x: torch.Tensor, n: int, dev, rand, u) -> torch.Tensor:
        """One rotation, scale, shift (and mirror) per item, as one grid sample of the batch.

        Volumes ``(N, C, D, H, W)`` turn by a small angle about each of the three
        axes (the composed rotation), scale by one factor on every axis and
        shift along each; the mirror is left-right (the W axis) in both cases.
        """
        p = self.p
        if x.ndim == 4:  # the draws in the order runs have always made them (a resume repeats them)
            ang = u(-p["rot"], p["rot"]) * math.pi / 180
            sc = 1.0 / u(1 - p["scale"], 1 + p["scale"])
            flip = torch.ones(n, device=dev)
            if self.hflip:
                flip = torch.where(rand().to(dev) < 0.5, -1.0, 1.0)
            cos, sin = torch.cos(ang) * sc, torch.sin(ang) * sc
            theta = torch.stack([torch.stack([cos * flip, -sin, u(-p["shift"], p["shift"]) * 2], 1),
                                 torch.stack([sin * flip, cos, u(-p["shift"], p["shift"]) * 2], 1)], 1)
        else:
            sc = 1.0 / u(1 - p["scale"], 1 + p["scale"])
            rot = torch.eye(3, device=dev).expand(n, 3, 3)
            for i, j in ((0, 1), (0, 2), (1, 2)):  # about the depth, height and width axes in turn
                ang = u(-p["rot"], p["rot"]) * math.pi / 180
                r = torch.eye(3, device=dev).repeat(n, 1, 1)
                r[:, i, i], r[:, j, j] = torch.cos(ang), torch.cos(ang)
                r[:, i, j], r[:, j, i] = -torch.sin(ang), torch.sin(ang)
                rot = r @ rot
            lin = rot * sc.view(n, 1, 1)
            if self.hflip:  # grid coordinates are (x, y, z) = (W, H, D): mirror the first
                flip = torch.where(rand().to(dev) < 0.5, -1.0, 1.0)
                lin = lin * torch.stack([flip, torch.ones_like(flip), torch.ones_like(flip)], 1).view(n, 1, 3)
            shift = torch.stack([u(-p["shift"], p["shift"]) * 2 for _ in range(3)], 1)
            theta = torch.cat([lin, shift.view(n, 3, 1)], 2)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _cutout(self, x: torch.Tensor, n: int, dev, rand) -> torch.Tensor:
        """A square (a cube for volumes) of mid-grey at a random place in each item."""
        dims = x.shape[2:]
        mask = torch.ones((n, *([1] * len(dims))), dtype=torch.bool, device=dev)
        for a, size in enumerate(dims):
            half = max(1, int(size * self.p["cutout"])) // 2
            centre = (rand() * size).long().to(dev)
            shape = [1] * (len(dims) + 1)
            shape[a + 1] = size
            pos = torch.arange(size, device=dev).view(shape)
            mask = mask & ((pos - centre.view([n] + [1] * len(dims))).abs() <= half)
        return x.masked_fill(mask.unsqueeze(1), 0.5)


def mixup_pairs(alpha: float, gen: torch.Generator, share: Share) -> tuple[float, torch.Tensor]:
    """Mixup's draws for a batch (Zhang et al., "mixup: Beyond empirical risk minimization", ICLR 2018).

    Returns the weight ``lam`` ~ Beta(alpha, alpha), one per batch as in the
    paper, and a permutation of this process's block of the batch: item ``i``
    is mixed as ``lam * x[i] + (1 - lam) * x[perm[i]]`` and its loss is
    ``lam * loss(y[i]) + (1 - lam) * loss(y[perm[i]])``. Under data parallel
    each process mixes within its own block (as timm's ``Mixup`` does); the
    draws are made for the whole batch, so every rank's generator stays in step.
    Beta draws come from numpy, seeded from ``gen``, so a resumed run repeats them.
    """
    keys = torch.rand(share.of, generator=gen)[share.part]
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return lam, torch.argsort(keys)
