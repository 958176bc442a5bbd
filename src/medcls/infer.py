"""What running a trained network needs, shared by training and trained runs alike.

The device, the per-channel normalisation a run saves, uint8 batches moved to
the device, batched prediction (with optional flip test-time augmentation) and
the aggregation of item probabilities (slices, frames) into one per sample.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from torch import nn

from medcls.distributed import SINGLE, World, gather_rows, shard
from medcls.errors import MedclsError

__all__ = ["TTA_MODES", "select_device", "set_threads", "reuse_host_memory", "Normaliser", "to_device_batch",
           "autocast", "predict_items", "aggregate", "channels_last", "eval_batch_size"]

TTA_MODES = ("none", "flip")  # test-time augmentation: none, or the mean with the mirror image


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def select_device(spec: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else Apple MPS, else CPU; anything else is checked against this machine."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:  # not a device string at all
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise MedclsError(f"--device must be auto, cpu, cuda, cuda:N or mps, not {spec!r}")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise MedclsError(f"--device {spec} asked for, but no CUDA device is available")
        if dev.index is not None and dev.index >= n:
            raise MedclsError(f"--device {spec} asked for, but this machine has {n} CUDA device(s), "
                              f"cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps" and not _mps_available():
        raise MedclsError(f"--device {spec} asked for, but Apple MPS is not available here")
    return dev


def set_threads() -> None:
    """One intra-op thread per core this process may use; inter-op parallelism buys nothing for one model.

    ``OMP_NUM_THREADS``, where the user set it, is the number (as PyTorch itself reads
    it): several jobs sharing a machine each take their part. Under torchrun, which
    sets it to 1 for every process on its own, the processes share the cores instead.
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    asked = os.environ.get("OMP_NUM_THREADS", "")
    if local == 1 and asked.isdigit() and int(asked) > 0:
        torch.set_num_threads(int(asked))
        return
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n // max(1, local)))  # torchrun's processes on one machine share its cores


# glibc's mallopt parameters and their defaults (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_DEFAULT, _MMAP_MAX_DEFAULT = 128 * 1024, 65536
_reuse_depth = 0


def _glibc():
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def reuse_host_memory(device: torch.device):
    """While training on the CPU: keep freed host memory for the next step instead of handing it back.

    glibc serves every block over 128 KiB with a fresh ``mmap`` and unmaps it on
    free, so each activation and gradient of a step (tens of MB at 64 px) is
    page-faulted in anew, zero-filled by the kernel, at every step. With mmap off
    and a high trim threshold the heap keeps those pages, as jemalloc / tcmalloc
    would (Intel's advice for PyTorch on CPUs). GoogLeNet's training step at
    64 px is 1.14x faster with it on 2 cores (``bench/cpu_ablation.py``). On
    leaving, glibc's defaults come back and the kept memory is returned to the
    system. Elsewhere (GPU, macOS, musl) a no-op.
    """
    global _reuse_depth
    libc = _glibc() if device.type == "cpu" and _reuse_depth == 0 else None  # the outermost one sets and restores
    _reuse_depth += 1
    if libc is not None:
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(_M_MMAP_MAX, 0)
    try:
        yield
    finally:
        _reuse_depth -= 1
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_DEFAULT)
            libc.malloc_trim(0)


class Normaliser:
    """uint8 batch -> float, scaled to [0, 1], then (x - mean) / std per channel."""

    def __init__(self, mean, std):
        self.mean = [float(m) for m in mean]
        self.std = [float(max(s, 1e-3)) for s in std]

    @classmethod
    def fit(cls, x: np.ndarray) -> "Normaliser":
        xf = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float32) / 255.0
        return cls(xf.mean(axis=(0, 2)), xf.std(axis=(0, 2)))

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x01.ndim - 2)  # images (N, C, H, W) and volumes (N, C, D, H, W)
        m = torch.tensor(self.mean, device=x01.device, dtype=x01.dtype).view(view)
        s = torch.tensor(self.std, device=x01.device, dtype=x01.dtype).view(view)
        return (x01 - m) / s


def _channels_last_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def channels_last(model: nn.Module) -> nn.Module:
    """``model``'s 4-D weights channels-last and its 5-D ones channels-last-3d (in place; returns it).

    ``Module.to(memory_format=...)`` takes one format for every weight, and an
    ACS network holds 2-D (4-D) kernels that act on volumes beside 3-D ones.
    """
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.ndim in (4, 5):
                t.data = t.data.contiguous(memory_format=_channels_last_format(t.ndim))
    return model


