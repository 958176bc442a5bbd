"""Speed, measured side by side in one run on this machine.

    python bench/speed.py            # full
    python bench/speed.py --quick    # smoke run (about a minute)

- training images/s (on the CPU the median of 3 alternating rounds of each loop):
  medcls's loop (uint8 arrays in memory, batched augmentation on the device, channels_last; the very ``train_step`` that ``medcls train`` runs)
  vs a plain PyTorch loop (DataLoader over the same arrays, torchvision per-image
  transforms, default settings) on the same architecture — torchvision's own
  model where it is identical (one-tower AlexNet, and VGG-11 at 224 px);
- inference images/s (batch 256) and p50/p95 latency of one image;
- achieved GFLOP/s (the models' own FLOP count x images/s; training counted as
  3 x forward) against this machine's measured fp32 peak (the better of a matmul
  and a 3x3 convolution);
- DICOM reading: files/s through ``medcls.read`` vs ``pydicom.dcmread`` +
  ``pixel_array`` on the real files of pydicom-data;
- HOG features: images/s of ``HOGFeatures`` vs a per-image ``skimage.feature.hog`` loop.
On a machine with CUDA the GPU tables follow (``--gpu`` runs them alone, into
``speed_gpu.json``): both loops at 28/64/224 px on the GPU (ours with AMP, pinned
memory and non-blocking copies) and ours in fp32 vs AMP.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

MODELS = {"alexnet": "alexnet_onetower", "vgg11": "vgg11", "googlenet": "googlenet"}


def _gflops(op, flop: float, device: torch.device, reps: int) -> float:
    """GFLOP/s of ``op()`` (``flop`` operations per call): 3 warm-up calls, then ``reps`` timed."""
    with torch.no_grad():
        for _ in range(3):
            op()
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            op()
        _sync(device)
    return flop * reps / (time.perf_counter() - t) / 1e9


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return _gflops(lambda: a @ b, 2 * n**3, device, reps)


def conv_peak(device: torch.device, reps: int = 10) -> float:
    """GFLOP/s of a 3x3 convolution, 512 -> 512 channels at 14 x 14, batch 32, channels_last.

    The convolution library (oneDNN, cuDNN) can beat the BLAS matmul: on AMD CPUs MKL's
    sgemm reaches about 40 % of what oneDNN's convolutions do, so a matmul-only "peak"
    put well-tuned training above 100 %.
    """
    x = torch.randn(32, 512, 14, 14, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    return _gflops(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * 32 * 512 * 512 * 9 * 14 * 14,
                   device, reps)


def measured_peak(device: torch.device, n: int = 2048) -> dict:
    """This machine's fp32 peak as measured: the better of a square matmul and a dense convolution."""
    mm, conv = matmul_peak(device, n=n), conv_peak(device)
    return {"matmul_peak_gflops": mm, "conv_peak_gflops": conv, "peak_gflops": max(mm, conv)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _data(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    from medcls.data import load_dataset

    try:
        x, y = load_dataset("pneumoniamnist").split("train")
        x, y = x[:n], y[:n]
        if size != 28:
            import torch.nn.functional as F

            x = F.interpolate(torch.from_numpy(x).float(), size=(size, size), mode="bilinear").round().byte().numpy()
    except Exception:
        x, y = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8), rng.integers(0, 2, n)
    return np.ascontiguousarray(x), y.astype(np.int64)


def ours_train(name: str, x, y, batch: int, steps: int, device, amp=True, compile_=False) -> float:
    from medcls.infer import Normaliser, reuse_host_memory
    from medcls.models import create_model
    from medcls.train.augment import Augment
    from medcls.train.engine import train_step
    from medcls.train.optim import make_optimizer

    model = create_model(name, num_classes=2, in_channels=1, input_size=x.shape[-1])
    model = model.to(device).to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)
    opt = make_optimizer("adamw", [{"params": model.parameters()}], 1e-3)  # fused, as medcls train
    crit = torch.nn.CrossEntropyLoss()
    norm, aug = Normaliser.fit(x), Augment("light", False)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    gen = torch.Generator().manual_seed(0)
    use_amp = amp and device.type == "cuda"
    order = np.arange(len(y))
    with reuse_host_memory(device):  # as medcls.train.fit trains (the plain loop runs with glibc's defaults)
        for i in range(steps + 1):
            if i == 1:
                _sync(device)
                t = time.perf_counter()
            idx = order[(i * batch) % len(y):][:batch]
            train_step(model, opt, None, scaler, crit, norm, aug, x, y, idx, device, use_amp, gen)
        _sync(device)
        return steps * batch / (time.perf_counter() - t)


