"""What each CPU speed-up of GoogLeNet's training step is worth, each measured against its absence in one process.

    python bench/cpu_ablation.py                 # GoogLeNet at 64 px, batch 64
    python bench/cpu_ablation.py --model alexnet_onetower --size 64

A forward + backward step of the model (channels-last, as ``medcls train``) is
timed with each change on and off in turn, ``--reps`` times each, alternating so
that a CPU whose speed drifts cannot favour one side; the table gives the medians:

- ``lrn``: LRN's channel window as a banded 1 x 1 convolution vs the 3-D average
  pool over a padded copy that medcls used before;
- ``fused``: an Inception block's three 1 x 1 reductions as one convolution vs three;
- ``host_memory``: :func:`medcls.infer.reuse_host_memory` (freed blocks stay in
  glibc's heap) vs glibc's defaults (each large block a fresh ``mmap``).
Writes ``bench/results/cpu_ablation.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402


def _old_lrn_forward(self, x):
    """The LRN medcls had before: the window sum as a 3-D average pool over (N, 1, C, H, W)."""
    n = self.size
    sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, n // 2, (n - 1) // 2))
    return self._scale(x, F.avg_pool3d(sq, (n, 1, 1), stride=1).squeeze(1) * float(n))


def ablate(model_name: str, size: int, batch: int, reps: int) -> list[dict]:
    import medcls.models._base as base
    import medcls.models.googlenet as googlenet
    from medcls.infer import reuse_host_memory
    from medcls.models import create_model, model_loss

    cpu = torch.device("cpu")
    model = create_model(model_name, num_classes=2, in_channels=1, input_size=size)
    model = model.to(memory_format=torch.channels_last).train()
    xb = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    yb = torch.randint(0, 2, (batch,))
    crit = torch.nn.CrossEntropyLoss()
    new_lrn, fusable = base.LocalResponseNorm.forward, googlenet._fusable

    def step() -> float:
        t = time.perf_counter()
        model_loss(model(xb), yb, crit).backward()
        return time.perf_counter() - t

    def setting(change: str, on: bool):
        base.LocalResponseNorm.forward = new_lrn if on or change != "lrn" else _old_lrn_forward
        googlenet._fusable = fusable if on or change != "fused" else (lambda heads: False)
        keep = on or change != "host_memory"
        return reuse_host_memory(cpu) if keep else contextlib.nullcontext()

    rows = []
    try:
        for change in ("lrn", "fused", "host_memory"):
            times = {True: [], False: []}
            for _ in range(reps):
                for on in (True, False):
                    with setting(change, on):
                        step()  # warm: the first step after a switch allocates anew
                        times[on].append(step())
            t_on, t_off = statistics.median(times[True]), statistics.median(times[False])
            rows.append({"change": change, "model": model_name, "size": size, "batch": batch, "reps": reps,
                         "with_images_per_s": batch / t_on, "without_images_per_s": batch / t_off,
                         "speedup": t_off / t_on})
            r = rows[-1]
            print(f"{change:12s} {model_name} {size}px  with {r['with_images_per_s']:6.1f} img/s  without "
                  f"{r['without_images_per_s']:6.1f} img/s  ({r['speedup']:.2f}x)", flush=True)
    finally:
        base.LocalResponseNorm.forward, googlenet._fusable = new_lrn, fusable
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="googlenet")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--name", default="cpu_ablation")
    a = ap.parse_args(argv)
    from medcls.infer import set_threads

    set_threads()
    rows = ablate(a.model, a.size, a.batch, a.reps)
    out = write_results(a.name, {"machine": machine(), "command": "python bench/cpu_ablation.py "
                                 + " ".join(argv if argv is not None else sys.argv[1:]), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
