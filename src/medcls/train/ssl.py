"""SimCLR-style self-supervised pretraining (Chen et al. 2020), small and CPU-friendly.

Two strong augmentations of each image, an encoder from the model registry, a
two-layer projection head and the NT-Xent loss; the encoder's penultimate
features are then the embedding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcls.infer import Normaliser, to_device_batch
from medcls.models import create_model
from medcls.train.augment import Augment
from medcls.train.optim import make_optimizer

__all__ = ["nt_xent", "pretrain_simclr", "embed"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy over 2N views; positives are the pairs."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def pretrain_simclr(x: np.ndarray, *, model: str = "alexnet_onetower", epochs: int = 5, batch_size: int = 128,
                    lr: float = 1e-3, seed: int = 0, device: torch.device | None = None, log=print):
    """Pretrain an encoder on uint8 images ``(N, C, H, W)``; return (encoder, normaliser)."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    c, s = int(x.shape[1]), int(x.shape[-1])
    kwargs = {"fc_width": 512} if model.startswith("alexnet") or model.startswith("vgg") else {}
    enc = create_model(model, num_classes=2, in_channels=c, input_size=s, **kwargs).to(device)
    with torch.no_grad():
        dim = enc.forward_head(enc.forward_features(torch.zeros(2, c, s, s, device=device)), pre_logits=True).shape[1]
    head = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, 64)).to(device)
    params = list(enc.parameters()) + list(head.parameters())
    opt = make_optimizer("adamw", [{"params": params, "weight_decay": 1e-4}], lr)
    norm = Normaliser.fit(x)
    aug = Augment("strong", hflip=True)
    for ep in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1000 + ep)
        order = torch.randperm(len(x), generator=gen).numpy()
        enc.train()
        total = 0.0
        for i in range(0, len(x) - 1, batch_size):
            idx = np.sort(order[i:i + batch_size])
            if len(idx) < 2:
                continue
            xb = to_device_batch(x, idx, device)
            z1 = head(enc.forward_head(enc.forward_features(norm(aug(xb, gen))), pre_logits=True))
            z2 = head(enc.forward_head(enc.forward_features(norm(aug(xb, gen))), pre_logits=True))
            loss = nt_xent(z1, z2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log(f"ssl epoch {ep + 1}/{epochs}  nt-xent {total / len(x):.4f}")
    return enc.eval(), norm


@torch.no_grad()
def embed(enc: nn.Module, norm: Normaliser, x: np.ndarray, device: torch.device | None = None) -> np.ndarray:
    """The encoder's penultimate features of uint8 images ``(N, C, H, W)``."""
    device = device or torch.device("cpu")
    enc.eval()
    out = []
    for i in range(0, len(x), 256):
        xb = norm(to_device_batch(x, np.arange(i, min(i + 256, len(x))), device))
        out.append(enc.forward_head(enc.forward_features(xb), pre_logits=True).float().cpu().numpy())
    return np.concatenate(out)
