import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# pytest -n N: each worker (and the processes its tests start) takes its share of the cores. PyTorch's
# default, a thread per core in every worker, oversubscribes them; the suite then runs about a third slower.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").isdigit():
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
    from medcls.infer import set_threads

    set_threads()  # as medcls train sets them; a plugin may have imported torch before the variable was set

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDMNIST = REPO.parent / "shared" / "data" / "medmnist"


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    """The shared MedMNIST folder; a skip outside CI only, a failure in CI."""
    if not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_MEDMNIST} is missing in CI")
        pytest.skip(f"shared MedMNIST data not found at {SHARED_MEDMNIST}")
    return SHARED_MEDMNIST


@pytest.fixture(scope="session")
def pydicom_data():
    from medcls.io.samples import pydicom_data_dir

    d = pydicom_data_dir()
    if d is None:
        pytest.skip("pydicom-data is not installed (pip install -e '.[dev]')")
    return d


def dcm(name: str) -> Path:
    from medcls.io.samples import sample_dicoms

    found = sample_dicoms([name])
    if not found:
        pytest.skip(f"{name} not installed (pydicom-data is a dev dependency)")
    return found[0]


def run_cli(args, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from medcls.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def medmnist_subset(medmnist_dir: Path, name: str, out: Path, sizes: dict) -> Path:
    """A few real images of each split of a MedMNIST set, half of each class (binary), under the set's name.

    ``sizes``: items per split, e.g. ``{"train": 24, "val": 12, "test": 12}``; ``None`` keeps a split whole.
    """
    import numpy as np

    src = np.load(medmnist_dir / f"{name}.npz")
    path = out / f"{name}.npz"
    keep = {}
    for split, n in sizes.items():
        if n is None:
            keep[f"{split}_images"], keep[f"{split}_labels"] = src[f"{split}_images"], src[f"{split}_labels"]
            continue
        y = src[f"{split}_labels"][:, 0]
        idx = np.sort(np.concatenate([np.flatnonzero(y == 0)[: n // 2], np.flatnonzero(y == 1)[: n // 2]]))
        keep[f"{split}_images"], keep[f"{split}_labels"] = src[f"{split}_images"][idx], src[f"{split}_labels"][idx]
    np.savez(path, **keep)
    return path
