import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
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
