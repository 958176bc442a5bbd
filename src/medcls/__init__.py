"""medcls: classify medical images — read, prepare, train, evaluate.

Importing this package touches neither the disk nor the network; heavy
dependencies (torch, pydicom, nibabel) are imported by the modules that need them.
"""

__version__ = "0.1.0"

from medcls.errors import MedclsError, ReadError  # noqa: E402

__all__ = ["MedclsError", "ReadError", "read", "__version__"]


def read(path, **kwargs):
    """Read any supported image file or DICOM series folder: see :func:`medcls.io.read`."""
    from medcls.io import read as _read

    return _read(path, **kwargs)
