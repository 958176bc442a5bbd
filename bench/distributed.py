"""Scaling beyond one process: data parallel training throughput, and `predict --out` over real DICOMs.

    python bench/distributed.py            # CPU: 1 vs 2 processes (gloo); on a GPU machine also NCCL, 1..N GPUs
    python bench/distributed.py --quick    # smoke run

Training: `medcls train` as a user runs it (the default VGG-11-BN at 28 px on
PneumoniaMNIST, global batch 128, 2,048 training images, 3 epochs), in one
process and with `--nproc N`; images/s is the mean of the epochs after the
first (history.csv), so start-up, data loading and evaluation do not count.
Scaling efficiency = throughput_N / (N x throughput_1). The weights of N
processes are those of one (tests/train/test_distributed.py), so this is the
whole cost of the extra processes.

Prediction: `medcls predict RUN FOLDER --out predictions.csv` over a folder of
real DICOM files (pydicom's test files that decode, copied until there are
--files of them) with 0 (the main process reads), 1, 2 and 4 worker processes.
The baseline is the plain loop a user writes: `medcls predict` without --out,
which reads each file in the main process. Files/s over the whole command.

Printed as a table and written to bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, write_results  # noqa: E402

DATA_DIR = HERE.parent.parent / "shared" / "data" / "medmnist"


def _env(**extra) -> dict:
    return {**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", **extra}


def _medcls(args: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "medcls", *map(str, args)], env=env or _env(), capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"medcls {' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def _train_rate(out: Path) -> float:
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    later = [float(r["images_per_s"]) for r in rows[1:]] or [float(rows[0]["images_per_s"])]
    return sum(later) / len(later)


def train_scaling(tmp: Path, sizes: list[int], device: str, samples: int, epochs: int) -> list[dict]:
    rows, base = [], None
    for n in sizes:
        out = tmp / f"train-{device}-{n}"
        args = ["train", "--data", "pneumoniamnist", "--data-dir", DATA_DIR, "--model", "vgg11_bn", "--epochs",
                epochs, "--batch-size", 128, "--max-train-samples", samples, "--device", device, "--out", out,
                "--checkpoint-every", 3600]
        secs = _medcls(args + (["--nproc", n] if n > 1 else []))
        rate = _train_rate(out)
        base = base or rate
        rows.append({"what": "train", "device": device, "backend": ("nccl" if device == "cuda" else "gloo")
                     if n > 1 else "-", "processes": n, "images_per_s": round(rate, 1),
                     "speedup": round(rate / base, 2), "efficiency": round(rate / (n * base), 2),
                     "wall_s": round(secs, 1)})
        print(f"  train {device} x{n}: {rate:.1f} img/s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def _dicom_folder(dest: Path, n: int) -> Path:
    """``n`` real DICOM files that decode, in folders of 100: pydicom's single-frame test files, each copy made a
    series of its own (new Series and SOP Instance UIDs), as an archive of radiographs would be."""
    import pydicom
    from pydicom.uid import generate_uid

    from medcls.errors import ReadError
    from medcls.io import check_values, read

    src = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    good = []
    for f in sorted(src.glob("*.dcm")):
        try:
            arr, meta = read(f)
            check_values(arr, meta)
        except ReadError:
            continue
        if meta.frames > 1 or f.stat().st_size > 2_000_000:
            continue
        ds = pydicom.dcmread(f)
        try:  # a few test files are deliberately malformed and cannot be written back
            ds.save_as(io.BytesIO())
        except Exception:  # noqa: BLE001
            continue
        good.append(ds)
    for i in range(n):
        d = dest / f"batch{i // 100:04d}"
        d.mkdir(parents=True, exist_ok=True)
        ds = good[i % len(good)]
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        if "MediaStorageSOPInstanceUID" in getattr(ds, "file_meta", {}):
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(d / f"{i:06d}.dcm")
    return dest


def predict_scaling(tmp: Path, files: int, workers: list[int]) -> list[dict]:
    run = tmp / "run"
    _medcls(["train", "--data", "pneumoniamnist", "--data-dir", DATA_DIR, "--model", "vgg11_bn", "--epochs", 1,
             "--max-train-samples", 256, "--out", run])
    folder = _dicom_folder(tmp / "dicoms", files)
    rows = []
    secs = _medcls(["predict", run, folder, "--json"])
    base = files / secs
    rows.append({"what": "predict", "how": "medcls predict (no --out: one file at a time, main process)",
                 "workers": 0, "files": files, "files_per_s": round(base, 1), "speedup": 1.0, "wall_s": round(secs, 1)})
    print(f"  predict baseline: {base:.1f} files/s", flush=True)
    for w in workers:
        out = tmp / f"p{w}.csv"
        secs = _medcls(["predict", run, folder, "--out", out, "--workers", w, "--overwrite"])
        rate = files / secs
        rows.append({"what": "predict", "how": f"predict --out, {w} worker process(es)", "workers": w,
                     "files": files, "files_per_s": round(rate, 1), "speedup": round(rate / base, 2),
                     "wall_s": round(secs, 1)})
        print(f"  predict --workers {w}: {rate:.1f} files/s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: small sizes")
    ap.add_argument("--files", type=int, default=2000, help="DICOM files to predict on")
    args = ap.parse_args()
    import torch

    samples, epochs, files = (512, 2, 200) if args.quick else (2048, 3, args.files)
    cores = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="medcls-bench-dist-"))
    try:
        rows = train_scaling(tmp, [1, 2], "cpu", samples, epochs)
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            rows += train_scaling(tmp, sorted({1, 2, n} & set(range(1, n + 1))), "cuda", samples * 4, epochs)
        rows += predict_scaling(tmp, files, sorted({0, 1, 2, min(4, 2 * cores)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'what':8} {'how':58} {'rate':>10} {'x':>6} {'eff.':>5}")
    for r in rows:
        if r["what"] == "train":
            how = f"{r['device']}, {r['processes']} process(es), {r['backend']}"
            print(f"{'train':8} {how:58} {r['images_per_s']:>6} i/s {r['speedup']:>6} {r['efficiency']:>5}")
        else:
            print(f"{'predict':8} {r['how']:58} {r['files_per_s']:>6} f/s {r['speedup']:>6}")
    path = write_results("distributed" + ("_quick" if args.quick else ""),
                         {"machine": machine(), "quick": args.quick, "train_samples": samples, "epochs": epochs,
                          "rows": rows})
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