def plain_train(name: str, x, y, batch: int, steps: int, device) -> float:
    """What a user writes from the PyTorch tutorials: DataLoader + per-image torchvision transforms."""
    import torchvision
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    from medcls.models import create_model, model_loss

    size = x.shape[-1]
    if name == "alexnet_onetower" and size >= 64:
        model = torchvision.models.alexnet(num_classes=2)
        model.features[0] = torch.nn.Conv2d(1, 64, 11, 4, 2) if size >= 160 else torch.nn.Conv2d(1, 64, 5, 2, 2)
        src = "torchvision"
    elif name == "vgg11" and size >= 224:
        model = torchvision.models.vgg11(num_classes=2)
        model.features[0] = torch.nn.Conv2d(1, 64, 3, padding=1)
        src = "torchvision"
    else:
        model = create_model(name, num_classes=2, in_channels=1, input_size=size)
        src = "medcls"
    model = model.to(device)
    tf = T.Compose([T.ToTensor(), T.RandomAffine(10, translate=(0.06, 0.06), scale=(0.92, 1.08)),
                    T.Normalize([0.5], [0.25])])

    class DS(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return tf(x[i, 0]), int(y[i])

    dl = DataLoader(DS(), batch_size=batch, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    crit = torch.nn.CrossEntropyLoss()
    it = iter(dl)
    for i in range(steps + 1):
        if i == 1:
            _sync(device)
            t = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(dl)
            xb, yb = next(it)
        xb, yb = xb.to(device), yb.to(device)
        model.train()
        loss = model_loss(model(xb), yb, crit)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t), src


@torch.no_grad()
def inference(name: str, size: int, device, batch: int, reps: int) -> tuple[float, float, float]:
    from medcls.models import create_model

    model = create_model(name, num_classes=2, in_channels=1, input_size=size)
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    xb = torch.randn(batch, 1, size, size, device=device).contiguous(memory_format=torch.channels_last)
    model(xb)
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        model(xb)
    _sync(device)
    ips = reps * batch / (time.perf_counter() - t)
    one = xb[:1]
    lat = []
    for _ in range(max(5, reps * 3)):
        t = time.perf_counter()
        model(one)
        _sync(device)
        lat.append((time.perf_counter() - t) * 1000)
    return ips, float(np.percentile(lat, 50)), float(np.percentile(lat, 95))


def reading(quick: bool) -> dict:
    import pydicom

    from medcls.io import read
    from medcls.io.samples import pydicom_data_dir, sample_dicoms

    files = sorted(pydicom_data_dir().glob("*.dcm")) if pydicom_data_dir() else sample_dicoms()
    ok = []
    warnings.simplefilter("ignore")
    for f in files:  # the files both readers decode
        try:
            read(f)
            pydicom.dcmread(f).pixel_array
            ok.append(f)
        except Exception:
            pass
    if quick:
        ok = ok[:15]
    reps = 1 if quick else 5  # +-10 % between runs of 3 on a 2-core machine

    def plain():
        for f in ok:
            pydicom.dcmread(f).pixel_array

    def ours():
        for f in ok:
            read(f)

    t_plain, t_ours = [], []
    for _ in range(reps):  # interleaved, so drift in machine load hits both
        t = time.perf_counter()
        plain()
        t_plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t)
    p, o = min(t_plain), min(t_ours)
    return {"files": len(ok), "pydicom_files_per_s": len(ok) / p, "medcls_files_per_s": len(ok) / o,
            "overhead_pct": (o / p - 1) * 100}


def hog(quick: bool) -> dict:
    from skimage.feature import hog as sk_hog

    from medcls.features import HOGFeatures

    x, _ = _data(600 if quick else 4708, 28)
    imgs = x[:, 0].astype(np.float32) / 255.0
    t = time.perf_counter()
    ref = np.stack([sk_hog(i, orientations=9, pixels_per_cell=(7, 7), cells_per_block=(2, 2), block_norm="L2-Hys")
                    for i in imgs])
    plain = len(imgs) / (time.perf_counter() - t)
    f = HOGFeatures().fit(x)
    t = time.perf_counter()
    ours = f.transform(x)
    fast = len(imgs) / (time.perf_counter() - t)
    assert np.allclose(ours, ref, atol=1e-6), "HOGFeatures must equal skimage's hog"
    return {"images": len(imgs), "skimage_loop_images_per_s": plain, "medcls_images_per_s": fast, "ratio": fast / plain}


