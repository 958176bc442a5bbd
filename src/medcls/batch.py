"""Prediction over very many files: streamed, decoded in worker processes, written in atomic chunks, resumable.

``medcls predict RUN FOLDER_OR_MANIFEST --out predictions.csv`` (or ``.parquet``)
is for folders and manifests of any size:

- the inputs are a stream (:func:`medcls.io.iter_inputs` lists one folder at a
  time; a CSV manifest is read row by row), never a list of every file;
- files are read, checked and prepared in DataLoader worker processes
  (``--workers``); the main process batches their items through the model;
- every ``--chunk`` files of a shard become one part file, written atomically
  (``OUT.parts/shard-I-of-N/chunk-K.csv``); ``--resume`` skips the parts that
  are there, so a killed job loses at most one chunk;
- ``--shard I/N`` (a SLURM array index, say) or torchrun's ``RANK`` /
  ``WORLD_SIZE`` give each process every N-th input; the process that finishes
  last merges every shard's parts into ``OUT``, in input order, atomically;
- a file that cannot be read is a row with its one-line ``error``, never the end of the job.

This module owns the predictions file: its columns, its parts and their merge.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcls._atomic import atomic_path, write_json
from medcls.errors import MedclsError, ReadError

__all__ = ["Shard", "PredictSummary", "predict_to_file", "iter_sources", "read_predictions", "describe"]

FORMATS = (".csv", ".parquet")
FIXED = ["path", "series_uid", "class"]
TAIL = ["items", "warnings", "error"]


@dataclass(frozen=True)
class Shard:
    """Inputs ``index``, ``index + count``, ``index + 2 count``, ... of the stream (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise MedclsError(f"--shard takes I/N (this process's share I of N, 0 <= I < N), not {text!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise MedclsError(f"--shard {text}: I must be from 0 to N - 1 (a SLURM array from 1 to N: use "
                              "$((SLURM_ARRAY_TASK_ID - 1))/N)")
        return cls(i, n)

    @classmethod
    def from_env(cls) -> "Shard":
        """torchrun's ``RANK`` of ``WORLD_SIZE``; one shard outside torchrun."""
        n = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return cls(int(os.environ.get("RANK", "0") or 0), n) if n > 1 else cls()

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}"


@dataclass
class PredictSummary:
    out: Path
    files: int  # inputs this process answered in this call (chunks resumed from are not counted)
    errors: int
    seconds: float
    merged: bool  # OUT is complete (this process merged the shards, or there was one)

    @property
    def files_per_s(self) -> float:
        return self.files / max(self.seconds, 1e-9)


# ---------------------------------------------------------------- the input stream


def iter_sources(sources, group: str | None = None):
    """``(target, None, group)`` or ``(None, (path, why), group)`` for each input, in order, as a stream.

    A ``.csv`` file is a manifest: its ``path`` column (relative to the CSV's
    folder), with an optional ``series_uid`` column for one series of a DICOM
    folder, and the ``group`` column (a patient, study or lesion) when asked
    for. Anything else is a file or folder, as for :func:`medcls.io.iter_inputs`
    (with no group).
    """
    from medcls.io import iter_inputs

    for src in map(Path, sources):
        if src.suffix.lower() == ".csv" and src.is_file():
            yield from _manifest_rows(src, group)
        else:
            for target, left_out in iter_inputs([src]):
                yield target, left_out, ""


def _manifest_rows(csv_path: Path, group: str | None = None):
    try:
        f = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise MedclsError(f"{csv_path}: cannot read ({exc.strerror or exc})") from None
    with f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise MedclsError(f"{csv_path}: a manifest needs a 'path' column (its columns: "
                              f"{', '.join(reader.fieldnames or []) or 'none'})")
        if group and group not in reader.fieldnames:
            raise MedclsError(f"{csv_path}: no column {group!r} to group by (its columns: "
                              f"{', '.join(reader.fieldnames)})")
        try:
            for row in reader:
                p = (row.get("path") or "").strip()
                g = (row.get(group) or "").strip() if group else ""
                if not p:
                    yield None, (f"{csv_path}:{reader.line_num}", "no path in this row"), g
                    continue
                path = Path(p) if Path(p).is_absolute() else csv_path.parent / p
                uid = (row.get("series_uid") or "").strip()
                yield ((path, uid) if uid else path), None, g
        except (csv.Error, UnicodeDecodeError) as exc:
            raise MedclsError(f"{csv_path}, line {reader.line_num}: not a readable CSV manifest ({exc})") from None


class _Positions:
    """What the workers are sent: ``(local position, target, left out)`` of this shard, less finished chunks.

    Iterated in the main process (a DataLoader sampler), so the folders are
    listed once, not once per worker.
    """

    def __init__(self, sources, shard: Shard, chunk: int, done: set[int], group: str | None = None):
        self.sources, self.shard, self.chunk, self.done, self.group = list(sources), shard, chunk, done, group

    def __iter__(self):
        local = -1
        for j, (target, left_out, group) in enumerate(iter_sources(self.sources, self.group)):
            if j % self.shard.count != self.shard.index:
                continue
            local += 1
            if local // self.chunk not in self.done:
                yield local, target, left_out, group


class _Decoder:
    """A DataLoader dataset: reads, checks and prepares one input (in a worker process)."""

    def __init__(self, preparation, allow_gaps: bool, allow_nonfinite: bool):
        self.preparation, self.allow_gaps, self.allow_nonfinite = preparation, allow_gaps, allow_nonfinite

    def __getitem__(self, task) -> dict:
        from medcls.runs import read_prepared

        pos, target, left_out, group = task
        path, uid = target if isinstance(target, tuple) else (target, None)
        rec = {"pos": pos, "path": str(path) if target is not None else left_out[0], "series_uid": uid or "",
               "group": group, "items": None, "notes": [], "error": ""}
        if target is None:
            rec["error"] = f"left out: {left_out[1]}"
            return rec
        try:
            p = read_prepared(path, self.preparation, uid, allow_gaps=self.allow_gaps,
                              allow_nonfinite=self.allow_nonfinite)
        except (ReadError, MedclsError) as exc:
            rec["error"] = exc.problem if isinstance(exc, ReadError) else str(exc)
            return rec
        except Exception as exc:  # noqa: BLE001 - one bad file of millions must not end the job
            rec["error"] = f"unexpected {type(exc).__name__} while reading: {str(exc).splitlines()[0] if str(exc) else ''}"
            return rec
        rec["items"] = p.items
        rec["notes"] = list(p.notes) + [f"{s}: {why} (slice left out)" for s, why in p.skipped]
        return rec


def _as_is(rec):
    return rec


# ---------------------------------------------------------------- parts on disk


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _columns(class_names: list[str], grouped: bool = False) -> list[str]:
    return FIXED + (["group"] if grouped else []) + [f"p_{n}" for n in class_names] + TAIL


def _write_part(path: Path, columns: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows, schema=_schema(columns)), str(tmp))
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=columns)
                w.writeheader()
                w.writerows(rows)


