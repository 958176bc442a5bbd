"""Find (or download) MedMNIST ``.npz`` files.

Search order: ``--data-dir``, ``$MEDCLS_DATA``, ``../shared/data/medmnist`` (beside
the working directory or this checkout), the ``medmnist`` package's root
(``$MEDMNIST_ROOT`` or ``~/.medmnist``). Only when none has the file is the
``medmnist`` package imported to download it (it writes to disk on import, so it
is never imported otherwise).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medcls.data.registry import MEDMNIST, MEDMNIST_SIZES
from medcls.errors import DataError

__all__ = ["medmnist_filename", "search_dirs", "find_medmnist", "parse_medmnist_name", "md5sum"]


def parse_medmnist_name(spec: str) -> tuple[str, int] | None:
    """``pneumoniamnist`` / ``pneumoniamnist_64`` / ``PneumoniaMNIST`` -> (name, size); None if unknown."""
    s = spec.strip().lower()
    size = 28
    if "_" in s:
        base, _, tail = s.rpartition("_")
        if tail.isdigit():
            s, size = base, int(tail)
    if s not in MEDMNIST:
        return None
    return s, size


def medmnist_filename(name: str, size: int = 28) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    dirs: list[Path] = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("MEDCLS_DATA"):
        dirs.append(Path(os.environ["MEDCLS_DATA"]))
    dirs.append(Path.cwd().parent / "shared" / "data" / "medmnist")
    dirs.append(Path.cwd() / "shared" / "data" / "medmnist")
    here = Path(__file__).resolve()
    for up in here.parents[2:5]:  # src/medcls/data -> checkout -> its parent
        dirs.append(up.parent / "shared" / "data" / "medmnist")
    dirs.append(Path(os.environ.get("MEDMNIST_ROOT", Path.home() / ".medmnist")))
    seen, out = set(), []
    for d in dirs:
        r = d.resolve() if d.exists() else d
        if r not in seen:
            seen.add(r)
            out.append(d)
    return out


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def find_medmnist(name: str, size: int = 28, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Path of the ``.npz`` for a MedMNIST set, downloading it if allowed and needed.

    Raises:
        DataError: unknown set or size, or not found and not downloadable.
    """
    if name not in MEDMNIST:
        raise DataError(f"unknown MedMNIST set {name!r}; known: {', '.join(sorted(MEDMNIST))}")
    sizes = MEDMNIST_SIZES if MEDMNIST[name].dims == 2 else (28, 64)
    if size not in sizes:
        raise DataError(f"{name} comes in sizes {sizes}, not {size}")
    fname = medmnist_filename(name, size)
    dirs = search_dirs(data_dir)
    for d in dirs:
        if (d / fname).is_file():
            return d / fname
    if download:
        target = Path(data_dir) if data_dir else dirs[-1]
        try:
            return _download(name, size, target)
        except Exception as exc:  # network/library errors of any kind: report, don't crash
            raise DataError(
                f"{fname} not found in {', '.join(str(d) for d in dirs)}; download failed "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                f"Put the file in one of those folders or pass --data-dir."
            ) from exc
    raise DataError(f"{fname} not found in {', '.join(str(d) for d in dirs)}; pass --data-dir")


def _download(name: str, size: int, root: Path) -> Path:
    import medmnist  # lazy: creates ~/.medmnist on import

    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, MEDMNIST[name].python_class)
    cls(split="train", download=True, root=str(root), size=size)
    path = root / medmnist_filename(name, size)
    if not path.is_file():
        raise FileNotFoundError(path)
    return path