def cnn_table(device, quick: bool, peak: float) -> list[dict]:
    from medcls.models import model_stats

    rows = []
    sizes = (28, 64) if quick else (28, 64, 224)
    for label, name in MODELS.items():
        for size in sizes:
            big = size >= 224
            batch = (8 if big else 16) if quick else (16 if big else 64)
            steps = 1 if (quick or big) and device.type == "cpu" else (3 if device.type == "cpu" else 20)
            if device.type == "cuda":
                batch, steps = (64 if big else 256), (5 if quick else 10)
            x, y = _data(max(batch * (steps + 1), 256), size)
            flops = model_stats(name, 2, 1, size)["flops"]
            # a shared or throttled CPU drifts by 20 % and more within minutes: on the CPU the two loops take
            # turns over several rounds and each gives its median, so a slow minute cannot favour either
            rounds = 3 if device.type == "cpu" and not quick and not big else 1
            ours_r, plain_r = [], []
            for _ in range(rounds):
                ours_r.append(ours_train(name, x, y, batch, steps, device))
                p, src = plain_train(name, x, y, batch, steps, device)
                plain_r.append(p)
            ours, plain = float(np.median(ours_r)), float(np.median(plain_r))
            inf, p50, p95 = inference(name, size, device, 64 if device.type == "cpu" else 512, 2 if quick else 5)
            rows.append({"model": label, "registry_name": name, "size": size, "batch": batch, "steps": steps,
                         "rounds": rounds, "train_images_per_s_rounds": ours_r, "plain_images_per_s_rounds": plain_r,
                         "train_images_per_s": ours, "plain_train_images_per_s": plain, "plain_model": src,
                         "train_speedup": ours / plain, "infer_images_per_s": inf, "latency_p50_ms": p50,
                         "latency_p95_ms": p95, "gflops_per_image": flops / 1e9,
                         "train_gflops_per_s": 3 * flops * ours / 1e9, "infer_gflops_per_s": flops * inf / 1e9,
                         "train_pct_of_peak": 100 * 3 * flops * ours / 1e9 / peak,
                         "infer_pct_of_peak": 100 * flops * inf / 1e9 / peak})
            r = rows[-1]
            print(f"{label:10s} {size:4d}px  train {r['train_images_per_s']:8.1f} img/s vs plain "
                  f"{r['plain_train_images_per_s']:8.1f} ({r['train_speedup']:.2f}x)  infer {inf:8.1f} img/s  "
                  f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  train {r['train_pct_of_peak']:5.1f}% of peak", flush=True)
    return rows


def gpu_table(quick: bool) -> list[dict]:
    """medcls's loop in fp32 and with AMP (bf16 where supported) on CUDA, 64 px, batch 256."""
    dev = torch.device("cuda")
    rows = []
    for label, name in MODELS.items():
        x, y = _data(256 * 21, 64)
        base = ours_train(name, x, y, 256, 5 if quick else 20, dev, amp=False)
        amp = ours_train(name, x, y, 256, 5 if quick else 20, dev, amp=True)
        rows.append({"model": label, "size": 64, "fp32_images_per_s": base, "amp_images_per_s": amp,
                     "amp_speedup": amp / base})
        print(f"{label:10s}   64px  fp32 {base:8.0f} img/s  AMP {amp:8.0f} img/s ({amp / base:.2f}x)", flush=True)
    return rows


def gpu_main(a, name: str | None = None) -> int:
    """The GPU tables alone (``--gpu``): ours (AMP) vs the plain loop, and fp32 vs AMP; writes speed_gpu.json
    (or ``name``.json)."""
    if not torch.cuda.is_available():
        print("--gpu needs CUDA; this machine has none", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    res = {"machine": machine(), "quick": a.quick,
           "command": "python bench/speed.py --gpu" + (" --quick" if a.quick else ""),
           "gpu": {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                   "cnn": cnn_table(dev, a.quick, measured_peak(dev, n=4096)["peak_gflops"]),
                   "amp": gpu_table(a.quick)}}
    out = write_results(name or a.name or ("speed_gpu_quick" if a.quick else "speed_gpu"), res)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default=None)
    ap.add_argument("--gpu", action="store_true", help="only the GPU tables (needs CUDA): writes speed_gpu.json")
    a = ap.parse_args(argv)
    if a.gpu:
        return gpu_main(a)
    from medcls.infer import set_threads

    set_threads()  # as medcls train: a thread per core, or OMP_NUM_THREADS where set
    cpu = torch.device("cpu")
    pk = measured_peak(cpu)
    peak = pk["peak_gflops"]
    print(f"fp32 peak on this CPU: {peak:.1f} GFLOP/s (matmul {pk['matmul_peak_gflops']:.1f}, "
          f"3x3 conv {pk['conv_peak_gflops']:.1f})", flush=True)
    res = {"machine": machine(), "quick": a.quick,
           "command": "python bench/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "cpu": {**pk, "threads": torch.get_num_threads(), "cnn": cnn_table(cpu, a.quick, peak)}}
    res["cpu"]["reading"] = reading(a.quick)
    r = res["cpu"]["reading"]
    print(f"DICOM reading: medcls {r['medcls_files_per_s']:.1f} files/s vs pydicom {r['pydicom_files_per_s']:.1f} "
          f"files/s ({r['overhead_pct']:+.1f}% overhead, {r['files']} files)")
    res["cpu"]["hog"] = hog(a.quick)
    h = res["cpu"]["hog"]
    print(f"HOG: medcls {h['medcls_images_per_s']:.0f} img/s vs skimage loop {h['skimage_loop_images_per_s']:.0f} "
          f"img/s ({h['ratio']:.2f}x)")
    if torch.cuda.is_available():
        print("CUDA is here: the GPU tables follow (also alone with --gpu)", flush=True)
        gpu_main(a, name=f"{a.name}_gpu" if a.name else None)  # not into the CPU results' file
    out = write_results(a.name or ("speed_quick" if a.quick else "speed"), res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
