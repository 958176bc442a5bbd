"""Fuzz the readers: real files truncated, bit-flipped and overwritten, read back through ``medcls.read``.

    python bench/fuzz.py                    # 1,500 mutants per source file; writes bench/results/fuzz.json
    python bench/fuzz.py --examples 200     # shorter

Each mutant must either come back as an array with its metadata or be refused
with a ``medcls`` error; any other exception is a failure, grouped by type and
the line that raised it (a unique failure). Every read must also finish within
a time bound, and the process's peak memory is reported. The test suite runs
the same property on fewer examples (tests/io/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TIME_LIMIT_S = 10.0  # per read; the slowest real source file reads in well under a second


def sources() -> dict[str, tuple[str, bytes]]:
    """Seed files by kind: (file suffix, bytes). DICOMs are real ones shipped with pydicom; the rest are small
    images made here in each format."""
    import nibabel as nib
    from PIL import Image

    from medcls.io.samples import sample_dicoms

    out = {}
    for kind, name in (("dicom", "CT_small.dcm"), ("dicom-j2k", "MR_small_jp2klossless.dcm"),
                       ("dicom-rle", "MR_small_RLE.dcm"), ("dicom-jpeg-ls", "MR_small_jpeg_ls_lossless.dcm"),
                       ("dicom-deflate", "image_dfl.dcm"), ("dicom-palette", "OT-PAL-8-face.dcm")):
        found = sample_dicoms([name])
        if found:
            out[kind] = (".dcm", found[0].read_bytes())
    rng = np.random.default_rng(0)
    img = (rng.normal(120, 40, (48, 40)).clip(0, 255)).astype(np.uint8)
    for kind, fmt in (("png", "PNG"), ("jpeg", "JPEG"), ("tiff", "TIFF")):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt)
        out[kind] = ("." + fmt.lower(), buf.getvalue())
    vol = nib.Nifti1Image(rng.normal(size=(12, 10, 8)).astype(np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
    with tempfile.TemporaryDirectory() as d:
        nib.save(vol, Path(d) / "v.nii")
        raw = (Path(d) / "v.nii").read_bytes()
    out["nifti"] = (".nii", raw)
    out["nifti-gz"] = (".nii.gz", gzip.compress(raw))
    buf = io.BytesIO()
    np.savez(buf, train_images=img[None].repeat(4, 0), train_labels=np.arange(4)[:, None] % 2)
    out["npz"] = (".npz", buf.getvalue())
    return out


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    """Apply mutations: ("truncate", n), ("flip", pos, bit), ("write", pos, bytes), ("zero", pos, length)."""
    b = bytearray(data)
    for op in ops:
        if not b:
            break
        if op[0] == "truncate":
            del b[op[1] % (len(b) + 1):]
        elif op[0] == "flip":
            b[op[1] % len(b)] ^= 1 << (op[2] % 8)
        elif op[0] == "write":
            pos = op[1] % len(b)
            b[pos:pos + len(op[2])] = op[2]
        elif op[0] == "zero":
            pos = op[1] % len(b)
            b[pos:pos + op[2]] = bytes(min(op[2], len(b) - pos))
    return bytes(b)


def read_one(path: Path) -> tuple[str | None, float]:
    """``(failure, seconds)``: failure is None when the file read or was refused with a medcls error."""
    from medcls import read
    from medcls.errors import MedclsError

    t0 = time.perf_counter()
    try:
        arr, meta = read(path)
        assert tuple(arr.shape) == tuple(meta.shape), "array and metadata disagree on the shape"
        failure = None
    except MedclsError:
        failure = None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - exactly what the fuzzer looks for (a Rust decoder's panic too)
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        failure = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(exc)[:120]}"
    secs = time.perf_counter() - t0
    if failure is None and secs > TIME_LIMIT_S:
        failure = f"slow: {secs:.1f} s"
    return failure, secs


def ops_strategy():
    from hypothesis import strategies as st

    pos = st.integers(0, 1 << 20)
    op = st.one_of(st.tuples(st.just("truncate"), pos), st.tuples(st.just("flip"), pos, st.integers(0, 7)),
                   st.tuples(st.just("write"), pos, st.binary(min_size=1, max_size=8)),
                   st.tuples(st.just("zero"), pos, st.integers(1, 64)))
    return st.lists(op, min_size=1, max_size=6)


def fuzz(kind: str, suffix: str, data: bytes, examples: int, workdir: Path, seed: int = 0) -> dict:
    from hypothesis import HealthCheck, given, settings

    failures: dict[str, int] = {}
    stats = {"executions": 0, "seconds": 0.0, "slowest": 0.0}
    path = workdir / f"mutant{suffix}"

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(ops_strategy())
    def run(ops):
        path.write_bytes(mutate(data, ops))
        failure, secs = read_one(path)
        stats["executions"] += 1
        stats["seconds"] += secs
        stats["slowest"] = max(stats["slowest"], secs)
        if failure:
            failures[failure] = failures.get(failure, 0) + 1

    run()
    return {"kind": kind, **stats, "unique_failures": len(failures), "failures": failures}


def main(argv=None) -> int:
    from _common import machine, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1500, help="mutants per source file")
    a = ap.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for kind, (suffix, data) in sources().items():
            r = fuzz(kind, suffix, data, a.examples, Path(d))
            rows.append(r)
            print(f"{kind:14s} {r['executions']:6d} reads  {r['seconds']:7.1f} s  slowest {r['slowest']:.2f} s  "
                  f"unique failures {r['unique_failures']}", flush=True)
            for f, n in r["failures"].items():
                print(f"    {n:5d} x {f}")
    total = {"executions": sum(r["executions"] for r in rows), "seconds": round(time.perf_counter() - t0, 1),
             "unique_failures": sum(r["unique_failures"] for r in rows),
             "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    print(f"\n{total['executions']} reads in {total['seconds']} s, {total['unique_failures']} unique failures, "
          f"peak memory {total['peak_rss_mib']} MiB")
    out = write_results("fuzz", {"machine": machine(), "command": "python bench/fuzz.py " + " ".join(argv or sys.argv[1:]),
                                 "examples_per_source": a.examples, "time_limit_s": TIME_LIMIT_S, "total": total,
                                 "sources": rows})
    print(f"wrote {out}")
    return 1 if total["unique_failures"] else 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
