"""Datasets held in memory: MedMNIST by name or ``.npz``, class folders, CSV manifests."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medcls.data.medmnist import find_medmnist, parse_medmnist_name
from medcls.data.registry import MEDMNIST
from medcls.data.splits import make_splits
from medcls.errors import DataError, MedclsError, ReadError
from medcls.modalities import Preparation, PrepOptions, modality_family

__all__ = ["ImageDataset", "load_dataset", "load_npz_dataset", "load_folder", "load_manifest", "FileEntry",
           "run_preparation", "require_two_classes"]

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class ImageDataset:
    """Images, labels and splits in memory.

    ``images`` is uint8 ``(N, C, H, W)`` for 2-D data and ``(N, D, H, W)`` for
    MedMNIST 3-D volumes (``is_volume``); volume files prepared whole (for the
    ACS / 3-D networks) are items already, ``(N, C, D, H, W)``. ``labels`` is int64 ``(N,)`` for binary
    and multi-class tasks, float32 ``(N, L)`` of 0/1 for multi-label.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: list[str]
    task: str  # binary | multiclass | multilabel | ordinal
    modality: str = "OT"
    is_volume: bool = False
    patient_ids: np.ndarray | None = None
    # a manifest's other columns (sex, site, scanner...), one value per image: subgroups for evaluation
    columns: dict[str, np.ndarray] | None = None
    # DICOM files: a key per image standing for its study (a hash of the Study Instance UID, never the UID)
    study_keys: np.ndarray | None = None
    paths: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""
    modality_counts: dict[str, int] = field(default_factory=dict)  # files read, per DICOM modality code
    warnings: list[str] = field(default_factory=list)  # what was accepted but is worth a look

    @property
    def from_files(self) -> bool:
        """Read and prepared from image files (a folder or manifest), not held prepared in an ``.npz``."""
        return self.paths is not None

    @property
    def channels(self) -> int:
        return 1 if self.is_volume else int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in (self.images.shape[1:] if self.is_volume else self.images.shape[2:]))

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        m = self.splits == name
        return self.images[m], self.labels[m]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split, the number of samples per class name (and ``total``)."""
        out: dict[str, dict[str, int]] = {}
        for s in SPLIT_NAMES:
            m = self.splits == s
            if not m.any():
                continue
            y = self.labels[m]
            if self.task == "multilabel":
                row = {c: int(y[:, i].sum()) for i, c in enumerate(self.class_names)}
            else:
                row = {c: int((y == i).sum()) for i, c in enumerate(self.class_names)}
            row["total"] = int(m.sum())
            out[s] = row
        return out

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "modality": self.modality,
            "classes": list(self.class_names),
            "counts": self.counts(),
            "image_size": list(self.image_shape),
            "channels": self.channels,
            "volume": self.is_volume,
            "skipped": [{"path": p, "problem": why} for p, why in self.skipped],
            "warnings": list(self.warnings),
        }


def require_two_classes(ds: ImageDataset, y: np.ndarray) -> None:
    """A training split with a single class teaches nothing (and its AUC is undefined): refuse it."""
    if ds.task == "multilabel" or len(y) == 0:
        return
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{ds.source}: its training split holds only the class {ds.class_names[int(present[0])]!r}; "
                        "a classifier needs examples of at least two classes")


def run_preparation(ds: ImageDataset, options: PrepOptions, used: Preparation, *, size: int, channels: int,
                    volume_mode: str = "slices", volume_spacing: float | None = None) -> Preparation:
    """The preparation a run trained on ``ds`` saves: what makes a file look like the dataset's items.

    Args:
        options: what the user chose.
        used: the preparation the dataset's files were read with (folders, manifests).
        size, channels: of the items the model trains on.

    Raises:
        MedclsError: pixel options given for prepared (MedMNIST / ``.npz``) data, where they act on nothing.
    """
    if ds.from_files:
        # a dataset of one family pins it, so that a file of another kind given to predict (a NIfTI,
        # which has no modality, to a CT run) is prepared as the training files were
        families = {used.family_of(code) for code in ds.modality_counts}
        return replace(used, modality=families.pop()) if len(families) == 1 else used
    if options.pixel_options:
        raise MedclsError(f"{ds.source}: its images are already prepared (uint8, windowed and resized by their "
                          f"authors), so {', '.join(options.pixel_options)} would change nothing; these options "
                          "apply to datasets of image files (a folder or a manifest)")
    family = options.modality if options.modality != "auto" else modality_family(ds.modality)
    # crop off: MedMNIST's ultrasound frames are already cut to the scan, and a saved image of one is
    # predicted exactly as the split it came from
    return Preparation(modality=family, size=size, channels=channels, crop=False, volume_axis=options.axis,
                       volume_mode=volume_mode if ds.is_volume else "slices", volume_spacing=volume_spacing)


# ---------------------------------------------------------------- MedMNIST

def load_npz_dataset(path: str | Path, name: str | None = None) -> ImageDataset:
    """A MedMNIST-format ``.npz`` with its official splits."""
    from medcls.io.npz import load_npz_splits

    path = Path(path)
    parts = load_npz_splits(path)
    stem = path.name[: -len(".npz")]
    parsed = parse_medmnist_name(name or stem)
    info = MEDMNIST.get(parsed[0]) if parsed else None
    xs, ys, ss = [], [], []
    for s, (x, y) in parts.items():
        xs.append(x)
        ys.append(y)
        ss.extend([s] * len(x))
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    if x.dtype.kind not in "uif" or x.ndim not in (3, 4):
        raise DataError(f"{path}: images must be a numeric array (N, H, W[, C]) or (N, D, H, W), got "
                        f"{x.dtype} {x.shape[1:]}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{path}: its images hold NaN or infinite values")
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    is_volume = (info.dims == 3) if info else (x.ndim == 4 and x.shape[-1] not in (1, 3))
    if not is_volume:
        x = x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)
    x = np.ascontiguousarray(x)
    multilabel = (info.task == "multilabel") if info else (y.ndim == 2 and y.shape[1] > 1)
    labels, n = _checked_labels(path, y, multilabel, info.n_classes if info else None)
    names = _class_names(info, n)
    task = info.task if info else ("multilabel" if multilabel else ("binary" if n == 2 else "multiclass"))
    return ImageDataset(
        name=info.name if info else stem,
        images=x,
        labels=labels,
        splits=np.array(ss),
        class_names=names,
        task=task,
        modality=info.modality if info else "OT",
        is_volume=is_volume,
        source=str(path),
    )


def _checked_labels(path: Path, y: np.ndarray, multilabel: bool, n_classes: int | None) -> tuple[np.ndarray, int]:
    """Labels as medcls holds them, refused with the reason when they cannot be what they claim."""
    if y.dtype.kind not in "uifb":
        raise DataError(f"{path}: labels must be numbers, got {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).any(axis=tuple(range(1, y.ndim))).sum()) if y.ndim > 1 else int((~np.isfinite(y)).sum())
        raise DataError(f"{path}: {bad} label(s) are NaN or infinite")
    if multilabel:
        if not np.isin(y, (0, 1)).all():
            raise DataError(f"{path}: multi-label labels must be 0 or 1")
        return y.astype(np.float32), int(y.shape[1])
    if y.ndim > 1 and y.shape[1] != 1:
        raise DataError(f"{path}: one label per image expected, got {y.shape[1]} per image")
    y = y.reshape(-1)
    if y.dtype.kind == "f" and not np.equal(np.round(y), y).all():
        raise DataError(f"{path}: class labels must be whole numbers")
    labels = y.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: {int((labels < 0).sum())} label(s) are negative; classes are numbered from 0")
    n = int(labels.max()) + 1 if n_classes is None else n_classes
    if len(labels) and labels.max() >= n:
        raise DataError(f"{path}: label {int(labels.max())} is outside this set's {n} classes (0 to {n - 1})")
    return labels, n


def _class_names(info, n: int) -> list[str]:
    if info is not None and info.labels:
        return list(info.labels)
    if info is not None:
        try:
            import medmnist.info  # label names of the multi-class sets; lazy

            lab = medmnist.info.INFO[info.name]["label"]
            return [lab[str(i)] for i in range(n)]
        except (ImportError, KeyError):
            pass
    return [f"class_{i}" for i in range(n)]


# ---------------------------------------------------------------- files

@dataclass
class FileEntry:
    path: Path
    label: object  # class name, or tuple of names for multi-label
    split: str | None = None
    patient: str | None = None
    extra: dict = field(default_factory=dict)  # the manifest's other columns


def list_folder(root: str | Path) -> tuple[list[FileEntry], list[tuple[str, str]]]:
    """``root/<class>/<file>`` or ``root/<split>/<class>/<file>`` (split in train/val/test).

    Returns:
        (entries, what was left out and why: files that are not images, FIFOs, ...)
    """
    root = Path(root)
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{root}: cannot list folder ({exc.strerror or exc})") from exc
    if not subdirs:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<images>)")
    entries: list[FileEntry] = []
    skipped: list[tuple[str, str]] = []
    if {d.name.lower() for d in subdirs} <= set(SPLIT_NAMES):
        for sd in subdirs:
            for cd in sorted(p for p in sd.iterdir() if p.is_dir()):
                entries += [FileEntry(f, cd.name, sd.name.lower()) for f in _files_or_series(cd, skipped)]
    else:
        for cd in subdirs:
            entries += [FileEntry(f, cd.name) for f in _files_or_series(cd, skipped)]
    if not entries:
        raise DataError(f"{root}: no image files in the class folders")
    return entries, skipped


def _files_or_series(class_dir: Path, skipped: list) -> list[Path]:
    """Files of a class folder; a sub-folder of DICOM slices counts as one item (a series)."""
    from medcls.io import list_image_files

    files, left_out = list_image_files(class_dir, recursive=False)
    skipped += left_out
    return files + sorted(p for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


_PATH_COLS = ("path", "file", "filename", "image")
_LABEL_COLS = ("label", "labels", "class", "target")
_SPLIT_COLS = ("split", "fold", "set")
_PATIENT_COLS = ("patient_id", "patient", "subject", "subject_id")


def list_manifest(csv_path: str | Path) -> tuple[list[FileEntry], list[str] | None]:
    """Read a CSV/TSV manifest: ``path,label[,split][,patient_id]``.

    Multi-label: ``label`` holds names separated by ``|``, or there is no label
    column and every other column is a 0/1 label. Relative paths are relative to
    the manifest's folder.

    Returns:
        (entries, label column names for the one-column-per-label form or None, warnings)
    """
    from medcls.io import require_regular_file

    csv_path = Path(csv_path)
    require_regular_file(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read manifest ({exc})") from exc
    if not text.strip():
        raise DataError(f"{csv_path}: manifest is empty")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    if not rows:
        raise DataError(f"{csv_path}: manifest has a header but no rows")
    cols = {c.strip().lower(): c for c in rows[0].keys() if c is not None}

    def pick(cands):
        return next((cols[c] for c in cands if c in cols), None)

    pcol, lcol, scol, gcol = pick(_PATH_COLS), pick(_LABEL_COLS), pick(_SPLIT_COLS), pick(_PATIENT_COLS)
    if pcol is None:
        raise DataError(f"{csv_path}: no path column (expected one of {', '.join(_PATH_COLS)})")
    label_cols = None
    if lcol is None:
        label_cols = [c for c in rows[0].keys() if c not in (pcol, scol, gcol)]
        if not label_cols:
            raise DataError(f"{csv_path}: no label column (expected 'label', or one 0/1 column per label)")
    entries, missing, lines = [], [], []
    for i, r in enumerate(rows, start=2):
        raw = (r.get(pcol) or "").strip()
        if not raw:
            raise DataError(f"{csv_path}: line {i} has an empty path")
        p = Path(raw)
        p = p if p.is_absolute() else csv_path.parent / p
        if not p.exists():
            missing.append(raw)
            continue
        if label_cols is not None:
            try:
                lab = tuple(c for c in label_cols if float(r.get(c) or 0) > 0)
            except ValueError as exc:
                raise DataError(f"{csv_path}: line {i}: label columns must be 0/1 ({exc})") from exc
        else:
            v = (r.get(lcol) or "").strip()
            lab = tuple(s.strip() for s in v.split("|") if s.strip()) if "|" in v else v
            if lab == "":
                raise DataError(f"{csv_path}: line {i} ({raw}) has no label")
        split = (r.get(scol) or "").strip().lower() if scol else None
        if split and split not in SPLIT_NAMES:
            split = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}.get(split)
            if split is None:
                raise DataError(f"{csv_path}: line {i}: split must be train, val or test")
        extra = {} if label_cols is not None else {c.strip(): (r.get(c) or "").strip() for c in rows[0].keys()
                                                    if c is not None and c not in (pcol, lcol, scol, gcol)}
        entries.append(FileEntry(p, lab, split or None, (r.get(gcol) or "").strip() or None if gcol else None,
                                 extra))
        lines.append(i)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{csv_path}: {len(missing)} listed file(s) do not exist: {', '.join(missing[:3])}{more}")
    kept, notes = _check_entries(csv_path, entries, lines)
    return kept, label_cols, notes


def _check_entries(csv_path: Path, entries: list[FileEntry], lines: list[int]) -> tuple[list[FileEntry], list[str]]:
    """A manifest's rows checked like data: a file listed twice (with other labels, or in two splits) and
    a patient in two splits are errors naming the lines; a file listed twice alike is kept once."""
    first: dict[Path, int] = {}  # resolved path -> index of its first row
    kept: list[FileEntry] = []
    notes: list[str] = []
    for k, (e, line) in enumerate(zip(entries, lines)):
        j = first.setdefault(e.path.resolve(), k)
        if j == k:
            kept.append(e)
            continue
        if entries[j].label != e.label:
            raise DataError(f"{csv_path}: {e.path.name} is listed on lines {lines[j]} and {line} with different "
                            "labels")
        if entries[j].split != e.split:
            raise DataError(f"{csv_path}: {e.path.name} is listed on lines {lines[j]} and {line} in different "
                            "splits; an image in two splits is trained on and tested on")
        notes.append(f"{csv_path}: line {line} repeats line {lines[j]} ({e.path.name}); used once")
    split_of: dict[str, tuple[str | None, int]] = {}
    for e, line in zip(entries, lines):
        if e.patient and e.split:
            seen = split_of.setdefault(e.patient, (e.split, line))
            if seen[0] != e.split:
                raise DataError(f"{csv_path}: a patient is in the {seen[0]} split (line {seen[1]}) and the "
                                f"{e.split} split (line {line}); no patient may be in two splits")
    return kept, notes


def _materialise(entries: list[FileEntry], prep: Preparation, label_cols, name: str, source: str,
                 seed: int = 0, skipped: list[tuple[str, str]] | None = None,
                 notes: list[str] | None = None) -> ImageDataset:
    from medcls.io import check_values, read
    from medcls.modalities import prepare

    multilabel = label_cols is not None or any(isinstance(e.label, tuple) for e in entries)
    if multilabel:
        names = list(label_cols) if label_cols else sorted({n for e in entries for n in
                                                            (e.label if isinstance(e.label, tuple) else (e.label,))})
    else:
        names = sorted({str(e.label) for e in entries})
    if not multilabel and len(names) < 2:
        raise DataError(f"{source}: needs at least two classes, found {names}")

    def encode(lab):
        if multilabel:
            labs = lab if isinstance(lab, tuple) else (lab,)
            v = np.zeros(len(names), np.float32)
            for n in labs:
                v[names.index(n)] = 1.0
            return v
        return names.index(str(lab))

    # Split at file level before expanding frames/slices, so no file (and no
    # patient) spans two splits.
    given = [e.split for e in entries]
    if all(given):
        file_splits = np.array(given)
    else:
        y = np.array([encode(e.label) for e in entries])
        groups = None
        if any(e.patient for e in entries):
            groups = np.array([e.patient or f"_file{i}" for i, e in enumerate(entries)])
        file_splits = make_splits(y, groups, seed=seed)
        file_splits = np.array([g or s for g, s in zip(given, file_splits)])

    xs, ys, ss, pids, paths, modalities, studies = [], [], [], [], [], Counter(), []
    extra_cols = sorted({c for e in entries for c in e.extra})
    extra: dict[str, list] = {c: [] for c in extra_cols}
    skipped = list(skipped or [])
    listed = len(skipped)  # left out when listing; read failures follow
    volume_seen = False
    for e, s in zip(entries, file_splits):
        try:
            arr, meta = read(e.path)
            x = prepare(check_values(arr, meta), meta, prep)
        except ReadError as exc:
            skipped.append((str(e.path), exc.problem))
            continue
        volume_seen |= bool(meta.is_volume)
        modalities[meta.modality] += 1
        q = (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)
        xs.append(q)
        ys.extend([encode(e.label)] * len(q))
        ss.extend([s] * len(q))
        pids.extend([e.patient or ""] * len(q))
        studies.extend([meta.extra.get("study_key") or ""] * len(q))
        paths.extend([str(e.path)] * len(q))
        for c in extra_cols:
            extra[c].extend([e.extra.get(c, "")] * len(q))
    if not xs:
        raise DataError(f"{source}: none of the {len(entries)} files could be read (first: {skipped[listed][0]}: "
                        f"{skipped[listed][1]})")
    images = np.concatenate(xs)
    labels = np.array(ys, dtype=np.float32 if multilabel else np.int64)
    if not multilabel and (empty := [n for i, n in enumerate(names) if not (labels == i).any()]):
        listed = [e for e in entries if str(e.label) == empty[0]]
        why = next((f" (first: {p}: {w})" for p, w in skipped if p == str(listed[0].path)), "")
        raise DataError(f"{source}: class {empty[0]!r} has no readable image: its {len(listed)} file(s) were all "
                        f"skipped{why}")
    task = "multilabel" if multilabel else ("binary" if len(names) == 2 else "multiclass")
    return ImageDataset(
        name=name, images=images, labels=labels, splits=np.array(ss), class_names=names, task=task,
        modality=modalities.most_common(1)[0][0], is_volume=False,
        patient_ids=np.array(pids) if any(pids) else None,
        columns={c: np.array(v) for c, v in extra.items()} or None,
        study_keys=np.array(studies) if any(studies) else None, paths=paths, skipped=skipped, source=source,
        modality_counts=dict(modalities), warnings=list(notes or []),
    )


def load_folder(root: str | Path, prep: Preparation | None = None, seed: int = 0) -> ImageDataset:
    """A class-per-folder dataset read, prepared and held as uint8."""
    root = Path(root)
    entries, skipped = list_folder(root)
    return _materialise(entries, prep or Preparation(), None, root.name, str(root), seed, skipped)


def load_manifest(csv_path: str | Path, prep: Preparation | None = None, seed: int = 0) -> ImageDataset:
    """A CSV/TSV manifest dataset read, prepared and held as uint8."""
    csv_path = Path(csv_path)
    entries, label_cols, notes = list_manifest(csv_path)
    return _materialise(entries, prep or Preparation(), label_cols, csv_path.stem, str(csv_path), seed,
                        notes=notes)


def load_dataset(spec: str | Path, *, data_dir: str | Path | None = None, size: int | None = None,
                 prep: Preparation | None = None, download: bool = True, seed: int = 0) -> ImageDataset:
    """Load a dataset from a MedMNIST name, ``.npz``, class folder or CSV/TSV manifest.

    Args:
        spec: ``pneumoniamnist`` (optionally ``_64``), a path to an ``.npz``, a
            folder of class folders, or a ``.csv``/``.tsv`` manifest.
        data_dir: where to look for MedMNIST files first.
        size: MedMNIST image size (28/64/128/224); for files, the prepared size.
        prep: preparation for file datasets (size/channels/modality settings).

    Raises:
        DataError: the spec names nothing loadable.
    """
    p = Path(spec)
    if p.exists():
        if p.is_dir():
            prep = prep or Preparation(size=size or 64)
            return load_folder(p, prep, seed)
        low = p.name.lower()
        if low.endswith(".npz"):
            ds = load_npz_dataset(p)
            if size is not None and tuple(ds.image_shape[-2:]) != (size, size):
                raise DataError(f"{p}: its images are {' x '.join(map(str, ds.image_shape))}, so --size {size} "
                                "cannot apply; a MedMNIST set of another size is another file (e.g. "
                                "breastmnist_64)")
            return ds
        if low.endswith((".csv", ".tsv", ".txt")):
            prep = prep or Preparation(size=size or 64)
            return load_manifest(p, prep, seed)
        raise DataError(f"{p}: not a dataset (expected a MedMNIST name, .npz, class folder or .csv manifest)")
    parsed = parse_medmnist_name(str(spec))
    if parsed is None:
        raise DataError(f"{spec}: no such file or folder, and not a MedMNIST name "
                        f"(known: {', '.join(sorted(MEDMNIST))})")
    name, sz = parsed
    return load_npz_dataset(find_medmnist(name, size or sz, data_dir, download=download), name)
