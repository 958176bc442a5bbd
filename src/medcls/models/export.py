"""ONNX export, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medcls._atomic import atomic_path

__all__ = ["export_onnx"]


def export_onnx(model: nn.Module, path: str | Path, in_channels: int, size: int, opset: int = 17) -> Path:
    """Export ``model`` (eval mode, main logits only) with a dynamic batch axis.

    Uses the TorchScript-based exporter: it handles every medcls model and is
    several times faster than the dynamo exporter for these graphs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = torch.zeros(1, in_channels, *[size] * getattr(model, "spatial_dims", 2), device=dev)
    try:
        with atomic_path(path) as tmp:
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        model.train(was_training)
    return path
