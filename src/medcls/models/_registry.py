"""Models built by name: ``@register_model`` + ``create_model(name, **kwargs)``."""

from __future__ import annotations

from typing import Callable

from medcls.errors import ModelError

__all__ = ["register_model", "create_model", "list_models", "model_entrypoint"]

_MODELS: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register a builder under its function name (the CLI and configs use that name)."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return list(_MODELS)


def model_entrypoint(name: str) -> Callable:
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; choose from {', '.join(_MODELS)}")
    return _MODELS[name]


def create_model(name: str, *, num_classes: int = 2, in_channels: int = 1, input_size: int = 224, **kwargs):
    """Build a registered model.

    Args:
        name: e.g. ``alexnet``, ``alexnet_onetower``, ``vgg16_bn``, ``googlenet``, ``inception_v2``.
        num_classes: output logits.
        in_channels: 1 (X-ray/CT/MRI), 3 (colour, CT windows, 2.5-D), or any other count.
        input_size: expected input height/width (28-512); small inputs adapt the stem.
    """
    if not 28 <= int(input_size) <= 1024:
        raise ModelError(f"input_size must be between 28 and 1024, got {input_size}")
    if num_classes < 1 or in_channels < 1:
        raise ModelError(f"num_classes and in_channels must be positive (got {num_classes}, {in_channels})")
    return model_entrypoint(name)(num_classes=num_classes, in_channels=in_channels, input_size=int(input_size), **kwargs)