def _schema(columns: list[str]):
    import pyarrow as pa

    def kind(c):
        return pa.float64() if c.startswith("p_") else pa.int64() if c == "items" else pa.string()

    return pa.schema([(c, kind(c)) for c in columns])


def read_predictions(path: str | Path) -> list[dict]:
    """A predictions file (or part) as rows: what ``predict --out`` wrote, typed back (tests, merges)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(str(path)).to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k.startswith("p_"):
                r[k] = float(v) if v != "" else None
            elif k == "items":
                r[k] = int(v) if v != "" else None
    return rows


def _iter_rows(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(str(path))
        for batch in pf.iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    else:
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)


def _shard_rows(folder: Path, suffix: str):
    for part in sorted(folder.glob(f"chunk-*{suffix}")):
        yield from _iter_rows(part)


def _try_merge(out: Path, count: int, columns: list[str]) -> bool:
    """Merge every shard's parts into ``out`` in input order once all are done; False while some are not."""
    parts = _parts_dir(out)
    shards = [parts / Shard(i, count).name for i in range(count)]
    if not all((s / "done.json").is_file() for s in shards):
        return False
    try:  # one process merges; one finishing at the same moment leaves it to that one
        fd = os.open(parts / "merge.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    streams = [_shard_rows(s, out.suffix) for s in shards]
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            with pq.ParquetWriter(str(tmp), _schema(columns)) as w:
                for block in _blocks(_round_robin(streams), 4096):
                    w.write_table(pa.Table.from_pylist(block, schema=_schema(columns)))
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                wr = csv.DictWriter(f, fieldnames=columns)
                wr.writeheader()
                for row in _round_robin(streams):
                    wr.writerow(row)
    shutil.rmtree(parts, ignore_errors=True)
    return True


def _round_robin(streams):
    """Input j was shard j mod N's row j div N: take one row of each shard in turn."""
    live = list(streams)
    while live:
        nxt = []
        for s in live:
            row = next(s, None)
            if row is not None:
                yield row
                nxt.append(s)
        live = nxt


def _blocks(rows, n: int):
    block = []
    for r in rows:
        block.append(r)
        if len(block) == n:
            yield block
            block = []
    if block:
        yield block


def _prepare_out(out: Path, shard: Shard, resume: bool, overwrite: bool) -> set[int]:
    """Check ``out`` and its parts; return the chunks of this shard already written (on ``--resume``)."""
    if out.suffix.lower() not in FORMATS:
        raise MedclsError(f"--out {out}: predictions are written as .csv or .parquet")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise MedclsError("--out *.parquet needs pyarrow: pip install 'medcls[parquet]' (or write .csv)") from None
    parts = _parts_dir(out)
    if overwrite:
        if shard.count == 1:
            if out.exists():
                out.unlink()
            shutil.rmtree(parts, ignore_errors=True)
        else:  # other shards may be writing their parts: only this one's go
            shutil.rmtree(parts / shard.name, ignore_errors=True)
    elif out.exists():
        raise MedclsError(f"{out} already exists; pass --overwrite to replace it")
    others = [p.name for p in parts.glob("shard-*")] if parts.is_dir() else []
    wrong = [n for n in others if not n.endswith(f"-of-{shard.count:05d}")]
    if wrong:
        raise MedclsError(f"{parts} holds parts of a job in another number of shards ({wrong[0]}); finish it with "
                          "the same number, or pass --overwrite")
    mine = parts / shard.name
    if mine.is_dir() and any(mine.iterdir()) and not resume:
        raise MedclsError(f"{mine} holds part of an earlier job; pass --resume to go on with it, or --overwrite")
    (mine / "done.json").unlink(missing_ok=True)
    mine.mkdir(parents=True, exist_ok=True)
    return {int(p.name.split("-")[1].split(".")[0]) for p in mine.glob(f"chunk-*{out.suffix}")}


# ---------------------------------------------------------------- the job


def predict_to_file(run, sources, out: str | Path, *, workers: int = 2, chunk: int = 1000, shard: Shard | None = None,
                    resume: bool = False, overwrite: bool = False, allow_gaps: bool = False,
                    allow_nonfinite: bool = False, batch_items: int = 256, progress: bool = True,
                    group: str | None = None, rule: str = "mean") -> PredictSummary:
    """Predict on every input of ``sources`` (files, folders, CSV manifests) into ``out``; see the module.

    ``group``: a manifest column (patient, study, lesion); each row carries its
    value, and once ``out`` is merged ``OUT.groups.csv`` (or ``.parquet``) holds
    one row per group, its images' probabilities combined by ``rule`` (mean | max | noisy-or).
    """
    from torch.utils.data import DataLoader

    out = Path(out)
    shard = shard or Shard()
    if chunk < 1:
        raise MedclsError(f"--chunk must be at least 1, got {chunk}")
    done = _prepare_out(out, shard, resume, overwrite)
    names = list(run.class_names)
    if group:
        from medcls.evaluate.clinical import AGGREGATION_RULES

        if rule not in AGGREGATION_RULES:
            raise MedclsError(f"--aggregate must be one of {', '.join(AGGREGATION_RULES)}, not {rule!r}")
        if rule == "noisy-or" and run.task != "multilabel" and len(names) > 2:
            raise MedclsError("noisy-or combines the probability of a positive finding: binary and multi-label "
                              "runs only; use mean or max for a multi-class run")
        if not all(Path(src).suffix.lower() == ".csv" for src in sources):
            raise MedclsError("--group names a column of a CSV manifest; give the inputs as manifests")
        for src in sources:  # refused before any file is written
            next(iter(_manifest_rows(Path(src), group)), None)
    columns = _columns(names, grouped=bool(group))
    folder = _parts_dir(out) / shard.name
    loader = DataLoader(_Decoder(run.preparation, allow_gaps, allow_nonfinite), batch_size=None,
                        sampler=_Positions(sources, shard, chunk, done, group), num_workers=max(0, workers),
                        collate_fn=_as_is, prefetch_factor=4 if workers > 0 else None)
    t0, n, n_err = time.perf_counter(), 0, 0
    rows: list[dict] = []  # the chunk being filled
    waiting: list[tuple[dict, np.ndarray]] = []  # rows whose items await the model
    current = None
    bar = _bar(progress)

    def predict_waiting() -> None:
        if not waiting:
            return
        probs = run.predict_items(np.concatenate([x for _, x in waiting]))
        at = 0
        for row, x in waiting:
            p = probs[at:at + len(x)].mean(0)
            at += len(x)
            row.update({f"p_{c}": round(float(v), 6) for c, v in zip(names, p)})
            answer = run.decide(p)  # at the run's operating point, when it has one
            row["class"] = ";".join(answer) if isinstance(answer, list) else answer
        waiting.clear()

    def flush(k: int) -> None:
        predict_waiting()
        _write_part(folder / f"chunk-{k:06d}{out.suffix}", columns, rows)
        rows.clear()

    for rec in loader:
        k = rec["pos"] // chunk
        if current is not None and k != current:
            flush(current)
        current = k
        row = {c: None for c in columns}
        row.update({"path": rec["path"], "series_uid": rec["series_uid"], "class": "", "error": rec["error"],
                    "warnings": "; ".join(rec["notes"])})
        if group:
            row["group"] = rec["group"]
        if rec["items"] is not None:
            row["items"] = int(len(rec["items"]))
            waiting.append((row, rec["items"]))
            if sum(len(x) for _, x in waiting) >= batch_items:
                predict_waiting()
        else:
            n_err += 1
        rows.append(row)
        n += 1
        bar.update(1)
    if current is not None:
        flush(current)
    bar.close()
    secs = time.perf_counter() - t0
    write_json(folder / "done.json", {"shard": shard.index, "of": shard.count, "chunk": chunk})
    merged = _try_merge(out, shard.count, columns)
    if merged and group:
        _write_groups(out, run, rule)
    return PredictSummary(out, n, n_err, secs, merged)


def groups_path(out: Path) -> Path:
    return out.with_name(out.stem + ".groups" + out.suffix)


def _write_groups(out: Path, run, rule: str) -> None:
    """One row per group of the merged predictions: its images' probabilities combined by ``rule``.

    Streams the merged file keeping a running combination per group (a sum, a
    maximum or a product of 1 - p), not the rows. Rows without a group or
    without a prediction are not counted.
    """
    names = list(run.class_names)
    keys = [f"p_{n}" for n in names]
    acc: dict[str, list] = {}  # group -> [count, combined vector]
    for row in _iter_rows(out):
        g = row.get("group") or ""
        if not g or row.get(keys[0]) in (None, ""):
            continue
        p = np.array([float(row[k]) for k in keys])
        if g not in acc:
            acc[g] = [0, np.zeros_like(p) if rule == "mean" else (np.ones_like(p) if rule == "noisy-or" else p)]
        a = acc[g]
        a[0] += 1
        if rule == "mean":
            a[1] = a[1] + p
        elif rule == "max":
            a[1] = np.maximum(a[1], p)
        else:
            a[1] = a[1] * (1 - p)
    rows = []
    for g, (count, v) in acc.items():
        if rule == "mean":
            q = v / count
        elif rule == "max":
            q = v
        else:
            q = 1 - v
        if run.task != "multilabel" and len(names) == 2 and rule != "mean":
            q = np.array([1 - q[1], q[1]])  # the positive class's combined risk, as a distribution
        elif run.task != "multilabel" and rule != "mean":
            q = q / q.sum()
        answer = run.decide(q)
        rows.append({"group": g, "images": count, "rule": rule,
                     "class": ";".join(answer) if isinstance(answer, list) else answer,
                     **{k: round(float(x), 6) for k, x in zip(keys, q)}})
    cols = ["group", "images", "rule", "class", *keys]
    path = groups_path(out)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([(c, pa.float64() if c.startswith("p_") else pa.int64() if c == "images"
                                 else pa.string()) for c in cols])
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(tmp))
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows(rows)


def _bar(enabled: bool):
    from tqdm import tqdm

    disable = not enabled or not sys.stderr.isatty() or bool(os.environ.get("TQDM_DISABLE"))
    return tqdm(desc="predict", unit="file", disable=disable, dynamic_ncols=True)


def describe(summary: PredictSummary) -> str:
    where = (str(summary.out) if summary.merged
             else f"{_parts_dir(summary.out)} (merged into {summary.out} when every shard is done)")
    return (f"{summary.files} inputs in {summary.seconds:.1f} s ({summary.files_per_s:.1f} files/s), "
            f"{summary.errors} not predicted (their errors are in the file): {where}")
