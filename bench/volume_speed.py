"""Volume networks (ACS and 3-D forms): speed, side by side in one run, and the memory of a default batch.

    python bench/volume_speed.py            # 28^3 and 64^3, every family in both forms
    python bench/volume_speed.py --quick    # 28^3, VGG-11-BN only
    python bench/volume_speed.py --families vgg11_bn alexnet --sizes 28 64

- training volumes/s: medcls's ``train_step`` (uint8 volumes in memory, the 3-D
  augmentation on the device, channels-last-3d weights and batches) vs a plain
  PyTorch step on the same model (float volumes, default memory format, no
  augmentation), both at the batch ``medcls train`` chooses for the size;
- inference volumes/s at several batch sizes (what ``EVAL_BATCH_VOXELS`` was chosen from);
- achieved GFLOP/s (the model's FLOP count x volumes/s, training as 3 x forward)
  against this machine's fp32 peak (``bench/speed.py``'s measure);
- peak resident memory of a training process at the default batch (each in a fresh
  process), the evidence for ``VOLUME_BATCH_VOXELS`` on a 24 GB machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

FAMILIES = ("vgg11_bn", "alexnet", "googlenet")


def _batch(size: int) -> int:
    from medcls.train.config import TrainConfig

    return TrainConfig(data="-").batch_for(1188, (size, size, size))  # AdrenalMNIST3D's training split


def _model(name: str, size: int):
    from medcls.models import create_model

    kw = {"init": "kaiming"} if name.startswith("alexnet") else {}
    return create_model(name, num_classes=2, in_channels=1, input_size=size, **kw)


def ours_train(name: str, size: int, batch: int, steps: int) -> float:
    from medcls.infer import Normaliser, channels_last
    from medcls.train.augment import Augment
    from medcls.train.engine import train_step

    torch.manual_seed(0)
    model = channels_last(_model(name, size)).train()
    x = np.random.default_rng(0).integers(0, 256, (batch * 2, 1, size, size, size), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 2, batch * 2)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    crit = torch.nn.CrossEntropyLoss()
    norm, aug, gen, dev = Normaliser([0.5], [0.25]), Augment("light", True), torch.Generator().manual_seed(0), \
        torch.device("cpu")
    idx = np.arange(batch)
    train_step(model, opt, None, torch.amp.GradScaler("cpu", enabled=False), crit, norm, aug, x, y, idx, dev, False,
               gen)
    t = time.perf_counter()
    for i in range(steps):
        train_step(model, opt, None, torch.amp.GradScaler("cpu", enabled=False), crit, norm, aug, x, y,
                   idx + (i % 2) * batch, dev, False, gen)
    return batch * steps / (time.perf_counter() - t)


def plain_train(name: str, size: int, batch: int, steps: int) -> float:
    from medcls.models import model_loss

    torch.manual_seed(0)
    model = _model(name, size).train()
    x = torch.rand(batch * 2, 1, size, size, size)
    y = torch.randint(0, 2, (batch * 2,))
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    crit = torch.nn.CrossEntropyLoss()

    def step(i):
        xb, yb = x[(i % 2) * batch:(i % 2 + 1) * batch], y[(i % 2) * batch:(i % 2 + 1) * batch]
        opt.zero_grad()
        model_loss(model(xb), yb, crit).backward()
        opt.step()

    step(0)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    return batch * steps / (time.perf_counter() - t)


@torch.no_grad()
def inference(name: str, size: int, batches: list[int]) -> dict:
    from medcls.infer import channels_last

    model = channels_last(_model(name, size)).eval()
    out = {}
    for b in batches:
        x = torch.rand(b, 1, size, size, size).contiguous(memory_format=torch.channels_last_3d)
        model(x[:1])
        t = time.perf_counter()
        model(x)
        out[str(b)] = b / (time.perf_counter() - t)
    return out


def _memory_child(name: str, size: int, batch: int) -> None:
    """In a fresh process: two training steps at ``batch``; prints the peak resident set in GB."""
    import resource

    from medcls.infer import set_threads

    set_threads()  # as the parent and medcls train: a thread per core, or OMP_NUM_THREADS where set
    ours_train(name, size, batch, 1)
    print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def memory(name: str, size: int, batch: int) -> float:
    r = subprocess.run([sys.executable, __file__, "--memory-child", name, str(size), str(batch)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_gb"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--sizes", nargs="+", type=int, default=[28, 64])
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_child:
        _memory_child(a.memory_child[0], int(a.memory_child[1]), int(a.memory_child[2]))
        return 0
    from medcls.infer import set_threads
    from medcls.models import model_stats
    from speed import measured_peak

    set_threads()
    peak = measured_peak(torch.device("cpu"))["peak_gflops"]
    sizes = (28,) if a.quick else tuple(a.sizes)
    families = ("vgg11_bn",) if a.quick else tuple(a.families)
    rows = []
    for size in sizes:
        batch = _batch(size)
        for fam in families:
            for mode in ("acs", "3d"):
                name = f"{fam}_{mode}"
                flops = model_stats(name, 2, 1, size)["flops"]
                steps = 2 if a.quick or fam == "googlenet" else 3
                ours = ours_train(name, size, batch, steps)
                plain = plain_train(name, size, batch, steps)
                inf = inference(name, size, [1, 8, 47 if size == 28 else 4, 128 if size == 28 else 16])
                rows.append({"model": name, "size": size, "batch": batch, "train_ours": ours, "train_plain": plain,
                             "ratio": ours / plain, "train_gflops": 3 * flops * ours / 1e9,
                             "train_peak_pct": 100 * 3 * flops * ours / 1e9 / peak, "infer": inf,
                             "flops": flops, "peak_rss_gb": memory(name, size, batch)})
                r = rows[-1]
                print(f"{name:18s} {size:3d}^3 batch {batch:3d}  train {ours:6.2f} vs plain {plain:6.2f} vol/s "
                      f"({r['ratio']:.2f}x, {r['train_peak_pct']:4.1f} % of peak)  infer "
                      + " ".join(f"b{b}:{v:.1f}" for b, v in inf.items())
                      + f"  peak RSS {r['peak_rss_gb']:.1f} GB", flush=True)
    out = write_results("volume_speed_quick" if a.quick else "volume_speed",
                        {"machine": machine(), "peak_gflops": peak, "quick": a.quick, "threads": torch.get_num_threads(),
                         "command": "python bench/volume_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                         "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
