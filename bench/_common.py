"""Shared helpers for the bench scripts: machine description, published rows, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("MEDCLS_BENCH_RESULTS", HERE / "results"))
REFERENCE = HERE.parent.parent / "shared" / "reference" / "published_results.json"


def machine() -> dict:
    import torch

    cpu, flags = platform.processor() or "", None
    try:
        info = {}  # the first processor's fields
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        cpu = info.get("model name", cpu)
        flags = set(info["flags"].split()) if "flags" in info else None
    except OSError:
        pass
    # two machines may share a name ("AMD EPYC") and differ 4-5x in speed by their vector units
    vector = None if flags is None else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "vector": vector, "cores": n, "gpu": gpu, "python": sys.version.split()[0],
            "torch": torch.__version__, "platform": platform.platform()}


def published() -> dict:
    if not REFERENCE.is_file():
        return {}
    return json.loads(REFERENCE.read_text())


def write_results(name: str, payload: dict) -> Path:
    from medcls._atomic import write_json

    out = RESULTS / f"{name}.json"
    write_json(out, payload)
    return out
