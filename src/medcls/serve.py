"""``medcls serve``: trained runs behind an HTTP API and a web page, safe to put on a network.

``create_app(runs, ...)`` builds the FastAPI application (mount it in your own
ASGI stack, or let ``medcls serve`` run it under uvicorn):

- ``GET /health``, ``GET /ready``, ``GET /v1/models``;
- ``POST /v1/models/{name}/predict`` with one uploaded file (PNG/JPEG/TIFF, DICOM,
  NIfTI, or a zip of one DICOM series) -> class, probabilities, per-slice results
  for volumes, the preparation applied; ``?explain=gradcam`` adds the heat map
  over the image as a PNG (base64), ``?preview=true`` the image as the model saw it;
- errors are JSON ``{"error": ..., "detail": ...}``: 400 unreadable, 401/403
  token, 404 unknown model, 413 too large (upload, or an image beyond the pixel
  budget), 415 unsupported type, 422 bad parameters; never a traceback.

Requests are decoded in a thread pool; forward passes go through a micro-batcher
(requests arriving within ``max_wait_ms`` share one pass, up to ``max_batch``
items, as Triton's dynamic batcher does). Nothing from an upload reaches a log:
not its file name (uploads are stored under a neutral name), not a header value.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import shutil
import tempfile
import zipfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from medcls._version import __version__
from medcls.errors import LimitError, MedclsError, ReadError, UnsupportedFileError
from medcls.runs import CNNRun, load_run

__all__ = ["create_app", "ServedModel", "MicroBatcher", "LOOPBACK"]

LOG = logging.getLogger("medcls.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXPLAIN_METHODS = ("gradcam", "gradcam++", "occlusion")
_STATIC = Path(__file__).resolve().parent / "static"
# what an upload may be, by its name's ending or, failing that, by its first bytes
_SUFFIXES = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".tif": ".tif", ".tiff": ".tif", ".bmp": ".bmp",
             ".dcm": ".dcm", ".dicom": ".dcm", ".ima": ".dcm", ".nii": ".nii", ".nii.gz": ".nii.gz", ".zip": ".zip"}
_ZIP_MEMBERS = 4096  # files in one zipped series


def _sniff(head: bytes) -> str | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if head[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ".dcm"
    if head[:2] == b"\x1f\x8b":
        return ".nii.gz"
    if head[:4] == b"PK\x03\x04":
        return ".zip"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"n+2\x00"):
        return ".nii"
    return None


def _suffix_of(filename: str | None, head: bytes) -> str:
    name = (filename or "").lower()
    for ending, suffix in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(ending):
            return suffix
    found = _sniff(head)
    if found is None:
        raise UnsupportedFileError("upload", "unsupported file type (expected DICOM, NIfTI, PNG/JPEG/TIFF, or a "
                                             "zip of one DICOM series)")
    return found


def _unzip_series(archive: Path, into: Path, budget: int) -> Path:
    """The members of a zipped DICOM series as flat files in ``into``, within a byte budget."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReadError("upload", f"not a readable zip archive ({type(exc).__name__})") from exc
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        if not members:
            raise ReadError("upload", "the zip archive holds no files")
        if len(members) > _ZIP_MEMBERS:
            raise LimitError("upload", f"the zip archive holds {len(members):,} files, more than {_ZIP_MEMBERS:,}")
        if sum(i.file_size for i in members) > budget:
            raise LimitError("upload", f"the zip archive would unpack to more than {budget:,} bytes")
        into.mkdir()
        total = 0
        for k, info in enumerate(members):
            # flat, neutral names: no path from the archive is ever used (no traversal, no names in logs)
            with zf.open(info) as src, open(into / f"{k:05d}.dcm", "wb") as dst:
                while chunk := src.read(1 << 20):
                    total += len(chunk)
                    if total > budget:  # a member that lies about its size
                        raise LimitError("upload", f"the zip archive unpacks to more than {budget:,} bytes")
                    dst.write(chunk)
    return into


