"""A trained run folder, whatever made it: a CNN, a classical pipeline or an ensemble.

Each kind answers the same two questions — probabilities per sample of a
dataset split, and probabilities for the files a user hands in — so
evaluation, ensembles and prediction never special-case a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcls.errors import MedclsError

__all__ = ["load_run", "CNNRun", "EnsembleRun", "FilePrediction"]


@dataclass
class FilePrediction:
    path: str
    probs: np.ndarray  # aggregated over frames/slices
    item_probs: np.ndarray  # per frame/slice
    series_uid: str | None = None  # which series of a DICOM folder holding several


def _read_meta(root: Path) -> dict:
    cfg = root / "config.json"
    if not cfg.is_file():
        raise MedclsError(f"{root}: not a medcls run (no config.json)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise MedclsError(f"{cfg}: corrupt run configuration ({exc})") from exc


def load_run(root: str | Path, device: str = "auto"):
    """Open a run folder as a :class:`CNNRun`, :class:`EnsembleRun` or classical run."""
    root = Path(root)
    meta = _read_meta(root)
    kind = meta.get("kind", "cnn")
    if kind == "cnn":
        return CNNRun(root, meta, device)
    if kind == "ensemble":
        return EnsembleRun(root, meta, device)
    if kind == "classical":
        from medcls.classical import ClassicalRun

        return ClassicalRun(root, meta)
    raise MedclsError(f"{root}: unknown run kind {kind!r}")


class _Run:
    root: Path
    meta: dict

    @property
    def task(self) -> str:
        return self.meta["data"]["task"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["data"]["class_names"]

    def load_dataset(self, data: str | None = None, data_dir: str | None = None):
        """The run's dataset, or ``data``; MedMNIST files are looked up in ``data_dir``, else where training was."""
        from medcls.data import load_dataset
        from medcls.modalities import Preparation

        t = self.meta["train"]
        prep = Preparation.from_dict(self.meta["preprocess"]["preparation"]) if "preprocess" in self.meta else None
        spec = data or t["data"]
        size = t.get("size") if data is None else None
        return load_dataset(spec, data_dir=data_dir or t.get("data_dir"), size=size, prep=prep, seed=t.get("seed", 0))

    def predict_files(self, paths) -> list:
        """One :class:`FilePrediction` or :class:`~medcls.errors.ReadError` per path, in order.

        A path may also be a ``(folder, series_uid)`` pair: one series of a DICOM
        folder that holds several.
        """
        from medcls.errors import ReadError
        from medcls.io import read
        from medcls.modalities import prepare

        out = []
        for p in paths:
            p, uid = p if isinstance(p, tuple) else (p, None)
            try:
                arr, meta = read(p, series_uid=uid)
                items = prepare(arr, meta, self.preparation)
            except ReadError as exc:
                out.append(exc)
                continue
            q = (np.clip(items, 0, 1) * 255.0 + 0.5).astype(np.uint8)
            ip = self.predict_items(q)
            out.append(FilePrediction(str(p), ip.mean(0), ip, uid))
        return out


