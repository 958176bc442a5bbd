"""Parameter and FLOP counts (FLOPs from ``torch.utils.flop_counter``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_params", "count_flops", "model_stats"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, in_channels: int, size: int) -> int:
    """FLOPs of one forward pass of one image in eval mode (a multiply-add counts as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        x = torch.zeros(1, in_channels, *[size] * getattr(model, "spatial_dims", 2), device=dev)
        with FlopCounterMode(display=False) as fc:
            model(x)
        return int(fc.get_total_flops())
    finally:
        model.train(was_training)


def model_stats(name: str, num_classes: int, in_channels: int, size: int) -> dict:
    """``name, params, flops, macs`` for a registered model at one input shape.

    ``params`` excludes auxiliary heads (they are dropped at inference);
    ``params_train`` includes them. ``macs`` = flops / 2, the unit torchvision's
    ``GFLOPS`` column uses.
    """
    from medcls.models._registry import create_model

    # On the meta device: shapes only, no memory or init cost (VGG-19 at 224 px
    # would otherwise allocate and initialise 143 M parameters just to count them).
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels, input_size=size)
    total = count_params(model)
    aux = sum(count_params(m) for n, m in model.named_children() if n.startswith("aux"))
    flops = count_flops(model, in_channels, size)
    return {"name": name, "params": total - aux, "params_train": total, "flops": flops, "macs": flops // 2,
            "input": [in_channels, *[size] * getattr(model, "spatial_dims", 2)], "classes": num_classes}
