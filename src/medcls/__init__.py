"""medcls: classify medical images — read, prepare, train, evaluate.

Importing this package touches neither the disk nor the network; heavy
dependencies (torch, pydicom, nibabel) are imported by the modules that need them.
"""

from medcls._version import __version__
from medcls.errors import MedclsError, ReadError

__all__ = ["MedclsError", "ReadError", "read", "__version__"]


def read(path, **kwargs):
    """Read any supported image file or DICOM series folder: see :func:`medcls.io.read`."""
    from medcls.io import read as _read

    return _read(path, **kwargs)
