"""Datasets: MedMNIST, class folders, CSV manifests; stratified, patient-grouped splits."""

from medcls.data.dataset import ImageDataset, load_dataset, load_folder, load_manifest, load_npz_dataset
from medcls.data.registry import MEDMNIST, MEDMNIST_SIZES
from medcls.data.splits import make_splits

__all__ = ["ImageDataset", "load_dataset", "load_folder", "load_manifest", "load_npz_dataset",
           "MEDMNIST", "MEDMNIST_SIZES", "make_splits"]
