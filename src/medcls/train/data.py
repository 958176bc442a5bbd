"""From a dataset to what training needs: items per split, the task, and the preparation files get."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcls.data import ImageDataset, Items, load_dataset, require_two_classes, run_preparation, subset_items, to_items
from medcls.errors import DataError, MedclsError
from medcls.infer import resize_items
from medcls.modalities import WHOLE_VOLUME_MODES, Preparation

__all__ = ["TrainingData", "prepare_data"]


@dataclass
class TrainingData:
    """A dataset ready to train on."""

    ds: ImageDataset
    train: Items
    val: Items
    preparation: Preparation  # what ``predict`` applies to a file to give what training saw
    task: str  # binary | multiclass | multilabel | ordinal (trained and scored as multi-class)
    volume_mode: str  # how volumes became items: slices | 2.5d | acs | 3d (one item per volume)

    @property
    def num_classes(self) -> int:
        return len(self.ds.class_names)


def prepare_data(cfg) -> TrainingData:
    """Load ``cfg.data`` and turn it into train/val items; settle size, channels and the preparation.

    Image files (folders, manifests) are read and prepared with the options of
    ``cfg``; MedMNIST / ``.npz`` images come prepared by their authors, so only
    the volume options apply to them. A dataset without a validation split gets
    one carved out of the training split (a tenth of its samples).
    """
    options = cfg.prep_options()
    # a volume file (NIfTI, DICOM series) in a folder dataset gives one item per slice by default
    file_prep = options.preparation(cfg.size or 64, cfg.channels, cfg.volume_mode or "slices", cfg.volume_spacing)
    ds = load_dataset(cfg.data, data_dir=cfg.data_dir, size=cfg.size, prep=file_prep, seed=cfg.seed)
    if cfg.volume_spacing is not None and not ds.from_files:
        raise MedclsError(f"{ds.source}: its volumes are already resampled by their authors, so --volume-spacing "
                          "would change nothing; it applies to volume files (NIfTI, DICOM series)")
    volume_mode = cfg.volume_mode or "2.5d"  # MedMNIST volumes: the slices of a volume in 2.5-D stacks
    channels = cfg.channels or (3 if ds.is_volume and volume_mode == "2.5d" else ds.channels)
    items = {s: to_items(ds, s, volume_mode=volume_mode, volume_slices=cfg.volume_slices, channels=channels,
                         volume_axis=options.axis)
             for s in ("train", "val") if (ds.splits == s).any()}
    if "train" not in items:
        raise DataError(f"{cfg.data}: no training split")
    if volume_mode in WHOLE_VOLUME_MODES and items["train"].x.ndim != 5:
        raise MedclsError(f"{cfg.data}: --volume-mode {volume_mode} trains {cfg.model} on whole volumes, and this "
                          "dataset holds 2-D images; use a 2-D model (without --volume-mode) for them")
    if volume_mode not in WHOLE_VOLUME_MODES and items["train"].x.ndim == 5:
        raise MedclsError(f"{cfg.data}: {cfg.model} is a 2-D network and these items are whole volumes")
    if "val" not in items:  # carve a validation split out of train, by sample
        tr = items["train"]
        rng = np.random.default_rng(cfg.seed)
        samples = np.unique(tr.sample)
        held = np.isin(tr.sample, rng.choice(samples, max(1, len(samples) // 10), replace=False))
        items["val"] = Items(tr.x[held], tr.y[held], tr.sample[held])
        items["train"] = Items(tr.x[~held], tr.y[~held], tr.sample[~held])
    prep = run_preparation(ds, options, file_prep, size=int(items["train"].x.shape[-1]), channels=channels,
                           volume_mode=volume_mode, volume_spacing=cfg.volume_spacing)
    require_two_classes(ds, items["train"].y)
    task = ds.task
    if cfg.semi and task == "multilabel":
        raise MedclsError("semi-supervised training supports binary and multi-class tasks, not multi-label")
    train = subset_items(items["train"], cfg.max_train_samples, cfg.seed)
    val = subset_items(items["val"], cfg.limit_eval_samples, cfg.seed)
    if cfg.input_size is not None:  # the preparation keeps its size: a run resizes what it predicts the same way
        train, val = (Items(resize_items(a.x, cfg.input_size), a.y, a.sample) for a in (train, val))
    return TrainingData(ds, train, val, prep, task, volume_mode)