def to_device_batch(x: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Items ``idx`` of uint8 ``(N, C, H, W)`` (or ``(N, C, D, H, W)``) as a float batch in [0, 1] on
    ``device``, channels-last.

    On CUDA the copy goes through pinned memory and does not block the host.
    """
    t = torch.from_numpy(x[idx])
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t.float().div_(255.0).contiguous(memory_format=_channels_last_format(t.ndim))


def resize_items(x: np.ndarray, size: int, chunk: int = 512) -> np.ndarray:
    """uint8 items ``(N, C, H, W)`` (or volumes ``(N, C, D, H, W)``) at ``size`` on every spatial axis.

    Bilinear (trilinear for volumes) without corner alignment, rounded back to
    uint8, ``chunk`` items at a time so the float copy stays small. Training
    with ``--input-size`` resizes its items with this, and a run resizes what it
    predicts the same way, so the two never differ.
    """
    dims = x.ndim - 2
    if all(int(d) == size for d in x.shape[2:]):
        return x.astype(np.uint8, copy=False)
    out = np.empty(x.shape[:2] + (size,) * dims, np.uint8)
    mode = "trilinear" if dims == 3 else "bilinear"
    for i in range(0, len(x), chunk):
        t = torch.from_numpy(np.ascontiguousarray(x[i:i + chunk], dtype=np.float32))
        t = torch.nn.functional.interpolate(t, size=(size,) * dims, mode=mode, align_corners=False)
        out[i:i + chunk] = t.clamp_(0, 255).round_().to(torch.uint8).numpy()
    return out


# a prediction batch of volumes holds at most this many voxels (47 volumes of 28^3, 4 of 64^3), which
# bounds its activations. On 2 CPU cores larger batches buy no speed: at 28^3 batch 8 was faster than 47
# for all four VGG-11-BN / AlexNet forms (VGG-11-BN-ACS 62 vs 49 volumes/s), and at 64^3 batch 4 was the
# VGG forms' best (bench/results/volume_speed.json); a GPU has not measured it yet
EVAL_BATCH_VOXELS = 1 << 20


def eval_batch_size(x: np.ndarray, batch_size: int = 256) -> int:
    """``batch_size`` items at a time, fewer for volumes so that a batch's activations stay bounded."""
    if x.ndim == 5:
        return int(max(1, min(batch_size, EVAL_BATCH_VOXELS // max(1, int(np.prod(x.shape[2:]))))))
    return batch_size


def autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA (bf16 where the GPU has it, else fp16); full precision elsewhere."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def predict_items(model: nn.Module, x: np.ndarray, norm: Normaliser, device: torch.device, task: str,
                  batch_size: int = 256, amp: bool = True, tta: str = "none", world: World = SINGLE) -> np.ndarray:
    """Probabilities for uint8 items ``(N, C, H, W)`` or volumes: softmax, or sigmoid for multi-label.

    ``tta="flip"`` averages the probabilities of each item and its left-right mirror image.
    With several processes (``world``) each predicts its own block of the items
    and every rank gets all of them back, each item exactly once, in order.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    if world.active:
        part = predict_items(model, x[shard(len(x), world)], norm, device, task, batch_size, amp, tta)
        if len(part) == 0:  # an empty block has no class axis; the others tell its width
            part = np.zeros((0, _out_width(model, x, norm, device, task, amp)), np.float32)
        return gather_rows(part, world)
    model.eval()
    out = []
    batch_size = eval_batch_size(x, batch_size)

    def probs(xb: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            logits = model(xb).float()
        return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, 1)

    for i in range(0, len(x), batch_size):
        xb = norm(to_device_batch(x, np.arange(i, min(i + batch_size, len(x))), device))
        p = probs(xb)
        if tta == "flip":
            p = (p + probs(xb.flip(-1))) / 2
        out.append(p.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _out_width(model: nn.Module, x: np.ndarray, norm: Normaliser, device: torch.device, task: str, amp: bool) -> int:
    return int(predict_items(model, x[:1], norm, device, task, 1, amp).shape[1]) if len(x) else 1


def aggregate(probs: np.ndarray, sample: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean probability over the items of each sample (slices of a volume); labels per sample."""
    uniq, inv = np.unique(sample, return_inverse=True)
    if len(uniq) == len(sample):
        return probs, y
    agg = np.zeros((len(uniq), probs.shape[1]))
    np.add.at(agg, inv, probs)
    agg /= np.bincount(inv)[:, None]
    first = np.zeros(len(uniq), dtype=int)
    first[inv[::-1]] = np.arange(len(sample))[::-1]
    return agg, y[first]
