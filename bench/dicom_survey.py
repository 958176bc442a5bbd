"""Read every DICOM file shipped with pydicom and pydicom-data; count what decodes.

    python bench/dicom_survey.py        # prints a table, writes bench/results/dicom_survey.json
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pydicom

from medcls._atomic import write_json
from medcls.errors import ReadError
from medcls.io import read
from medcls.io.samples import sample_dicoms


def main() -> int:
    warnings.simplefilter("ignore")
    rows, tally = [], Counter()
    for p in sample_dicoms():
        try:
            has_pixels = "Rows" in pydicom.dcmread(p, stop_before_pixels=True, force=True)
        except Exception:
            has_pixels = True
        t0 = time.perf_counter()
        try:
            arr, meta = read(p)
            status, detail = "decoded", f"{meta.modality} {meta.photometric} {meta.transfer_syntax}"
        except ReadError as exc:
            status = "rejected" if has_pixels else "no-pixel-data"
            detail = exc.problem.splitlines()[0][:160]
        tally[status] += 1
        rows.append({"file": p.name, "status": status, "detail": detail, "seconds": round(time.perf_counter() - t0, 4)})
    with_pixels = tally["decoded"] + tally["rejected"]
    summary = {"files": len(rows), "with_pixel_data": with_pixels, "decoded": tally["decoded"],
               "rejected": tally["rejected"], "no_pixel_data": tally["no-pixel-data"],
               "pydicom": pydicom.__version__, "python": sys.version.split()[0]}
    for r in rows:
        if r["status"] == "rejected":
            print(f"rejected  {r['file']:45s} {r['detail']}")
    print(f"\n{summary['decoded']} of {with_pixels} files with pixel data decode "
          f"({summary['no_pixel_data']} more carry no image: RT plans, SR, ECG...)")
    out = Path(__file__).parent / "results" / "dicom_survey.json"
    write_json(out, {"summary": summary, "files": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
