"""Run artefacts written atomically: safetensors weights, tensor-only training state."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from medcls._atomic import atomic_path
from medcls.errors import MedclsError

__all__ = ["save_weights", "weights_snapshot", "load_weights", "save_state", "load_state", "rng_state", "set_rng_state"]


def _atomic(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def weights_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict, unaffected by later training steps."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(model: torch.nn.Module | dict[str, torch.Tensor], path: str | Path,
                 metadata: dict[str, str] | None = None) -> None:
    """Model weights (a module or a :func:`weights_snapshot`) as safetensors (no pickle), atomically."""
    from safetensors.torch import save_file

    if isinstance(model, torch.nn.Module):
        sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    else:
        sd = model
    _atomic(Path(path), lambda tmp: save_file(sd, tmp, metadata=metadata or {}))


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise MedclsError(f"{path}: cannot read weights ({exc})") from exc
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise MedclsError(f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})") from exc


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA RNG states as tensors (``weights_only`` loads them)."""
    st = random.getstate()
    np_st = np.random.get_state()
    out = {
        "python": torch.tensor(list(st[1]), dtype=torch.int64),  # 624 words + position
        "python_gauss": torch.tensor([float("nan") if st[2] is None else st[2]], dtype=torch.float64),
        "numpy": torch.from_numpy(np_st[1].astype(np.int64)),
        "numpy_pos": torch.tensor([np_st[2]], dtype=torch.int64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(s: dict) -> None:
    py = tuple(int(v) for v in s["python"].tolist())
    g = float(s["python_gauss"][0])
    random.setstate((3, py, None if g != g else g))
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), int(s["numpy_pos"][0]), 0, 0.0))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(s["cuda"]))


def save_state(path: str | Path, state: dict) -> None:
    """Optimiser/scheduler/RNG/progress state; only tensors and plain containers."""
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise MedclsError(f"{path}: cannot read training state ({exc})") from exc
