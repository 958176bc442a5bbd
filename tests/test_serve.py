"""medcls serve: the API in-process and as a real uvicorn process, its limits, its schema, and its page."""

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medcls.errors import MedclsError
from tests.conftest import dcm

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medcls.serve import create_app, serve  # noqa: E402

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def run(tmp_path_factory, medmnist_dir):
    from medcls.cli import main

    out = tmp_path_factory.mktemp("serve") / "pneu"
    assert main(["train", "--data", "pneumoniamnist", "--data-dir", str(medmnist_dir), "--model",
                 "alexnet_onetower", "--model-arg", "fc_width=64", "--epochs", "1", "--max-train-samples", "256", "--out", str(out),
                 "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_app([run], device="cpu"), raise_server_exceptions=False) as c:
        yield c


def _png_bytes(medmnist_dir) -> bytes:
    x = np.load(medmnist_dir / "pneumoniamnist.npz")["test_images"][0]
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    return buf.getvalue()


def _png_bomb() -> bytes:
    """A PNG whose header says 30000 x 30000 pixels (its data is a few bytes)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", 30000, 30000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _deflate_bomb(path: Path, inflated_mib: int = 64) -> Path:
    """A deflated-transfer-syntax DICOM whose data set inflates to ``inflated_mib`` MiB (a few hundred KB on disk)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    ds.add_new(0x00091010, "OB", b"\0" * (inflated_mib << 20))  # a private element of zeros
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 1 << 20
    return path


def _zipped_series(tmp_path: Path) -> bytes:
    from tests.io.test_volumes import _write_series

    folder = tmp_path / "series"
    folder.mkdir()
    _write_series(folder, n=5)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"patient_dir/{f.name}")
    return buf.getvalue()


# ---------------------------------------------------------------- the API, in-process


def test_health_ready_and_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["models"] == ["pneu"]
    (m,) = client.get("/v1/models").json()
    assert m["classes"] == ["normal", "pneumonia"] and m["task"] == "binary" and m["input_size"] == 28
    assert 0 <= m["test_metrics"]["auc"] <= 1 and "preparation" in m


def test_predict_real_dicom_nifti_png_and_a_zipped_series(client, medmnist_dir, tmp_path):
    import nibabel.testing

    r = client.post("/v1/models/pneu/predict?preview=true&explain=gradcam",
                    files={"file": ("ct.dcm", dcm("CT_small.dcm").read_bytes())})
    body = r.json()
    assert r.status_code == 200, body
    assert body["class"] in ("normal", "pneumonia") and abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert body["modality"] == "CT" and any("not seen CT" in w for w in body["warnings"])
    assert Image.open(io.BytesIO(__import__("base64").b64decode(body["preview_png"]))).size == (28, 28)
    assert body["explain"]["method"] == "gradcam" and body["explain"]["png"]
    nifti = Path(nibabel.testing.data_path) / "anatomical.nii"
    r = client.post("/v1/models/pneu/predict", files={"file": ("brain.nii", nifti.read_bytes())})
    assert r.status_code == 200 and r.json()["items"] > 1 and len(r.json()["per_item"]) == r.json()["items"]
    r = client.post("/v1/models/pneu/predict", files={"file": ("chest.png", _png_bytes(medmnist_dir))})
    assert r.status_code == 200 and r.json()["items"] == 1
    r = client.post("/v1/models/pneu/predict", files={"file": ("series.zip", _zipped_series(tmp_path))})
    assert r.status_code == 200 and r.json()["items"] == 5 and r.json()["volume"], r.json()
    # no name or path of the upload comes back
    assert "brain" not in json.dumps(r.json()) and "patient_dir" not in json.dumps(r.json())


def test_every_error_has_its_status_and_one_shape(client, tmp_path, monkeypatch):
    import tempfile

    # This test's uploads get a temp folder of their own: another xdist worker's
    # service makes medcls-serve-* folders in the shared one while this runs.
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    cases = [
        (client.post("/v1/models/pneu/predict", files={"file": ("notes.txt", b"hello")}), 415),
        (client.post("/v1/models/pneu/predict", files={"file": ("x.png", b"\x89PNG\r\n\x1a\nbroken")}), 400),
        (client.post("/v1/models/pneu/predict", files={"file": ("x.dcm", dcm("CT_small.dcm").read_bytes()[:3000])}),
         400),
        (client.post("/v1/models/pneu/predict", files={"file": ("bomb.png", _png_bomb())}), 413),
        (client.post("/v1/models/nope/predict", files={"file": ("x.png", b"x")}), 404),
        (client.post("/v1/models/pneu/predict"), 422),
        (client.post("/v1/models/pneu/predict?explain=lime", files={"file": ("x.png", b"x")}), 422),
        (client.get("/v1/nothing"), 404),
    ]
    for r, status in cases:
        body = r.json()
        assert r.status_code == status, (status, body)
        assert set(body) == {"error", "detail"} and "Traceback" not in r.text
    assert [p.name for p in temp.glob("medcls-serve-*")] == []  # every upload's folder is gone, errors too


def test_a_deflate_bomb_is_refused_and_the_service_still_answers(client, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLS_MAX_PIXELS", str(1 << 22))  # inflation budget 16 MiB
    bomb = _deflate_bomb(tmp_path / "bomb.dcm")
    r = client.post("/v1/models/pneu/predict", files={"file": ("b.dcm", bomb.read_bytes())})
    assert r.status_code == 413 and "inflates to more than" in r.json()["detail"]
    assert client.get("/health").status_code == 200


def test_the_token_rule(run):
    with TestClient(create_app([run], token=TOKEN, device="cpu")) as c:
        assert c.get("/health").status_code == 200  # liveness stays open
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    with pytest.raises(MedclsError, match="--token-file"):
        serve([run], host="0.0.0.0")


def test_the_upload_limit_while_streaming(run):
    with TestClient(create_app([run], max_upload_mb=1, device="cpu")) as c:
        big = c.post("/v1/models/pneu/predict", files={"file": ("x.png", b"\0" * (2 << 20))})
        assert big.status_code == 413

        def chunks():  # no Content-Length: refused as the body streams past the limit
            for _ in range(8):
                yield b"\0" * (512 << 10)

        r = c.post("/v1/models/pneu/predict", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413 and r.json()["error"] == "too large"


def test_micro_batching_shares_forward_passes(run):
    import asyncio

    import httpx

    app = create_app([run], device="cpu", max_wait_ms=50)
    png = io.BytesIO()
    Image.fromarray((np.arange(784).reshape(28, 28) % 251).astype(np.uint8)).save(png, format="PNG")

    async def burst():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                rs = await asyncio.gather(*[c.post("/v1/models/pneu/predict",
                                                   files={"file": ("a.png", png.getvalue())}) for _ in range(8)])
        return rs

    rs = asyncio.run(burst())
    assert all(r.status_code == 200 for r in rs)
    assert len({json.dumps(r.json()["probabilities"]) for r in rs}) == 1  # the same answer for the same image
    assert app.state.batchers["pneu"].passes < 8  # fewer forward passes than requests


def test_the_onnx_backend_answers_like_torch(run, client, capsys):
    from tests.conftest import run_cli

    rc, out, err = run_cli(["export", run], capsys)
    assert rc == 0 and "matches PyTorch" in out, err
    with TestClient(create_app([run], backend="onnx", device="cpu")) as c:
        a = c.post("/v1/models/pneu/predict", files={"file": ("ct.dcm", dcm("CT_small.dcm").read_bytes())}).json()
    b = client.post("/v1/models/pneu/predict", files={"file": ("ct.dcm", dcm("CT_small.dcm").read_bytes())}).json()
    assert a["class"] == b["class"]
    assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)


def test_the_schema_holds_under_schemathesis(run):
    """Generated requests against /openapi.json: no 500, and every response matches the schema."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app([run], device="cpu", batching=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(schema.as_strategy())
    def check(case):
        response = case.call()
        seen.append((case.operation.label, response.status_code))
        case.validate_response(response)

    check()
    assert len({label for label, _ in seen}) == 4 and all(status < 500 for _, status in seen), seen


# ---------------------------------------------------------------- a real uvicorn process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serverlog") / "server.log"
    env = {**os.environ, "MEDCLS_MAX_PIXELS": str(1 << 22)}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "medcls", "serve", str(run), "--port", str(port),
                                 "--device", "cpu", "--max-upload-mb", "16"], stdout=fh, stderr=subprocess.STDOUT,
                                env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(base + "/ready", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(log.read_text()[-3000:])
            time.sleep(0.25)
    else:
        proc.kill()
        raise AssertionError("the server did not start: " + log.read_text()[-3000:])
    yield base, proc, log
    if proc.poll() is None:
        proc.kill()


def _post(base: str, path: str, name: str, data: bytes) -> tuple[int, dict]:
    import httpx

    r = httpx.post(base + path, files={"file": (name, data)}, timeout=60)
    return r.status_code, r.json()


def test_a_real_server_predicts_and_refuses(server, tmp_path):
    base, proc, log = server
    status, body = _post(base, "/v1/models/pneu/predict", "ct.dcm", dcm("CT_small.dcm").read_bytes())
    assert status == 200 and body["class"] in ("normal", "pneumonia")
    status, body = _post(base, "/v1/models/pneu/predict", "b.dcm", _deflate_bomb(tmp_path / "b.dcm").read_bytes())
    assert status == 413, body
    status, body = _post(base, "/v1/models/pneu/predict", "b.png", _png_bomb())
    assert status == 413, body
    assert urllib.request.urlopen(base + "/health", timeout=5).status == 200
    from tests.test_privacy import MARKER, _marked

    _marked(tmp_path / "marked.dcm", 0, bad_value=True)  # identifying fields, and an invalid value, hold MARKER
    status, body = _post(base, "/v1/models/pneu/predict", "marked.dcm", (tmp_path / "marked.dcm").read_bytes())
    assert status == 200 and MARKER not in json.dumps(body)
    text = log.read_text()
    assert "ct.dcm" not in text and "b.png" not in text and "Traceback" not in text  # no upload name in the log
    assert MARKER not in text and "marked" not in text


def test_a_70_mb_body_is_refused_before_it_is_read(server):
    base, proc, _ = server
    before = _rss_mib(proc.pid)
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/models/pneu/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                  b"boundary=b\r\nContent-Length: %d\r\n\r\n" % (70 << 20))
        sent = 0
        try:
            while sent < 70 << 20:
                s.sendall(b"\0" * (1 << 20))
                sent += 1 << 20
        except OSError:
            pass  # the server answered and closed: the rest of the body was never read
        reply = s.recv(4096).decode(errors="replace")
    assert " 413 " in reply.split("\r\n")[0], reply[:200]
    assert _rss_mib(proc.pid) - before < 35  # far less than the 70 MB body
    assert urllib.request.urlopen(base + "/health", timeout=5).status == 200


def test_sigterm_stops_the_server_cleanly(server):
    base, proc, log = server
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    # uvicorn drains, shuts the app down, then re-raises the signal it caught (exit by SIGTERM)
    assert rc in (0, -signal.SIGTERM) and "Application shutdown complete" in log.read_text(), log.read_text()[-2000:]


# ---------------------------------------------------------------- the page, in a real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_the_page_in_chromium(run, tmp_path, request):
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run does)")
        pytest.skip("no chromium here (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medcls", "serve", str(run), "--port", str(port), "--device",
                             "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(base + "/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        upload = tmp_path / "ct.dcm"
        shutil.copy(dcm("CT_small.dcm"), upload)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            try:
                page.goto(base + "/")
                page.wait_for_selector("#model option", state="attached")
                page.set_input_files("#file", str(upload))
                page.keyboard.press("Tab")
                page.click("#go")
                page.wait_for_selector("#result:not([hidden])", timeout=60_000)
                verdict = page.inner_text("#class")
                probs = [float(t) for t in page.locator("#bars .prob").all_inner_texts()]
                assert verdict in ("normal", "pneumonia") and len(probs) == 2 and abs(sum(probs) - 1) < 0.01
                assert page.locator("#heat-fig").is_visible()
                page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"})
                page.click("#go")
                page.wait_for_selector("#error:not([hidden])")
                assert "unsupported" in page.inner_text("#error")
            except Exception:
                shot = Path(request.config.rootpath) / "test-artifacts"
                shot.mkdir(exist_ok=True)
                page.screenshot(path=str(shot / "serve_page.png"))
                raise
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
