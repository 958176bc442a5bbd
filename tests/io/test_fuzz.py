"""Property: any truncation, bit flip or overwrite of a real file reads back or is refused with a medcls error.

The same harness as ``bench/fuzz.py`` (which runs it longer and reports), on fewer examples per source.
"""

import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fuzz  # noqa: E402

SOURCES = fuzz.sources()


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_mutants_read_or_are_refused_cleanly(kind, tmp_path):
    suffix, data = SOURCES[kind]
    r = fuzz.fuzz(kind, suffix, data, examples=40, workdir=tmp_path)
    assert r["executions"] >= 40 and not r["failures"], r["failures"]
    assert r["slowest"] < fuzz.TIME_LIMIT_S


def test_the_harness_sees_a_failure(tmp_path, monkeypatch):
    """A reader that raises something other than a medcls error is reported, not hidden."""
    import medcls

    monkeypatch.setattr(medcls, "read", lambda path: {}["boom"])
    failure, _ = fuzz.read_one(tmp_path / "x.png")
    assert failure and failure.startswith("KeyError")