class CNNRun(_Run):
    def __init__(self, root: Path, meta: dict, device: str = "auto"):
        from medcls.modalities import Preparation
        from medcls.train.engine import Normaliser, select_device

        self.root, self.meta = root, meta
        self.device = select_device(device)
        self.norm = Normaliser(meta["preprocess"]["mean"], meta["preprocess"]["std"])
        self.preparation = Preparation.from_dict(meta["preprocess"]["preparation"])
        self._model = None

    @property
    def model(self):
        if self._model is None:
            import torch

            from medcls.train.checkpoint import load_weights
            from medcls.train.engine import build_model

            m = self.meta["model"]
            model = build_model(m["name"], m["num_outputs"], m["in_channels"], m["input_size"], m.get("kwargs"))
            weights = self.root / "best.safetensors"
            if not weights.is_file():
                raise MedclsError(f"{self.root}: no best.safetensors (training has not finished an epoch)")
            load_weights(model, weights)
            self._model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        return self._model

    def _fit_size(self, x: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        s = self.meta["model"]["input_size"]
        c = self.meta["model"]["in_channels"]
        if x.shape[1] != c:
            x = np.repeat(x[:, :1], c, axis=1) if x.shape[1] == 1 or c > 1 else x.mean(1, keepdims=True)
        if x.shape[-1] == s and x.shape[-2] == s:
            return x.astype(np.uint8)
        t = F.interpolate(torch.from_numpy(x.astype(np.float32)), size=(s, s), mode="bilinear", align_corners=False)
        return t.clamp(0, 255).round().to(torch.uint8).numpy()

    def predict_items(self, x: np.ndarray) -> np.ndarray:
        from medcls.train.engine import predict_items

        tta = self.meta["preprocess"].get("tta", "none")  # runs written before --tta: none
        return predict_items(self.model, self._fit_size(x), self.norm, self.device, self.task, tta=tta)

    def sample_probs(self, ds, split: str) -> tuple[np.ndarray, np.ndarray]:
        from medcls.train.engine import aggregate
        from medcls.train.tensors import to_arrays

        d = self.meta["data"]
        a = to_arrays(ds, split, volume_mode=d.get("volume_mode", "2.5d"), volume_slices=d.get("volume_slices", 8),
                      channels=self.meta["model"]["in_channels"])
        return aggregate(self.predict_items(a.x), a.sample, a.y)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Penultimate-layer features (for clustering on a trained network)."""
        import torch

        from medcls.train.engine import _to_device_batch

        x = self._fit_size(x)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 256):
                xb = self.norm(_to_device_batch(x, np.arange(i, min(i + 256, len(x))), self.device))
                f = self.model.forward_features(xb)
                out.append(self.model.forward_head(f, pre_logits=True).float().cpu().numpy())
        return np.concatenate(out)


class EnsembleRun(_Run):
    """Averages the probabilities of member runs (trained on the same classes)."""

    def __init__(self, root: Path, meta: dict, device: str = "auto"):
        self.root, self.meta = root, meta
        self.members = [load_run(Path(p), device) for p in meta["members"]]
        self.preparation = self.members[0].preparation

    def load_dataset(self, data: str | None = None, data_dir: str | None = None):
        return self.members[0].load_dataset(data, data_dir)

    def sample_probs(self, ds, split: str):
        outs = [m.sample_probs(ds, split) for m in self.members]
        return np.mean([p for p, _ in outs], axis=0), outs[0][1]

    def predict_files(self, paths) -> list:
        per = [m.predict_files(paths) for m in self.members]
        out = []
        for i in range(len(paths)):
            preds = [p[i] for p in per]
            if not isinstance(preds[0], FilePrediction):
                out.append(preds[0])
                continue
            items = np.mean([p.item_probs for p in preds], 0) if len({p.item_probs.shape for p in preds}) == 1 else preds[0].item_probs
            out.append(FilePrediction(preds[0].path, np.mean([p.probs for p in preds], 0), items, preds[0].series_uid))
        return out


def make_ensemble(members: list[str | Path], out: str | Path, data: str | None = None,
                  data_dir: str | None = None) -> Path:
    """Create an ensemble run that averages the members' probabilities, and evaluate it."""
    from medcls import __version__
    from medcls._atomic import write_json
    from medcls.evaluate import evaluate_run

    if len(members) < 2:
        raise MedclsError("an ensemble needs at least two runs")
    metas = [_read_meta(Path(m)) for m in members]
    first = metas[0]["data"]
    for m, meta in zip(members, metas):
        if meta["data"]["class_names"] != first["class_names"] or meta["data"]["task"] != first["task"]:
            raise MedclsError(f"{m}: its classes {meta['data']['class_names']} differ from {first['class_names']}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"version": __version__, "kind": "ensemble", "members": [str(Path(m).resolve()) for m in members],
            "data": first, "train": metas[0]["train"],
            "member_models": [m.get("model", {}).get("name") or m.get("classifier") for m in metas]}
    write_json(out / "config.json", meta)
    # a member trained again on train + val (refit) has seen the val split: the ensemble reports test only
    refit = any(m.get("refit") for m in metas)
    evaluate_run(out, data=data, splits=("test",) if refit else ("val", "test"), data_dir=data_dir)
    return out
