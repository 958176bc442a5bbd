"""Data parallelism across processes started by torchrun: who this process is, and the collectives medcls uses.

medcls does not launch processes itself. ``torchrun`` (``torch.distributed.run``)
starts one process per device, on one machine or many, and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each one's
environment. :func:`init_world` reads them and joins the process group with
the backend this process's device needs: NCCL between CUDA devices, gloo on
CPUs. Without them (a plain ``medcls train``) there is one process and nothing
here does anything.

Every collective is called by every rank the same number of times in the same
order; the helpers keep that easy to see at their call sites. Items are
sharded in contiguous, disjoint blocks (:func:`shard`), so gathering the blocks
in rank order gives back every item exactly once and in its place, unlike
``DistributedSampler``'s padding, which repeats items to even the shards out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from medcls.errors import MedclsError

__all__ = ["World", "SINGLE", "DEFAULT_TIMEOUT_S", "launched", "init_world", "shutdown", "shard", "all_sum",
           "any_true", "gather_rows", "broadcast_tensors", "barrier"]

# A lost peer (a crashed or pre-empted machine) makes every collective wait this long before it fails;
# torch's own default (10 min for NCCL, 30 for gloo) is kept for the longest step medcls has, a rank-0
# checkpoint of AlexNet while the others wait.
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place among those training together."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" | "gloo" once a process group is joined

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0

    def comm_device(self) -> torch.device:
        """Where tensors for collectives live: NCCL moves CUDA tensors only."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


SINGLE = World()


def launched() -> bool:
    """Whether torchrun (or a scheduler setting its variables) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise MedclsError(f"WORLD_SIZE is set but {name} is not: start several processes with torchrun "
                          "(`torchrun --nproc-per-node N -m medcls train ...`), which sets both") from None


def init_world(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S,
               devices_per_process: int = 1) -> tuple[World, list[torch.device] | None]:
    """Join the process group torchrun set up; return this process's world and its devices.

    Returns ``(SINGLE, None)`` outside torchrun: the caller picks the device as
    usual. Under torchrun each process takes ``devices_per_process`` CUDA
    devices from ``LOCAL_RANK`` on (NCCL), or the CPU (gloo) where there is no
    CUDA or ``device`` is ``cpu``.
    """
    if not launched():
        return SINGLE, None
    import torch.distributed as dist

    size, rank, local = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    if device not in ("auto", "cpu", "cuda"):
        raise MedclsError(f"--device {device} cannot be used with several processes: each one takes its own "
                          "(CUDA devices by LOCAL_RANK, else the CPU); use --device auto, cuda or cpu")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise MedclsError("--device cuda asked for, but no CUDA device is available")
    if use_cuda:
        n = torch.cuda.device_count()
        first = local * devices_per_process
        if first + devices_per_process > n:
            raise MedclsError(f"process {local} on this machine needs cuda:{first}"
                              + (f" to cuda:{first + devices_per_process - 1}" if devices_per_process > 1 else "")
                              + f", but the machine has {n} CUDA device(s): start at most "
                              f"{n // devices_per_process} processes per machine (--nproc-per-node)")
        devices = [torch.device("cuda", first + i) for i in range(devices_per_process)]
        torch.cuda.set_device(devices[0])
        backend = "nccl"
    else:
        devices = [torch.device("cpu")] * devices_per_process
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                    **_attempt_store(rank, size, timeout_s),
                                    **({"device_id": devices[0]} if backend == "nccl" else {}))
        except (RuntimeError, ValueError, TimeoutError) as exc:  # DistNetworkError, DistStoreError are RuntimeErrors
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise MedclsError(f"process {rank} of {size} could not join the others at {where} ({backend}): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return World(rank, size, local, backend), devices


def _attempt_store(rank: int, size: int, timeout_s: float) -> dict:
    """Under torchrun after a restart (``--max-restarts``): a store of this attempt's own.

    torchrun's agent keeps one store for every attempt, so the workers of a
    restart would read the addresses their killed predecessors published and
    fail to connect to them (gloo's "connectFullMesh ... Connection refused";
    pytorch/pytorch#167288 for NCCL). The keys of each attempt get their own prefix.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if not attempt or attempt == "0" or "MASTER_ADDR" not in os.environ:
        return {}
    import torch.distributed as dist

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=rank == 0 and not agent, timeout=timedelta(seconds=timeout_s))
    return {"store": dist.PrefixStore(f"medcls/attempt-{attempt}/", store), "rank": rank, "world_size": size}


def shutdown() -> None:
    """Leave the process group (at the end of a command; harmless when none was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, world: World) -> slice:
    """This rank's contiguous block of ``n`` items; the blocks are disjoint, cover all ``n`` and differ by <= 1."""
    return slice(n * world.rank // world.size, n * (world.rank + 1) // world.size)


def all_sum(values, world: World) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    vals = [float(v) for v in values]
    if not world.active:
        return vals
    import torch.distributed as dist

    t = torch.tensor(vals, dtype=torch.float64, device=world.comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def any_true(flag: bool, world: World) -> bool:
    """Whether any rank says so (a stop request on one rank stops them all at the same step)."""
    return all_sum([1.0 if flag else 0.0], world)[0] > 0 if world.active else bool(flag)


def gather_rows(part: np.ndarray, world: World) -> np.ndarray:
    """Every rank's block of rows, concatenated in rank order (the inverse of :func:`shard`)."""
    if not world.active:
        return part
    import torch.distributed as dist

    dev = world.comm_device()
    lengths = [int(v) for v in all_sum([len(part) if r == world.rank else 0 for r in range(world.size)], world)]
    width = part.shape[1:]
    padded = torch.zeros((max(lengths), *width), dtype=torch.float32, device=dev)
    padded[:len(part)] = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32)).to(dev)
    out = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(out, padded)
    return np.concatenate([o[:k].cpu().numpy() for o, k in zip(out, lengths)])


def broadcast_tensors(tensors, world: World) -> None:
    """Rank 0's values of ``tensors`` (in place) on every rank, e.g. a model's batch-norm statistics."""
    if not world.active:
        return
    import torch.distributed as dist

    for t in tensors:
        if t.device.type == world.comm_device().type:
            dist.broadcast(t, src=0)
        else:  # a tensor off the collective's device (gloo on CPU, NCCL on CUDA) goes through a copy
            c = t.to(world.comm_device())
            dist.broadcast(c, src=0)
            t.copy_(c)


def barrier(world: World) -> None:
    """Wait until every rank is here (after rank 0 wrote what the others read)."""
    if world.active:
        import torch.distributed as dist

        if world.backend == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
