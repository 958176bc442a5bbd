"""Datasets: MedMNIST, class folders, CSV manifests; stratified, patient-grouped splits; model items."""

from medcls.data.dataset import (ImageDataset, load_dataset, load_folder, load_manifest, load_npz_dataset,
                                 require_two_classes, run_preparation)
from medcls.data.items import Items, merge_items, subset_items, to_items, volume_to_items
from medcls.data.registry import MEDMNIST, MEDMNIST_SIZES
from medcls.data.splits import make_splits

__all__ = ["ImageDataset", "load_dataset", "load_folder", "load_manifest", "load_npz_dataset",
           "MEDMNIST", "MEDMNIST_SIZES", "make_splits", "Items", "to_items", "volume_to_items", "merge_items",
           "subset_items", "run_preparation", "require_two_classes"]
