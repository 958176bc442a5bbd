"""No patient data leaves a file: a marker in every identifying header field appears in no output at all."""

import json
import shutil

import numpy as np
import pydicom
import pytest

from tests.conftest import dcm, run_cli

MARKER = "ZQXSECRET42"
BIRTH_DATE = "19420817"  # a date cannot carry the marker's letters
FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyDescription",
          "SeriesDescription", "ReferringPhysicianName", "OperatorsName")


def _marked(path, seed: int, bad_value: bool = False):
    """CT_small.dcm with the marker in every identifying field (and, if asked, in an invalid number)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    for f in FIELDS:
        setattr(ds, f, BIRTH_DATE if f == "PatientBirthDate" else MARKER)
    px = ds.pixel_array.astype(np.int32) + np.random.default_rng(seed).integers(0, 200, ds.pixel_array.shape)
    ds.PixelData = px.astype(ds.pixel_array.dtype).tobytes()
    if bad_value:  # pydicom warns about invalid values by quoting them; a raw element is written as it is
        raw = MARKER.encode() + b" "  # even length
        ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", len(raw), raw, 0, False, True)  # InstanceNumber
    ds.save_as(path)


def _leaks(text: str) -> bool:
    return MARKER in text or BIRTH_DATE in text


def test_no_identifier_reaches_any_output(tmp_path, capsys, recwarn):
    data = tmp_path / "data"
    for i in range(12):
        cls = data / ("a" if i % 2 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        _marked(cls / f"{i}.dcm", i, bad_value=i == 0)
    single = data / "a" / "1.dcm"
    seen = []
    for cmd in (["info", single], ["info", single, "--json"], ["info", data / "b" / "0.dcm", "--json"],
                ["data", data], ["data", data, "--json"]):
        rc, out, err = run_cli(cmd, capsys)
        assert rc == 0, err
        seen += [out, err]
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", data, "--size", "28", "--out", run, "--model", "alexnet_onetower",
                            "--model-arg", "fc_width=64", "--epochs", "1", "--batch-size", "32", "--device", "cpu"], capsys)
    assert rc == 0, err
    seen += [out, err]
    for cmd in (["evaluate", run], ["predict", run, data, "--json"], ["predict", run, single]):
        rc, out, err = run_cli(cmd, capsys)
        assert rc == 0, err
        seen += [out, err]
    # a broken file with the marker: the error names the file, never a header value
    broken = tmp_path / "broken.dcm"
    shutil.copy(single, broken)
    broken.write_bytes(broken.read_bytes()[:-3000])
    rc, out, err = run_cli(["predict", run, broken], capsys)
    assert rc == 2 and str(broken) in err
    seen += [out, err]
    files = [p for p in run.rglob("*") if p.is_file() and p.suffix in (".json", ".html", ".csv")]
    assert {p.name for p in files} >= {"config.json", "metrics.json", "report.html", "history.csv"}
    seen += [p.read_text(errors="replace") for p in files]
    seen += [str(w.message) for w in recwarn]
    leaked = [s[:300] for s in seen if _leaks(s)]
    assert not leaked, leaked
    assert json.loads((run / "config.json").read_text())["data"]["modality"] == "CT"  # what is kept is technical


@pytest.mark.parametrize("field", FIELDS[:3])
def test_the_marker_is_really_in_the_file(field, tmp_path):
    """The test above would pass vacuously if the marker never made it into the header."""
    _marked(tmp_path / "x.dcm", 0)
    assert str(getattr(pydicom.dcmread(tmp_path / "x.dcm"), field)) in (MARKER, BIRTH_DATE)
