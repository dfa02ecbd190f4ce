"""Benchmark of `tuner serve` on this machine (localhost only; every loop is bounded):

1. requests per second and p50/p99 latency of GET /v1/jobs/{id} and of POST /v1/jobs (a small
   model) under N concurrent clients, against a service with no job worker (API only);
2. the overhead of the service path (`tuner submit --wait`: upload, queue, job process, events,
   download and check) over `tuner run` for the same model, budget and seed, each on an empty
   database.

    python3 bench/bench_service.py --clients 50 --requests 2000 --posts 300 \
        --model zoo:squeezenet --trials 16 --out bench/results/service-2core.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.onnx_models import matmul_bias_relu, save  # noqa: E402
from tuner.hardware import machine  # noqa: E402
from tuner.load.zoo import zoo_path  # noqa: E402
from results_file import write_results  # noqa: E402

TUNER = [sys.executable, "-m", "tuner.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    def __init__(self, work: Path, workers: int, env: dict[str, str]) -> None:
        self.env = {**env, "TUNER_DB_URL": f"sqlite:///{work / 'service.sqlite'}",
                    "TUNER_STORAGE_DIR": str(work / "storage")}
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(work / "serve.log", "wb")
        self.proc = subprocess.Popen([*TUNER, "serve", "--port", str(self.port), "--workers", str(workers)],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"tuner serve did not start; see {work / 'serve.log'}") from None
                time.sleep(0.3)
        done = subprocess.run([*TUNER, "keys", "create", "--team", "bench"], env=self.env, capture_output=True,
                              text=True, check=True)
        self.key = done.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def _stats(latencies: list[float], wall_s: float, errors: int) -> dict:
    ordered = sorted(latencies)
    return {
        "requests": len(latencies), "errors": errors, "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(latencies) / wall_s, 1),
        "p50_ms": round(1e3 * statistics.median(ordered), 2),
        "p99_ms": round(1e3 * ordered[max(0, int(0.99 * len(ordered)) - 1)], 2),
    }


def _server_quantiles(metrics: str, method: str, route: str) -> dict:
    """p50/p99 upper bounds from the service's own latency histogram (time inside the app, without
    the waits in the event loop and the client): says where the client-side tail comes from."""
    labels = f'method="{method}",route="{route}",status="2'
    buckets = []
    for line in metrics.splitlines():
        if line.startswith("tuner_http_request_duration_seconds_bucket{") and labels in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    def bound(q: float) -> float | None:
        return next((1e3 * le for le, n in buckets if n >= q * total), None) if total else None
    return {"count": int(total), "p50_ms_at_most": bound(0.5), "p99_ms_at_most": bound(0.99)}


async def _load(url: str, key: str, clients: int, total: int, make_request) -> dict:  # noqa: ANN001
    """`total` requests spread over `clients` concurrent connections; stops after 300 s anyway."""
    latencies: list[float] = []
    errors = 0
    failures: list[str] = []
    remaining = total
    deadline = time.monotonic() + 300
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=120) as http:
        async def client() -> None:
            nonlocal remaining, errors
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    resp = await make_request(http)
                except httpx.HTTPError as exc:  # counted, not fatal: the numbers say how many
                    errors += 1
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - t0)
                if resp.status_code >= 400:
                    errors += 1
                    failures.append(f"{resp.status_code}: {resp.text[:200]}")

        # Warm-up, not counted: one request per client opens the connections (and the service's
        # database connections and threads), as a long-running service has them open.
        await asyncio.gather(*(make_request(http) for _ in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        stats = _stats(latencies, time.perf_counter() - t0, errors)
        stats["first_errors"] = sorted(set(failures))[:5]
        return stats


def load_test(work: Path, env: dict[str, str], clients: int, requests: int, posts: int) -> dict:
    allowance = posts + clients + 10  # the measured POSTs, their warm-up and the first job
    env = {**env, "TUNER_SERVE__MAX_ACTIVE_JOBS_PER_TEAM": str(allowance),
           "TUNER_SERVE__MAX_ACTIVE_TRIALS_PER_TEAM": str(10 * allowance)}
    service = Service(work, workers=0, env=env)
    try:
        model = save(matmul_bias_relu(), work / "small.onnx").read_bytes()
        first = httpx.post(f"{service.url}/v1/jobs", headers={"Authorization": f"Bearer {service.key}"},
                           data={"trials": "1"}, files={"model": ("small.onnx", model)}, timeout=120).json()

        async def get(http: httpx.AsyncClient) -> httpx.Response:
            return await http.get(f"/v1/jobs/{first['id']}")

        async def post(http: httpx.AsyncClient) -> httpx.Response:
            return await http.post("/v1/jobs", data={"trials": "1"}, files={"model": ("small.onnx", model)})

        result = {"clients": clients,
                  "get_job": asyncio.run(_load(service.url, service.key, clients, requests, get)),
                  "post_job": asyncio.run(_load(service.url, service.key, clients, posts, post)),
                  "post_model_bytes": len(model)}
        metrics = httpx.get(f"{service.url}/metrics").text
        result["get_job"]["server_side"] = _server_quantiles(metrics, "GET", "/v1/jobs/{job_id}")
        result["post_job"]["server_side"] = _server_quantiles(metrics, "POST", "/v1/jobs")
        return result
    finally:
        service.stop()


def overhead(work: Path, env: dict[str, str], model: str, trials: int) -> dict:
    """Wall time of `tuner run` vs `tuner submit --wait` (same model, budget, seed; empty databases)."""
    path = str(zoo_path(model[4:])) if model.startswith("zoo:") else model
    run_env = {**env, "TUNER_DB_URL": f"sqlite:///{work / 'run.sqlite'}"}
    t0 = time.perf_counter()
    subprocess.run([*TUNER, "run", path, "--trials", str(trials), "--out", str(work / "run-out")],
                   env=run_env, check=True, stdout=subprocess.DEVNULL)
    run_s = time.perf_counter() - t0
    run_report = json.loads((work / "run-out" / "report.json").read_text())

    svc_dir = work / "svc"
    svc_dir.mkdir()
    service = Service(svc_dir, workers=1, env=env)
    try:
        t0 = time.perf_counter()
        done = subprocess.run([*TUNER, "submit", path, "--server", service.url, "--key", service.key, "--trials",
                               str(trials), "--wait", "--json", "--out", str(work / "svc-out")],
                              env=service.env, check=True, capture_output=True, text=True)
        service_s = time.perf_counter() - t0
    finally:
        service.stop()
    job = json.loads(done.stdout)
    return {
        "model": model, "trials": trials,
        "tuner_run_s": round(run_s, 2), "service_s": round(service_s, 2),
        "overhead_s": round(service_s - run_s, 2), "overhead_ratio": round(service_s / run_s, 3),
        "trials_measured": {"run": run_report["trials"], "service": job["report"]["trials"]},
        "pipeline_total_s": {"run": run_report["total_seconds"], "service": job["report"]["total_seconds"]},
        "tuned_ms": {"run": run_report["latency_ms"]["tuned"], "service": job["report"]["latency_ms"]["tuned"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="GET requests in all")
    parser.add_argument("--posts", type=int, default=300, help="POST requests in all")
    parser.add_argument("--model", default="zoo:squeezenet")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--skip-overhead", action="store_true", help="Only the load test.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        work = Path(tmp)
        print(f"work folder {work} (service logs in load/ and overhead/)", flush=True)
        (work / "load").mkdir()
        load = load_test(work / "load", env, args.clients, args.requests, args.posts)
        for name in ("get_job", "post_job"):
            s = load[name]
            srv = s["server_side"]
            print(f"{name}: {s['requests_per_s']} req/s, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms "
                  f"({s['requests']} requests, {args.clients} clients, {s['errors']} errors); inside the app "
                  f"p50 <= {srv['p50_ms_at_most']} ms, p99 <= {srv['p99_ms_at_most']} ms", flush=True)
        if args.skip_overhead:
            return
        (work / "overhead").mkdir()
        over = overhead(work / "overhead", env, args.model, args.trials)
        print(f"{args.model}, {args.trials} trials: tuner run {over['tuner_run_s']} s, service path "
              f"{over['service_s']} s (overhead {over['overhead_s']} s, x{over['overhead_ratio']})", flush=True)
    result = {"machine": machine(), "load": load, "overhead": over}
    if args.out:
        write_results(result, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