@dataclass
class ServedModel:
    """One run as the service serves it: its description and a function from uint8 items to probabilities."""

    name: str
    run: object
    backend: str = "torch"

    def __post_init__(self):
        self._onnx = None
        if self.backend == "onnx":
            self._onnx = _OnnxBackend(self.run)
        elif isinstance(self.run, CNNRun):
            _ = self.run.model  # load the weights now, not on the first request

    def predict_items(self, x: np.ndarray) -> np.ndarray:
        return self._onnx(x) if self._onnx is not None else self.run.predict_items(x)

    def describe(self) -> dict:
        c = self.run.config
        metrics = self.run.folder.read_metrics().get("test", {})
        model = getattr(c, "model", None)
        return {"name": self.name, "kind": c.kind, "model": c.model_name, "task": c.data.task,
                "classes": list(c.data.class_names), "modality": c.data.modality,
                "input_size": getattr(model, "input_size", None), "channels": getattr(model, "in_channels", None),
                "preparation": self.run.preparation.describe(self.run.preparation.modality, False),
                "backend": self.backend, "explain": isinstance(self.run, CNNRun),
                "test_metrics": {k: metrics[k] for k in ("auc", "acc", "sensitivity", "specificity", "n")
                                 if k in metrics}}


class _OnnxBackend:
    """ONNX Runtime on the run's exported ``model.onnx`` (``medcls export RUN --onnx``)."""

    def __init__(self, run):
        if not isinstance(run, CNNRun):
            raise MedclsError(f"{run.root}: --backend onnx serves CNN runs only")
        path = run.folder.root / "model.onnx"
        if not path.is_file():
            raise MedclsError(f"{path} does not exist: run `medcls export {run.root} --onnx` first")
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.run = run

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        xb = self.run.inputs(x).float().contiguous().cpu().numpy()  # resized and normalised as for PyTorch
        logits = torch.from_numpy(self.session.run(None, {"image": xb})[0])
        return (torch.sigmoid(logits) if self.run.task == "multilabel" else torch.softmax(logits, 1)).numpy()


