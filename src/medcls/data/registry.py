"""Known MedMNIST sets as data: no disk or network access at import."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MedMNISTInfo", "MEDMNIST", "MEDMNIST_SIZES"]

MEDMNIST_SIZES = (28, 64, 128, 224)  # 3-D sets come in 28 and 64


@dataclass(frozen=True)
class MedMNISTInfo:
    name: str
    python_class: str
    task: str  # binary | multiclass | multilabel | ordinal
    channels: int
    n_classes: int
    dims: int  # 2 or 3
    modality: str  # DICOM-like modality code of the source images
    md5_28: str  # md5 of the 28-px file, as published in medmnist/info.py
    labels: tuple[str, ...] = ()  # empty: names come from the medmnist package
    hflip: bool | None = None  # left-right flips as augmentation; None: as the modality allows


def _i(name, cls, task, ch, n, dims, mod, md5, labels=(), hflip=None):
    return MedMNISTInfo(name, cls, task, ch, n, dims, mod, md5, tuple(labels), hflip)


MEDMNIST: dict[str, MedMNISTInfo] = {
    i.name: i
    for i in [
        _i("pathmnist", "PathMNIST", "multiclass", 3, 9, 2, "SM", "a8b06965200029087d5bd730944a56c1"),
        _i("chestmnist", "ChestMNIST", "multilabel", 1, 14, 2, "DX", "02c8a6516a18b556561a56cbdd36c4a8"),
        _i("dermamnist", "DermaMNIST", "multiclass", 3, 7, 2, "XC", "0744692d530f8e62ec473284d019b0c7"),
        _i("octmnist", "OCTMNIST", "multiclass", 1, 4, 2, "OPT", "c68d92d5b585d8d81f7112f81e2d0842"),
        _i("pneumoniamnist", "PneumoniaMNIST", "binary", 1, 2, 2, "CR", "28209eda62fecd6e6a2d98b1501bb15f",
           ("normal", "pneumonia")),
        _i("retinamnist", "RetinaMNIST", "ordinal", 3, 5, 2, "XC", "bd4c0672f1bba3e3a89f0e4e876791e4"),
        # BUSI frames keep one layout (probe orientation, annotations on one side); the
        # choice is measured on validation (bench/results/sweep_breastmnist_flips_cpu.json)
        _i("breastmnist", "BreastMNIST", "binary", 1, 2, 2, "US", "750601b1f35ba3300ea97c75c52ff8f6",
           ("malignant", "normal, benign"), hflip=False),
        _i("bloodmnist", "BloodMNIST", "multiclass", 3, 8, 2, "SM", "7053d0359d879ad8a5505303e11de1dc"),
        _i("tissuemnist", "TissueMNIST", "multiclass", 1, 8, 2, "SM", "ebe78ee8b05294063de985d821c1c34b"),
        _i("organamnist", "OrganAMNIST", "multiclass", 1, 11, 2, "CT", "68e3f8846a6bd62f0c9bf841c0d9eacc"),
        _i("organcmnist", "OrganCMNIST", "multiclass", 1, 11, 2, "CT", "b9ceb9546e10131b32923c5bbeaea2b1"),
        _i("organsmnist", "OrganSMNIST", "multiclass", 1, 11, 2, "CT", "9ab87b696fb54e2a387ebe992d6ed5f1"),
        _i("organmnist3d", "OrganMNIST3D", "multiclass", 1, 11, 3, "CT", "a0c5a1ff56af4f155c46d46fbb45a2fe"),
        _i("nodulemnist3d", "NoduleMNIST3D", "binary", 1, 2, 3, "CT", "8755a7e9e05a4d9ce80a24c3e7a256f3",
           ("benign", "malignant")),
        _i("adrenalmnist3d", "AdrenalMNIST3D", "binary", 1, 2, 3, "CT", "bbd3c5a5576322bc4cdfea780653b1ce",
           ("normal", "hyperplasia")),
        _i("fracturemnist3d", "FractureMNIST3D", "multiclass", 1, 3, 3, "CT", "6aa7b0143a6b42da40027a9dda61302f",
           ("buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture")),
        _i("vesselmnist3d", "VesselMNIST3D", "binary", 1, 2, 3, "MR", "b41fd4f7e7e2feedddb201585ecafa1b",
           ("vessel", "aneurysm")),
        _i("synapsemnist3d", "SynapseMNIST3D", "binary", 1, 2, 3, "EM", "1235b78a3cd6280881dd7850a78eadb6",
           ("inhibitory synapse", "excitatory synapse")),
    ]
}
