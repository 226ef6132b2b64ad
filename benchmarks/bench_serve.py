"""Load test of ``label_image --serve`` on loopback: latency under several clients.

    .venv/bin/python -m benchmarks.bench_serve                  # efficientnet_lite0 + a random head (TFLite)
    .venv/bin/python -m benchmarks.bench_serve --tiny           # the tiny test module: the HTTP layer's own cost
    .venv/bin/python -m benchmarks.bench_serve --graph demo_output/model/model.tflite

The server is the real command (``python -m label.cli --serve --port 0``) in its own
process, on 127.0.0.1 only. In one run, on the same clip (the first 4 s clip of the
shared UrbanSound8K folds, else a generated one):

* baseline: the same labelling in this process, no HTTP (decode + ``render_clip`` +
  model; median of ``--baseline_repeats`` calls);
* one client: ``--requests`` / 4 requests in a row over one keep-alive connection;
* load: ``--clients`` clients (threads, each its own connection) sending
  ``--requests`` requests in all, as fast as answers come, bounded by ``--time_limit``
  seconds; every answer is checked (status 200, the same top label as the baseline);
  once per server ``--pool_size`` in ``--pool_sizes`` (1,2: one copy of the model, two).

Reports p50/p95/max latency, throughput and errors; writes
``benchmarks/results/bench_serve.json``. Exits non-zero on any error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_serve.json"


def build_tflite(workdir: Path, tiny: bool) -> str:
    """backbone + a random 10-class head, exported as TFLite (as bench_label builds it)."""
    from benchmarks.bench_label import random_head_model
    from soundretrain.export import export_model

    backbone, head, labels, settings = random_head_model(workdir, tiny)
    paths = export_model(backbone, head, labels,
                         {"spectrogram": settings.to_dict(), "test_accuracy": None},
                         output_tflite=str(workdir / "model.tflite"))
    return paths["output_tflite"]


def start_server(graph: str, pool_size: int = 1) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "label.cli", "--serve", "--graph", graph, "--port", "0",
                             "--host", "127.0.0.1", "--pool_size", str(pool_size)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 180
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving "):
            # keep reading stderr (access log) so the server never blocks on a full pipe
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line.split(" at ")[1].split()[0]
    proc.kill()
    raise RuntimeError("label_image --serve did not start:\n" + "".join(lines[-10:]))


def baseline_ms(graph: str, clip: str, repeats: int) -> tuple[float, str]:
    """Median in-process latency of the same labelling, and its top label."""
    from benchmarks.bench_label import inputs_for, label_once
    from label.models import load_labeler

    labeler = load_labeler(graph)
    audio_input = inputs_for(labeler)
    result = label_once(labeler, clip, audio_input)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        label_once(labeler, clip, audio_input)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, labeler.labels[int(result.probabilities.argmax())]


def run_clients(url: str, data: bytes, expected: str, clients: int, requests: int, time_limit: float) -> dict:
    """``requests`` POSTs shared by ``clients`` threads; latencies and errors."""
    import httpx

    latencies, errors = [], []
    lock = threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + time_limit

    def take() -> bool:
        with lock:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
            return True

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < deadline and take():
                t = time.perf_counter()
                try:
                    r = c.post("/v1/label", content=data, params={"filename": "clip"})
                    ok = r.status_code == 200 and r.json()["label"] == expected
                    problem = None if ok else f"{r.status_code}: {r.text[:200]}"
                except Exception as e:  # a refused or dropped connection is an error too
                    problem = f"{type(e).__name__}: {e}"
                with lock:
                    latencies.append(time.perf_counter() - t)
                    if problem:
                        errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=20) if len(ms) > 1 else ms * 19
    return {"clients": clients, "requests": len(ms), "asked": requests, "errors": len(errors),
            "first_errors": errors[:5], "wall_s": round(wall, 2), "requests_per_s": round(len(ms) / wall, 1),
            "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(q[18], 1), "max_ms": round(ms[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", help="serve this model instead of building one")
    parser.add_argument("--tiny", action="store_true", help="the tiny test module instead of efficientnet_lite0")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--time_limit", type=float, default=300.0, help="seconds; the load stops then")
    parser.add_argument("--baseline_repeats", type=int, default=20)
    parser.add_argument("--pool_sizes", default="1,2", help="server --pool_size values to load-test, in turn")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import httpx

    from benchmarks.bench_label import pick_clip
    from soundretrain.spectrogram_settings import SpectrogramSettings

    with tempfile.TemporaryDirectory(prefix="bench_serve-") as tmp:
        workdir = Path(tmp)
        graph = args.graph or build_tflite(workdir, args.tiny)
        clip, clip_note = pick_clip(workdir, SpectrogramSettings())
        data = Path(clip).read_bytes()
        base, expected = baseline_ms(graph, clip, args.baseline_repeats)
        loads, alive = {}, True
        for pool_size in [int(p) for p in args.pool_sizes.split(",")]:
            proc, url = start_server(graph, pool_size)
            try:
                info = httpx.get(url + "v1/model").json()
                if not loads:
                    single = run_clients(url, data, expected, 1, max(10, args.requests // 4), args.time_limit)
                loads[pool_size] = run_clients(url, data, expected, args.clients, args.requests, args.time_limit)
                alive = alive and httpx.get(url + "v1/model").status_code == 200
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        load = loads[min(loads)]
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = {
        "model": info["model"], "module": info.get("module"), "format": info["format"], "clip": clip_note,
        "baseline_in_process_ms": round(base, 1), "one_client": single, "load": load,
        "load_by_pool_size": {str(k): v for k, v in loads.items()},
        "http_overhead_one_client": round(single["p50_ms"] / base, 2),
        "server_alive_after": alive, "load_average": load_avg,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(f"model {info['model']} ({info.get('module')}, {info['format']}), clip: {clip_note}; load average {load_avg:.1f}")
    print(f"{'':28}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'req/s':>8}")
    print(f"{'in process, no HTTP':28}{args.baseline_repeats:>9}{0:>8}{base:>9.1f}")
    rows = [("HTTP, 1 client, pool 1", single)]
    rows += [(f"HTTP, {args.clients} clients, pool {k}", v) for k, v in loads.items()]
    for name, r in rows:
        print(f"{name:28}{r['requests']:>9}{r['errors']:>8}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}"
              f"{r['max_ms']:>9.1f}{r['requests_per_s']:>8.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    failed = single["errors"] or not alive or any(r["errors"] or r["requests"] < args.requests for r in loads.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
