"""Load test of `medcls serve` on loopback, beside the plain FastAPI endpoint a user would write.

    python bench/serve.py                  # trains a small run, then 1 / 4 / 16 concurrent clients
    python bench/serve.py --run runs/pneu  # serve a run you trained
    python bench/serve.py --quick          # smoke run

Each configuration is a fresh server process on 127.0.0.1; a fixed number of
requests (one 28-px chest X-ray PNG from PneumoniaMNIST's test split) is sent by
N concurrent clients, and the run stops by itself. Configurations: medcls with
micro-batching, without it, with ONNX Runtime (after `medcls export`), and the
baseline: a FastAPI `def` endpoint that opens the upload with Pillow and calls
the same PyTorch model once per request. Requests/s and p50 / p95 / p99 latency;
any error fails the bench. The clients run on the same cores as the server.
Printed and written to bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, UploadFile  # module level: the endpoint's annotations must resolve

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, write_results  # noqa: E402

CONFIGS = ("medcls (batching)", "medcls (no batching)", "medcls (ONNX Runtime, batching)", "plain FastAPI")


def baseline_app(run_path: str):
    """The endpoint a user would write first: Pillow, a tensor, one forward pass per request."""
    import torch
    from PIL import Image

    from medcls.runs import load_run

    run = load_run(run_path, "cpu")
    model, mean, std = run.model, run.norm.mean[0], run.norm.std[0]
    size = run.config.model.input_size
    app = FastAPI()

    @app.post("/predict")
    def predict(file: UploadFile = File(...)):
        img = Image.open(file.file).convert("L").resize((size, size))
        x = (torch.from_numpy(np.asarray(img, np.float32) / 255.0)[None, None] - mean) / std
        with torch.no_grad():
            p = torch.softmax(model(x), 1)[0]
        return {"probabilities": p.tolist()}

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server failed to start: {' '.join(cmd)}")
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not start")


async def _load(url: str, body: bytes, clients: int, total: int) -> dict:
    import httpx

    latencies, errors = [], 0
    todo = iter(range(total))

    async def worker(c):
        nonlocal errors
        for _ in todo:
            t0 = time.perf_counter()
            r = await c.post(url, files={"file": ("x.png", body)})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as c:
        await c.post(url, files={"file": ("x.png", body)})  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(c) for _ in range(clients)])
        wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": total, "errors": errors, "requests_per_s": total / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a trained CNN run (default: train a small one here)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline-server", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.baseline_server:  # the baseline's own process
        import uvicorn

        uvicorn.run(baseline_app(a.baseline_server), host="127.0.0.1", port=a.port, log_level="warning")
        return 0
    from PIL import Image

    from medcls.data import load_dataset

    requests = 40 if a.quick else a.requests
    clients = [1, 4] if a.quick else a.clients
    with tempfile.TemporaryDirectory(prefix="medcls-serve-bench-") as tmp:
        run = a.run
        if run is None:
            from medcls.train.config import TrainConfig
            from medcls.train.engine import fit

            run = str(fit(TrainConfig(data="pneumoniamnist", model="alexnet_onetower", out=f"{tmp}/run",
                                      device="cpu", epochs=1, max_train_samples=512, data_dir=a.data_dir)))
        subprocess.run([sys.executable, "-m", "medcls", "export", run], check=True, capture_output=True)
        ds = load_dataset("pneumoniamnist", data_dir=a.data_dir)
        buf = io.BytesIO()
        Image.fromarray(ds.images[np.flatnonzero(ds.splits == "test")[0]][0]).save(buf, format="PNG")
        body = buf.getvalue()
        name = Path(run).name
        rows = []
        for config in CONFIGS:
            port = _free_port()
            if config == "plain FastAPI":
                cmd = [sys.executable, __file__, "--baseline-server", run, "--port", str(port)]
                url = f"http://127.0.0.1:{port}/predict"
            else:
                cmd = [sys.executable, "-m", "medcls", "serve", run, "--port", str(port), "--device", "cpu"]
                cmd += ["--no-batching"] if "no batching" in config else []
                cmd += ["--backend", "onnx"] if "ONNX" in config else []
                url = f"http://127.0.0.1:{port}/v1/models/{name}/predict"
            proc = _start(cmd, port)
            try:
                for n in clients:
                    r = asyncio.run(_load(url, body, n, requests))
                    rows.append({"config": config, **r})
                    print(f"{config:34s} clients {n:3d}: {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:6.1f} "
                          f"p95 {r['p95_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}")
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    errors = sum(r["errors"] for r in rows)
    command = "python bench/serve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = write_results("serve_quick" if a.quick else "serve",
                        {"machine": machine(), "command": command.strip(), "requests": requests, "rows": rows,
                         "cores": os.cpu_count()})
    print(f"wrote {out}")
    if errors:
        print(f"{errors} requests failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
