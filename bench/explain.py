"""Are the maps faithful? Deletion AUC and the randomisation test per method and model, and the time per map.

    python bench/explain.py                    # PneumoniaMNIST + BreastMNIST, AlexNet / VGG-11-BN / GoogLeNet
    python bench/explain.py --quick            # smoke run (1 epoch, 8 images)
    python bench/explain.py --runs runs/a runs/b --datasets breastmnist   # maps of runs you trained

Each model is trained here (`medcls train` defaults, `--epochs` if given) unless
`--runs` names trained runs. On the first `--images` test images of the run's
dataset, each method's maps are scored by the deletion curve of Petsiuk et al.
(2018): the map's most salient pixels are removed first (set to the training
mean) in 16 steps and the probability of the predicted class is averaged over
the curve; a faithful map drives it down fast, so its deletion AUC is lower than
a random map's. Two random baselines: scattered pixels (whose deletion makes
noise no training image had, so it is a harsh baseline) and random blobs as coarse
as a late feature map (4 x 4, upsampled), the fair one for Grad-CAM, whose maps
have the resolution of its layer. The model-randomisation test of Adebayo et al. (2018) compares
the trained model's Grad-CAM maps with those of the same network re-initialised
(Spearman rank correlation; low is what a map that explains the weights gives).
Time per map is measured beside a plain forward pass on the same images.
Printed and written to bench/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

METHODS = ("gradcam", "gradcam++", "occlusion", "random", "random_smooth")


def _train(data: str, model: str, work: Path, epochs: int | None, quick: bool, data_dir: str | None) -> Path:
    from medcls.runs import evaluate_after_training
    from medcls.train.config import TrainConfig
    from medcls.train.engine import fit

    kw = dict(epochs=1, max_train_samples=128) if quick else dict(epochs=epochs)
    out = work / f"{data}_{model}"
    evaluate_after_training(fit(TrainConfig(data=data, model=model, out=str(out), device="cpu", data_dir=data_dir,
                                            **kw)))
    return out


def _score(run_path: Path, images: int, data_dir: str | None, seed: int = 0) -> dict:
    import torch

    from medcls.data import to_items
    from medcls.explain import deletion_auc, explain, randomisation_correlation
    from medcls.runs import load_run

    r = load_run(run_path, "cpu")
    ds = r.load_dataset(data_dir=data_dir)
    d = r.config.data
    items = to_items(ds, "test", volume_mode=d.volume_mode, volume_slices=d.volume_slices,
                     channels=r.config.model.in_channels, volume_axis=d.volume_axis).x[:images]
    x = r.inputs(items)
    with torch.no_grad():
        r.model(x[:2])  # warm-up: first calls pay for allocation and kernel selection
        t0 = time.perf_counter()
        target = r.model(x).argmax(1)
        forward_ms = (time.perf_counter() - t0) * 1000 / len(x)
    rng = np.random.default_rng(seed)
    row = {"model": r.config.model_name, "dataset": d.name, "images": len(x), "forward_ms_per_image": forward_ms,
           "test_auc": json.loads(r.folder.metrics.read_text())["test"]["auc"], "methods": {}}
    for method in METHODS:
        if not method.startswith("random"):
            explain(r, items[:2], method)  # warm-up, as for the forward pass
        t0 = time.perf_counter()
        if method == "random":  # scattered pixels: deleting them makes noise the network never saw
            maps = rng.random((len(x), *x.shape[-2:])).astype(np.float32)
        elif method == "random_smooth":  # random blobs as coarse as a late feature map: the fair baseline
            low = torch.from_numpy(rng.random((len(x), 1, 4, 4)).astype(np.float32))
            maps = torch.nn.functional.interpolate(low, size=x.shape[-2:], mode="bilinear",
                                                   align_corners=False)[:, 0].numpy()
        else:
            maps = explain(r, items, method, target=None).maps
        ms = (time.perf_counter() - t0) * 1000 / len(x)
        dele = deletion_auc(r.model, x, maps, target, task=r.task)
        row["methods"][method] = {"deletion_auc": float(dele.mean()), "deletion_auc_sd": float(dele.std()),
                                  "ms_per_map": None if method.startswith("random") else ms}
    row["randomisation_rho"] = randomisation_correlation(r.model, x[:32], "gradcam")
    return row


def _print(rows: list[dict]) -> None:
    print(f"\n{'dataset':16s} {'model':12s} " + " ".join(f"{m:>18s}" for m in METHODS) + "   rho   fwd ms")
    for r in rows:
        cells = " ".join(f"{r['methods'][m]['deletion_auc']:8.3f} ({(r['methods'][m]['ms_per_map'] or 0):6.1f}ms)"
                         for m in METHODS)
        print(f"{r['dataset']:16s} {r['model']:12s} {cells} {r['randomisation_rho']:6.3f} "
              f"{r['forward_ms_per_image']:6.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "breastmnist"])
    ap.add_argument("--models", nargs="+", default=["alexnet", "vgg11_bn", "googlenet"])
    ap.add_argument("--runs", nargs="+", help="trained runs to explain instead of training here")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: medcls train's)")
    ap.add_argument("--images", type=int, default=128, help="test images per run")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default=None)
    a = ap.parse_args(argv)
    from medcls.infer import set_threads

    set_threads()
    images = 8 if a.quick else a.images
    rows = []
    with tempfile.TemporaryDirectory(prefix="medcls-explain-") as tmp:
        runs = [Path(p) for p in a.runs] if a.runs else [
            _train(d, m, Path(tmp), a.epochs, a.quick, a.data_dir) for d in a.datasets for m in a.models]
        for run in runs:
            rows.append(_score(run, images, a.data_dir))
            _print(rows[-1:])
    name = a.name or ("explain_quick" if a.quick else "explain")
    command = "python bench/explain.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = write_results(name, {"machine": machine(), "command": command.strip(), "quick": a.quick,
                               "epochs": a.epochs, "rows": rows})
    _print(rows)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