class MicroBatcher:
    """Requests arriving within ``max_wait_ms`` share one forward pass of up to ``max_batch`` items.

    A batch waits only while other requests are on their way (announced, still
    being decoded): a lone request runs at once, so batching costs no latency
    when there is nothing to batch with.
    """

    def __init__(self, fn, max_batch: int = 64, max_wait_ms: float = 5.0):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.passes = 0  # forward passes run (a measure of how much batching happened)
        self.arriving = 0  # requests announced and not yet submitted

    def announce(self) -> None:
        self.arriving += 1

    def withdraw(self) -> None:
        self.arriving -= 1

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, items: np.ndarray) -> np.ndarray:
        """Probabilities of ``items``; call :meth:`announce` first, when the request arrives."""
        fut = asyncio.get_running_loop().create_future()
        self.withdraw()
        await self.queue.put((items, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            n = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                if self.queue.empty() and self.arriving <= 0:
                    break  # nobody else is on the way: do not wait for them
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                n += len(item[0])
            x = np.concatenate([items for items, _ in batch])
            try:
                probs = await asyncio.to_thread(self.fn, x)
                self.passes += 1
            except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            start = 0
            for items, fut in batch:
                if not fut.done():
                    fut.set_result(probs[start:start + len(items)])
                start += len(items)


def _png_b64(img: np.ndarray) -> str:
    import io

    from PIL import Image

    arr = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _prepare_upload(run, path: Path) -> tuple[np.ndarray, dict]:
    """The upload (file or unpacked series folder) as the run's uint8 items, and what the answer says of it."""
    p, prep = run.read_prepared(path), run.preparation
    meta = p.meta
    return p.items, {"modality": meta.modality, "shape": list(meta.shape), "volume": bool(meta.is_volume),
                     "preparation": prep.describe(prep.family_of(meta.modality), meta.is_volume),
                     "warnings": p.notes}


def create_app(runs, *, token: str | None = None, max_upload_mb: float = 64, batching: bool = True,
               max_batch: int = 64, max_wait_ms: float = 5.0, backend: str = "torch", device: str = "auto"):
    """The FastAPI application serving ``runs`` (run folders, or ``{name: folder}``).

    Args:
        token: when given, every ``/v1`` request needs ``Authorization: Bearer <token>``.
        max_upload_mb: the largest request body; refused while it streams in (413).
        batching: share forward passes between concurrent requests.
        backend: ``torch`` or ``onnx`` (needs ``medcls export RUN --onnx``).
    """
    if backend not in ("torch", "onnx"):
        raise MedclsError(f"unknown backend {backend!r}; choose torch or onnx")
    named = dict(runs) if isinstance(runs, dict) else {}
    if not named:
        for r in runs:
            base, name, k = Path(r).resolve().name, Path(r).resolve().name, 1
            while name in named:
                k += 1
                name = f"{base}-{k}"
            named[name] = r
    models = {name: ServedModel(name, load_run(path, device), backend) for name, path in named.items()}
    limit = int(max_upload_mb * 1024 * 1024)
    batchers = {n: MicroBatcher(m.predict_items, max_batch, max_wait_ms) for n, m in models.items()} \
        if batching else {}

    @asynccontextmanager
    async def lifespan(_app):
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():
            await b.stop()

    app = FastAPI(title="medcls", version=__version__, lifespan=lifespan,
                  description="Classify medical images with trained medcls runs.")
    app.state.models, app.state.batchers = models, batchers

    class BodyTooLarge(HTTPException):
        def __init__(self):
            super().__init__(413, f"the request body is larger than {max_upload_mb:g} MB (--max-upload-mb)")

    class LimitBody:
        """Refuse a body over the limit: at once by its Content-Length, else as soon as it streams past it."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                response = _error(413, names[413], BodyTooLarge().detail)
                return await response(scope, receive, send)
            seen = 0

            async def counted():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise BodyTooLarge()
                return message

            return await self.inner(scope, counted, send)

    app.add_middleware(LimitBody)

    def _error(status: int, error: str, detail) -> JSONResponse:
        return JSONResponse({"error": error, "detail": detail}, status_code=status,
                            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    names = {400: "unreadable input", 401: "authentication required", 403: "forbidden", 404: "not found",
             405: "method not allowed", 413: "too large", 415: "unsupported media type",
             422: "bad parameters"}

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc):
        return _error(exc.status_code, names.get(exc.status_code, "error"), exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc):
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return _error(422, names[422], detail)

    @app.exception_handler(Exception)
    async def _internal_error(_request, exc):
        LOG.error("internal error: %s", type(exc).__name__)  # the type only: messages may quote input
        return _error(500, "internal error", "the server failed on this request; its log names the error type")

    bearer = HTTPBearer(auto_error=False)

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None:
            raise HTTPException(401, "send Authorization: Bearer <token>")
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(403, "wrong token")

    @app.get("/health", summary="The service is alive")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Every model is loaded")
    async def ready() -> dict:
        return {"status": "ready", "models": list(models)}

    # the Bearer scheme is declared (and checked) only when there is a token to check
    guarded = [Depends(authorised)] if token is not None else []

    @app.get("/v1/models", dependencies=guarded, summary="The served models")
    async def list_models() -> list[dict]:
        return [m.describe() for m in models.values()]

    @app.post("/v1/models/{name}/predict", dependencies=guarded, summary="Classify one upload",
              responses={400: {"description": "unreadable"}, 404: {"description": "unknown model"},
                         413: {"description": "too large"}, 415: {"description": "unsupported type"}})
    async def predict(name: str, request: Request, file: UploadFile = File(..., description="PNG/JPEG/TIFF, "
                                                                                           "DICOM, NIfTI, or a zip "
                                                                                           "of one DICOM series"),
                      explain: str | None = Query(None, pattern="^(gradcam|gradcam\\+\\+|occlusion)$",
                                                  description="add a heat map (PNG, base64)"),
                      preview: bool = Query(False, description="add the image as the model saw it (PNG, base64)")
                      ) -> dict:
        served = models.get(name)
        if served is None:
            raise HTTPException(404, f"no model {name!r}; served: {', '.join(models)}")
        if explain and not isinstance(served.run, CNNRun):
            raise HTTPException(422, f"{name} is not a CNN run: heat maps need one")
        batcher = batchers.get(name)
        if batcher is not None:
            batcher.announce()
        submitted = False
        work = Path(tempfile.mkdtemp(prefix="medcls-serve-"))
        try:
            head = await file.read(512)
            await file.seek(0)
            try:
                suffix = _suffix_of(file.filename, head)
                target = work / f"upload{suffix}"
                with open(target, "wb") as fh:
                    while chunk := await file.read(1 << 20):
                        fh.write(chunk)
                if suffix == ".zip":
                    target = await asyncio.to_thread(_unzip_series, target, work / "series", limit * 8)
                items, about = await asyncio.to_thread(_prepare_upload, served.run, target)
            except UnsupportedFileError as exc:
                raise HTTPException(415, exc.problem) from None
            except LimitError as exc:
                raise HTTPException(413, exc.problem) from None
            except ReadError as exc:
                raise HTTPException(400, exc.problem) from None
            except MedclsError as exc:
                raise HTTPException(400, str(exc).replace(str(work), "upload")) from None
            submitted = True
            probs_items = await (batcher.submit(items) if batcher is not None else
                                 asyncio.to_thread(served.predict_items, items))
            probs = probs_items.mean(0)
            classes = list(served.run.class_names)
            out = {"model": name, "task": served.run.task,
                   "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)}, **about,
                   "items": len(items)}
            if served.run.task != "multilabel":
                out["class"] = served.run.decide(probs)  # at the run's operating point, when it has one
                if served.run.threshold is not None:
                    out["threshold"] = served.run.threshold
            else:
                out["labels"] = served.run.decide(probs)
            if len(items) > 1:
                out["per_item"] = [[round(float(v), 6) for v in row] for row in probs_items]
            if preview:
                mid = items[int(np.argmax(probs_items[:, int(probs.argmax())]))].astype(np.float32) / 255.0
                if mid.ndim == 4:  # a whole volume (C, D, H, W): its central axial slice
                    mid = mid[:, mid.shape[1] // 2]
                out["preview_png"] = _png_b64(np.moveaxis(mid, 0, -1) if mid.shape[0] == 3 else mid[mid.shape[0] // 2])
            if explain:
                out["explain"] = await asyncio.to_thread(_heat_map, served.run, target, explain, work / "maps")
            return out
        finally:
            if batcher is not None and not submitted:
                batcher.withdraw()
            await file.close()
            shutil.rmtree(work, ignore_errors=True)

    if _STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=_STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def page():
            return FileResponse(_STATIC / "index.html")

    return app


def _heat_map(run, target: Path, method: str, out: Path) -> dict:
    from medcls.explain_run import explain_files

    res = explain_files(run, [target], out, method)[0]
    if isinstance(res, ReadError):
        raise res
    rec = dict(res.record)
    rec.pop("path", None)
    rec.pop("figure", None)
    return {**rec, "png": base64.b64encode(res.figure.read_bytes()).decode()}


def serve(runs, *, host: str = "127.0.0.1", port: int = 8000, token_file: Path | None = None,
          max_upload_mb: float = 64, workers: int = 1, backend: str = "torch", batching: bool = True,
          device: str = "auto") -> None:
    """Run the service under uvicorn until SIGINT / SIGTERM (which drain requests in flight)."""
    import uvicorn

    token = None
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise MedclsError(f"{token_file}: cannot read the token file ({exc.strerror})") from exc
        if len(token) < 16:
            raise MedclsError(f"{token_file}: the token must be at least 16 characters")
    if host not in LOOPBACK and token is None:
        raise MedclsError(f"--host {host} puts the service on a network: give --token-file (a Bearer token), "
                          "or keep the default 127.0.0.1")
    if workers > 1:
        import os

        os.environ["MEDCLS_SERVE_CONFIG"] = __import__("json").dumps(
            {"runs": [str(r) for r in runs], "token": token, "max_upload_mb": max_upload_mb, "backend": backend,
             "batching": batching, "device": device})
        uvicorn.run("medcls.serve:_app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level="info", timeout_graceful_shutdown=30)
        return
    app = create_app(runs, token=token, max_upload_mb=max_upload_mb, batching=batching, backend=backend,
                     device=device)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


def _app_from_env():
    """The app each uvicorn worker process builds (``--workers N``)."""
    import json
    import os

    cfg = json.loads(os.environ["MEDCLS_SERVE_CONFIG"])
    return create_app(cfg.pop("runs"), **cfg)
