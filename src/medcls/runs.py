"""A trained run folder, whatever made it: a CNN, a classical pipeline or an ensemble.

Each kind answers the same questions — probabilities per sample of a dataset
split, and probabilities for the files a user hands in — so evaluation,
ensembles and prediction never special-case a run. Evaluating a run (on its own
dataset or another with the same classes) is here too: it needs a loaded run.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcls._version import __version__
from medcls.data import load_dataset, to_items
from medcls.distributed import SINGLE, World
from medcls.errors import DataError, MedclsError, ReadError
from medcls.evaluate import write_outputs
from medcls.infer import Normaliser, aggregate, channels_last, eval_batch_size, predict_items, resize_items, \
    select_device, to_device_batch
from medcls.io import check_values, read
from medcls.modalities import Preparation, modality_family, prepare
from medcls.models import base_name, create_model
from medcls.run_folder import RunConfig, RunFolder
from medcls.train.checkpoint import load_weights

__all__ = ["load_run", "CNNRun", "ClassicalRun", "EnsembleRun", "FilePrediction", "PreparedFile", "make_ensemble", "evaluate_run",
           "evaluate_after_training"]


@dataclass
class FilePrediction:
    path: str
    probs: np.ndarray  # aggregated over frames/slices
    item_probs: np.ndarray  # per frame/slice
    series_uid: str | None = None  # which series of a DICOM folder holding several
    warnings: list[str] = field(default_factory=list)  # what the user should know about this answer
    skipped: list[tuple[str, str]] = field(default_factory=list)  # slice files of a series left out, and why


@dataclass
class PreparedFile:
    """A file as read (``array``, ``meta``) and as the run's model takes it (``items``, uint8 ``(N, C, H, W)``)."""

    array: np.ndarray
    meta: object
    items: np.ndarray
    notes: list[str]  # what an answer on this file should be read with
    skipped: list[tuple[str, str]]  # slice files of a series left out, and why


def load_run(root: str | Path, device: str = "auto", world: World = SINGLE):
    """Open a run folder as a :class:`CNNRun`, :class:`EnsembleRun` or :class:`ClassicalRun`.

    ``world``: a CNN run's predictions on a dataset are shared among the
    processes of data parallel training (each predicts its block; all get all).
    """
    folder = RunFolder(root)
    config = folder.read_config()
    run = {"cnn": CNNRun, "ensemble": EnsembleRun, "classical": ClassicalRun}[config.kind](folder, config, device)
    if isinstance(run, CNNRun):
        run.world = world
    return run


def read_prepared(path, preparation: Preparation, series_uid: str | None = None, *, allow_gaps: bool = False,
                  allow_nonfinite: bool = False) -> PreparedFile:
    """A file read, checked and prepared by ``preparation`` (see :meth:`_Run.read_prepared`).

    A function of its arguments alone, so that worker processes can run it.
    """
    arr, meta = read(path, series_uid=series_uid, allow_gaps=allow_gaps)
    arr = check_values(arr, meta, allow_nonfinite=allow_nonfinite)
    notes = list(meta.extra.get("warnings", [])) + list(meta.extra.get("gaps", [])) + _unfamiliar(meta, preparation)
    return PreparedFile(arr, meta, _to_uint8(prepare(arr, meta, preparation)), notes,
                        list(meta.extra.get("skipped", [])))


def _unfamiliar(meta, preparation: Preparation) -> list[str]:
    """How a file differs from what the run was trained on (modality, colour)."""
    out = []
    trained = preparation.modality if preparation.modality != "auto" else None
    own = modality_family(meta.modality)
    if trained and own != "other" and own != trained:
        out.append(f"a {meta.modality} image, prepared as {trained} like the run's training data; the run has "
                   f"not seen {meta.modality} images")
    colour = meta.channels == 3
    if colour and preparation.channels == 1:
        out.append("a colour image, made grey for a model trained on grey images")
    return out


def _to_uint8(items: np.ndarray) -> np.ndarray:
    """Prepared items in [0, 1] as the uint8 a dataset holds (what training saw)."""
    return (np.clip(items, 0, 1) * 255.0 + 0.5).astype(np.uint8)


class _Run(abc.ABC):
    folder: RunFolder
    config: RunConfig
    preparation: Preparation

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def task(self) -> str:
        return self.config.data.task

    @property
    def class_names(self) -> list[str]:
        return self.config.data.class_names

    @property
    def val_in_training(self) -> bool:
        """The validation split was trained on (a refit run, or an ensemble with one), so it is no test."""
        return self.config.refit is not None

    @property
    def threshold(self) -> float | None:
        """A binary run's decision threshold on the positive class, when an operating point was chosen."""
        op = self.config.operating_point
        ok = op and "threshold" in op and self.task != "multilabel" and len(self.class_names) == 2
        return float(op["threshold"]) if ok else None

    @property
    def label_thresholds(self) -> list[float]:
        """A multi-label run's threshold per label: chosen on validation, else 0.5."""
        per = (self.config.operating_point or {}).get("thresholds") or {}
        return [float(per.get(n, 0.5)) for n in self.class_names]

    def decide(self, probs: np.ndarray):
        """The answer for one sample's probabilities: the class (at the operating point for a binary run with
        one, else the most probable), or the labels at 0.5 for a multi-label run."""
        names = self.class_names
        if self.task == "multilabel":
            return [n for n, p, t in zip(names, probs, self.label_thresholds) if p >= t]
        t = self.threshold
        return names[1 if probs[1] >= t else 0] if t is not None else names[int(np.argmax(probs))]

    def load_dataset(self, data: str | None = None, data_dir: str | None = None):
        """The run's dataset, or ``data``; MedMNIST files are looked up in ``data_dir``, else where training was."""
        t = self.config.train
        spec = data or t["data"]
        size = t.get("size") if data is None else None
        return load_dataset(spec, data_dir=data_dir or t.get("data_dir"), size=size, prep=self.preparation,
                            seed=t.get("seed", 0))

    def read_prepared(self, path, series_uid: str | None = None, *, allow_gaps: bool = False,
                      allow_nonfinite: bool = False) -> PreparedFile:
        """A file (or one series of a DICOM folder) read, checked and prepared as the run's model takes it.

        Garbage (non-finite or constant pixel data) and volumes with missing slices
        are refused (:class:`~medcls.errors.ReadError`) unless allowed. The notes say
        what the answer should be read with: values replaced, slices left out, a
        modality or channel count the run was not trained on.
        """
        return read_prepared(path, self.preparation, series_uid, allow_gaps=allow_gaps,
                             allow_nonfinite=allow_nonfinite)

    def prepare_file(self, path, series_uid: str | None = None, *, allow_gaps: bool = False,
                     allow_nonfinite: bool = False, notes: list[str] | None = None,
                     skipped: list | None = None) -> np.ndarray:
        """:meth:`read_prepared`'s uint8 items; ``notes`` and ``skipped`` (lists) collect what it says."""
        p = self.read_prepared(path, series_uid, allow_gaps=allow_gaps, allow_nonfinite=allow_nonfinite)
        if notes is not None:
            notes += p.notes
        if skipped is not None:
            skipped += p.skipped
        return p.items

    def predict_files(self, paths, *, allow_gaps: bool = False, allow_nonfinite: bool = False) -> list:
        """One :class:`FilePrediction` or :class:`~medcls.errors.ReadError` per path, in order.

        A path may also be a ``(folder, series_uid)`` pair: one series of a DICOM
        folder that holds several.
        """
        out = []
        for p in paths:
            p, uid = p if isinstance(p, tuple) else (p, None)
            notes: list[str] = []
            skipped: list = []
            try:
                items = self.prepare_file(p, uid, allow_gaps=allow_gaps, allow_nonfinite=allow_nonfinite,
                                          notes=notes, skipped=skipped)
            except ReadError as exc:
                out.append(exc)
                continue
            ip = self.predict_items(items)
            out.append(FilePrediction(str(p), ip.mean(0), ip, uid, notes, skipped))
        return out

    @abc.abstractmethod
    def predict_items(self, x: np.ndarray) -> np.ndarray:
        """Probabilities of uint8 items ``(N, C, H, W)``."""

    @abc.abstractmethod
    def sample_probs(self, ds, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and labels per sample of a dataset split (volumes aggregated over their slices)."""


class CNNRun(_Run):
    world: World = SINGLE

    def __init__(self, folder: RunFolder, config: RunConfig, device: str = "auto"):
        self.folder, self.config = folder, config
        self.device = select_device(device)
        self.norm = Normaliser(config.preprocess.mean, config.preprocess.std)
        self.preparation = config.preprocess.preparation
        self._model = None

    @property
    def model(self):
        if self._model is None:
            m = self.config.model
            model = create_model(m.name, num_classes=m.num_outputs, in_channels=m.in_channels,
                                 input_size=m.input_size, **(m.kwargs or {}))
            if not self.folder.best.is_file():
                raise MedclsError(f"{self.root}: no {self.folder.best.name} (training has not finished an epoch)")
            load_weights(model, self.folder.best)
            self._model = channels_last(model.to(self.device)).eval()
        return self._model

    @property
    def whole_volume(self) -> bool:
        """The model is an ACS or 3-D network: its items are whole volumes ``(N, C, D, H, W)``."""
        return base_name(self.config.model.name)[1] is not None

    def _fit_size(self, x: np.ndarray) -> np.ndarray:
        s, c = self.config.model.input_size, self.config.model.in_channels
        dims = 3 if self.whole_volume else 2
        if x.ndim != dims + 2:
            raise MedclsError(f"{self.root}: its model ({self.config.model.name}) takes "
                              f"{'whole volumes (N, C, D, H, W)' if dims == 3 else '2-D items (N, C, H, W)'}, "
                              f"not items of shape {tuple(x.shape)}")
        if x.shape[1] != c:
            x = np.repeat(x[:, :1], c, axis=1) if x.shape[1] == 1 or c > 1 else x.mean(1, keepdims=True)
        return resize_items(x, s)

    def predict_items(self, x: np.ndarray) -> np.ndarray:
        return predict_items(self.model, self._fit_size(x), self.norm, self.device, self.task,
                             tta=self.config.preprocess.tta, world=self.world)

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        """uint8 items as the normalised float batch the model takes, on its device."""
        x = self._fit_size(x)
        return self.norm(to_device_batch(x, np.arange(len(x)), self.device))

    def sample_probs(self, ds, split: str, keep: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As for every run; ``keep`` (a dict) also receives the items and their probabilities."""
        d = self.config.data
        a = to_items(ds, split, volume_mode=d.volume_mode, volume_slices=d.volume_slices,
                     channels=self.config.model.in_channels, volume_axis=d.volume_axis)
        probs = self.predict_items(a.x)
        if keep is not None:
            keep.update(items=a.x, probs=probs, y=a.y)
        return aggregate(probs, a.sample, a.y)

    def write_gallery(self, items: np.ndarray, probs: np.ndarray, y: np.ndarray, per: int = 2) -> bool:
        """``gallery.png``: Grad-CAM over the most confident correct answers and errors of each class.

        Binary and multi-class runs; a multi-label run has no single answer per image to be wrong about.
        """
        from medcls.evaluate.plots import plot_saliency
        from medcls.explain import explain

        if self.task == "multilabel" or len(items) == 0:
            return False
        pred, conf = probs.argmax(1), probs.max(1)
        y = np.asarray(y).reshape(-1).astype(int)
        picked, captions = [], []
        for k, name in enumerate(self.class_names):
            for correct in (True, False):
                idx = np.flatnonzero((pred == k) & ((y == k) == correct))
                for i in idx[np.argsort(-conf[idx], kind="stable")][:per]:
                    picked.append(int(i))
                    truth = "" if correct else f", truly {self.class_names[y[i]]}"
                    captions.append(f"{'right' if correct else 'WRONG'}: {name} {conf[i]:.2f}{truth}")
        if not picked:
            return False
        e = explain(self, items[picked], "gradcam", target=pred[picked][:, None])  # (N, 1): one target each
        panels = []
        for j, i in enumerate(picked):
            img = items[i].astype(np.float32) / 255.0
            heat = e.maps[j]
            if img.ndim == 4:  # a volume (C, D, H, W): its central axial slice, and the map's
                img, heat = img[:, img.shape[1] // 2], heat[heat.shape[0] // 2]
            shown = np.moveaxis(img, 0, -1) if img.shape[0] == 3 else img[img.shape[0] // 2]
            if heat.shape != shown.shape[:2]:
                heat = F.interpolate(torch.from_numpy(heat)[None, None], size=shown.shape[:2], mode="bilinear",
                                     align_corners=False)[0, 0].numpy()
            panels.append((shown, heat, captions[j]))
        plot_saliency(panels, self.folder.gallery, f"Grad-CAM at {e.layer}, test split", columns=4)
        return True

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Penultimate-layer features (for clustering on a trained network)."""
        x = self._fit_size(x)
        out = []
        step = eval_batch_size(x)
        with torch.no_grad():
            for i in range(0, len(x), step):
                xb = self.norm(to_device_batch(x, np.arange(i, min(i + step, len(x))), self.device))
                f = self.model.forward_features(xb)
                out.append(self.model.forward_head(f, pre_logits=True).float().cpu().numpy())
        return np.concatenate(out)


class ClassicalRun(_Run):
    """A saved classical pipeline behaving like any run (evaluate, predict, ensemble)."""

    def __init__(self, folder: RunFolder, config: RunConfig, device: str = "auto"):
        self.folder, self.config = folder, config
        self.preparation = config.preprocess.preparation
        self._pipe = None

    @property
    def pipeline(self):
        if self._pipe is None:
            from medcls.classical import load_pipeline

            self._pipe = load_pipeline(self.folder.pipeline)
        return self._pipe

    def predict_items(self, x: np.ndarray) -> np.ndarray:
        x = x.mean(1, keepdims=True) if x.ndim == 4 and x.shape[1] > 1 else x
        return self.pipeline.predict_proba(x)

    def sample_probs(self, ds, split: str):
        d = self.config.data  # whole volumes for whole-volume features (shape), else slices
        a = to_items(ds, split, volume_mode=d.volume_mode or "slices", volume_slices=d.volume_slices or 4, channels=1,
                     volume_axis=d.volume_axis)
        return aggregate(self.predict_items(a.x), a.sample, a.y)


class EnsembleRun(_Run):
    """Averages the probabilities of member runs (trained on the same classes)."""

    def __init__(self, folder: RunFolder, config: RunConfig, device: str = "auto"):
        self.folder, self.config = folder, config
        self.members = [load_run(Path(p), device) for p in config.members]
        self.preparation = self.members[0].preparation

    @property
    def val_in_training(self) -> bool:
        return any(m.val_in_training for m in self.members)

    def load_dataset(self, data: str | None = None, data_dir: str | None = None):
        return self.members[0].load_dataset(data, data_dir)

    def predict_items(self, x: np.ndarray) -> np.ndarray:
        """The members' mean on items prepared as the first member prepares them."""
        return np.mean([m.predict_items(x) for m in self.members], axis=0)

    def sample_probs(self, ds, split: str):
        outs = [m.sample_probs(ds, split) for m in self.members]
        return np.mean([p for p, _ in outs], axis=0), outs[0][1]

    def predict_files(self, paths, *, allow_gaps: bool = False, allow_nonfinite: bool = False) -> list:
        per = [m.predict_files(paths, allow_gaps=allow_gaps, allow_nonfinite=allow_nonfinite) for m in self.members]
        out = []
        for i in range(len(paths)):
            preds = [p[i] for p in per]
            if not isinstance(preds[0], FilePrediction):
                out.append(preds[0])
                continue
            same_items = len({p.item_probs.shape for p in preds}) == 1
            items = np.mean([p.item_probs for p in preds], 0) if same_items else preds[0].item_probs
            out.append(FilePrediction(preds[0].path, np.mean([p.probs for p in preds], 0), items, preds[0].series_uid,
                                      preds[0].warnings, preds[0].skipped))
        return out


def _same_classes(config: RunConfig, other: RunConfig) -> bool:
    return list(config.data.class_names) == list(other.data.class_names) and config.data.task == other.data.task


def make_ensemble(members: list[str | Path], out: str | Path) -> Path:
    """Create an ensemble run that averages the members' probabilities (evaluate it with :func:`evaluate_run`)."""
    if len(members) < 2:
        raise MedclsError("an ensemble needs at least two runs")
    configs = [RunFolder(m).read_config() for m in members]
    first = configs[0]
    for m, c in zip(members, configs):
        if not _same_classes(c, first):
            raise MedclsError(f"{m}: its classes {c.data.class_names} differ from {first.data.class_names}")
    folder = RunFolder(out)
    folder.root.mkdir(parents=True, exist_ok=True)
    folder.write_config(RunConfig(kind="ensemble", data=first.data, train=first.train,
                                  members=[str(Path(m).resolve()) for m in members],
                                  member_models=[c.model_name for c in configs], version=__version__))
    return folder.root


def evaluate_run(root: str | Path, data: str | None = None, splits=("test",), device: str = "auto",
                 data_dir: str | None = None, world: World = SINGLE, operating_point: str | None = None,
                 prevalence: float | None = None, by: list[str] | None = None, group: str | None = None,
                 rule: str = "mean") -> dict:
    """Evaluate a run on splits of its dataset (or of ``data``); update its outputs.

    ``world``: the processes of data parallel training share the predictions;
    rank 0 writes the outputs (the others return an empty dict).

    ``operating_point`` (binary runs: ``sens=0.95``, ``spec=0.9``, ``youden``):
    the decision threshold is chosen on the run's validation split, saved in
    the run (``predict`` and ``serve`` decide with it) and applied unchanged to
    every split evaluated, with sensitivity, specificity, PPV and NPV and their
    Wilson intervals; ``prevalence`` adds PPV and NPV at that prevalence.

    ``group`` (a manifest column; by default its ``patient_id`` when it has
    one, else for DICOM files their study) adds results per group, the images' probabilities aggregated by
    ``rule`` (mean | max | noisy-or); ``by`` (manifest columns) adds metrics
    per subgroup and the largest AUC gap between subgroups.

    Returns:
        the whole ``metrics.json`` content.
    """
    run = load_run(root, device, world)
    ds = run.load_dataset(data, data_dir)
    if list(ds.class_names) != list(run.class_names) or ds.task != run.task:
        raise DataError(f"{ds.source}: its classes {list(ds.class_names)} ({ds.task}) are not the ones {run.root} "
                        f"was trained on, {list(run.class_names)} ({run.task}), in that order; its metrics would be "
                        "meaningless")
    if run.val_in_training and "val" in splits and ds.name == run.config.data.name:
        if run.config.refit is not None:
            raise DataError(f"{run.root} was trained again on train + val (refit), so its val split is training "
                            f"data; the validation metrics of its first pass are in {run.folder.selection.metrics}")
        raise DataError(f"{run.root} averages a run trained again on train + val (refit), so its val split is "
                        "training data")
    done: dict = {}  # splits already predicted (the validation split an operating point is chosen on)
    if operating_point is not None or prevalence is not None:
        _choose_operating_point(run, ds, operating_point, prevalence, world, done)
    kept: dict = {}
    results = {s: done[s] if s in done else
               run.sample_probs(ds, s, **({"keep": kept} if s == "test" and isinstance(run, CNNRun) else {}))
               for s in splits if (ds.splits == s).any()}
    if not results:
        raise DataError(f"{ds.source}: no {', '.join(splits)} split to evaluate on")
    if not world.is_main:
        return {}
    run.world = SINGLE  # the gallery's maps are rank 0's alone
    if kept:
        run.write_gallery(kept["items"], kept["probs"], kept["y"])
    extras = {s: _clinical_extras(run, ds, s, p, y, by, group, rule) for s, (p, y) in results.items()}
    return write_outputs(run.folder, run.config, results, ds.name, extras)


def _clinical_extras(run, ds, split: str, probs, y, by, group, rule) -> dict:
    """Patient-level and subgroup results of one split (their columns come from the dataset's manifest)."""
    from medcls.evaluate.clinical import group_level, subgroup_metrics

    cols = ds.columns or {}
    wanted = [c for c in (by or [])] + ([group] if group else [])
    missing = [c for c in wanted if c not in cols]
    if missing:
        have = ", ".join(sorted(cols)) or "none besides path, label, split and patient_id"
        raise DataError(f"{ds.source}: no column {missing[0]!r} to group by (its columns: {have})")
    m = ds.splits == split
    if len(probs) != int(m.sum()):  # volumes: one result per volume, and no manifest columns
        return {}
    out: dict = {}
    if group:
        groups, column = cols[group][m], group
    elif ds.patient_ids is not None:
        groups, column = ds.patient_ids[m], "patient_id"
    elif ds.study_keys is not None:  # DICOM files: their study
        groups, column = ds.study_keys[m], "study"
    else:
        groups = None
    if groups is not None:
        groups = np.array([g or f"_image{i}" for i, g in enumerate(groups.astype(str))])  # blank: its own group
        if len(np.unique(groups)) < len(groups):
            out["patient_level"] = group_level(probs, y, groups, rule, run.task, run.class_names, column)
    if by:
        out["subgroups"] = {c: subgroup_metrics(probs, y, cols[c][m], run.task, run.class_names, c) for c in by}
    return out


def _choose_operating_point(run, ds, target: str | None, prevalence: float | None, world: World,
                            done: dict) -> None:
    """Choose (or re-use) the threshold on validation; save it in the run's ``config.json``.

    The validation probabilities it predicts go into ``done["val"]``, for the evaluation to reuse.
    """
    from dataclasses import replace

    from medcls.evaluate.stats import choose_threshold, parse_target

    multilabel = run.task == "multilabel"
    if not multilabel and len(run.class_names) != 2:
        raise DataError(f"{run.root}: an operating point is a threshold on a binary run's positive class (or on "
                        f"each label of a multi-label run); a {run.task} run decides by its most probable class")
    if prevalence is not None and not 0 < prevalence < 1:
        raise DataError(f"--prevalence must be between 0 and 1, got {prevalence}")
    op = dict(run.config.operating_point or {})
    if target is not None:
        parse_target(target)
        if run.val_in_training:
            raise DataError(f"{run.root} was trained on its val split (refit), so no data is left to choose a "
                            "threshold on without bias; train without --refit, or choose it on the first pass")
        if ds.name != run.config.data.name or not (ds.splits == "val").any():
            raise DataError(f"{ds.source}: the threshold is chosen on the run's own validation split")
        probs, y = done["val"] = run.sample_probs(ds, "val")
        op = {"target": target, "chosen_on": "val", "dataset": ds.name}
        if multilabel:  # a label validation cannot rank (no positives or no negatives) keeps 0.5
            op["thresholds"] = {n: (choose_threshold(y[:, j], probs[:, j], target)
                                    if 0 < y[:, j].sum() < len(y) else 0.5) for j, n in enumerate(run.class_names)}
        else:
            op["threshold"] = choose_threshold(y, probs[:, 1], target)
    elif not op:
        raise DataError(f"{run.root} has no operating point yet: give --operating-point with --prevalence")
    if prevalence is not None:
        op["prevalence"] = float(prevalence)
    run.config = replace(run.config, operating_point=op)
    if world.is_main:
        run.folder.write_config(run.config)


def evaluate_after_training(root: str | Path, device: str = "auto", data: str | None = None,
                            data_dir: str | None = None, world: World = SINGLE,
                            operating_point: str | None = None, prevalence: float | None = None) -> dict:
    """Evaluate a run just trained (or made): validation and test, or test alone when val was trained on.

    A refit run's first pass is evaluated too (on its validation and test splits).
    """
    run = load_run(root, device)
    if run.config.refit is not None:
        evaluate_run(run.folder.selection.root, data=data, splits=("val", "test"), device=device, data_dir=data_dir,
                     world=world)
    splits = ("test",) if run.val_in_training else ("val", "test")
    return evaluate_run(root, data=data, splits=splits, device=device, data_dir=data_dir, world=world,
                        operating_point=operating_point, prevalence=prevalence)


def compare_runs(root_a: str | Path, root_b: str | Path, data: str | None = None, split: str = "test",
                 device: str = "auto", data_dir: str | None = None, n_boot: int = 2000) -> dict:
    """Two runs on the same cases: what a paper needs to claim that A is better than B.

    AUC difference with DeLong's test (binary) and a paired bootstrap CI (any
    task), McNemar's test on the argmax decisions (binary, multi-class). The
    cases are ``split`` of A's dataset (or ``data``), per sample.
    """
    from medcls.evaluate.metrics import auc_score
    from medcls.evaluate.stats import delong_test, mcnemar_test, paired_auc_bootstrap

    a, b = load_run(root_a, device), load_run(root_b, device)
    if not _same_classes(a.config, b.config):
        raise DataError(f"{b.root} was trained on {list(b.class_names)} ({b.task}), {a.root} on "
                        f"{list(a.class_names)} ({a.task}): only runs of the same classes can be compared")
    ds = a.load_dataset(data, data_dir)
    for r in (a, b):
        if split == "val" and r.val_in_training and ds.name == r.config.data.name:
            raise DataError(f"{r.root} was trained on its val split (refit); compare on test")
    if not (ds.splits == split).any():
        raise DataError(f"{ds.source}: no {split} split to compare on")
    pa, y = a.sample_probs(ds, split)
    pb, yb = b.sample_probs(ds, split)
    if len(pa) != len(pb) or not np.array_equal(np.asarray(y), np.asarray(yb)):
        raise DataError(f"{a.root} and {b.root} do not see the same cases of {ds.source} {split} (volume "
                        "settings differ?); a paired comparison needs the same cases")
    task = a.task
    out: dict = {"run_a": str(a.root), "run_b": str(b.root), "model_a": a.config.model_name,
                 "model_b": b.config.model_name, "dataset": ds.name, "split": split, "n": int(len(y)), "task": task}
    out["auc_bootstrap"] = paired_auc_bootstrap(y, pa, pb, task, n_boot=n_boot)
    if task != "multilabel" and pa.shape[1] == 2:
        out["delong"] = delong_test(y, pa[:, 1], pb[:, 1])
    if task != "multilabel":
        yy = np.asarray(y).astype(int)
        out["mcnemar"] = mcnemar_test(pa.argmax(1) == yy, pb.argmax(1) == yy)
    out["auc_a"], out["auc_b"] = auc_score(y, pa, task), auc_score(y, pb, task)
    return out
