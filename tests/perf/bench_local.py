"""Benchmarks of the local service's workers (not part of the default test run).

    .venv/bin/python tests/perf/bench_local.py echo     # echo at 0 ms: requests/s, C = 64
    .venv/bin/python tests/perf/bench_local.py minilm   # MiniLM rows/s, micro-batch 1 vs 32
    .venv/bin/python tests/perf/bench_local.py minilm --short   # the same on short sentences

Each starts `batchrun serve` on a free port with a temporary state dir, creates the endpoint,
drives it with a bare aiohttp client loop (one ClientSession, C workers, orjson), prints one
line per measurement and stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import LocalService, start_local_service
from tests.test_local_helpers import NS, body, wait_state


async def drive(
    url: str, payloads: list[bytes], *, concurrency: int, seconds: float, token: str | None
) -> tuple[int, float]:
    """Requests completed and elapsed seconds, C loops posting round-robin payloads."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    done = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        stop_at = time.perf_counter() + seconds

        async def loop(i: int) -> None:
            nonlocal done, errors
            n = i
            while time.perf_counter() < stop_at:
                async with session.post(url, data=payloads[n % len(payloads)]) as resp:
                    await resp.read()
                    if resp.status == 200:
                        done += 1
                    else:
                        errors += 1
                n += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    if errors:
        print(f"  ({errors} non-200 answers)")
    return done, elapsed


def _endpoint(svc: LocalService, name: str, **kwargs: Any) -> str:
    with httpx.Client(base_url=svc.api_url, headers=svc.headers, timeout=120, trust_env=False) as c:
        r = c.post(f"/endpoint/{NS}", json=body(name, **kwargs))
        r.raise_for_status()
        return str(wait_state(c, name, "running", timeout=120)["status"]["url"])


_BARE = """
import sys
import orjson
from aiohttp import web

async def handle(request):
    data = orjson.loads(await request.read())
    return web.Response(body=orjson.dumps([{"generated_text": data["inputs"]}]),
                        content_type="application/json")

app = web.Application()
app.router.add_post("/", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def _bare_server() -> tuple[subprocess.Popen[bytes], str]:
    """A bare aiohttp.web echo server in a subprocess: the baseline for the same client."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", _BARE, str(port)])
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(url, json={"inputs": "x"}, trust_env=False)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the bare aiohttp server did not start")


def bench_echo(svc: LocalService, seconds: float, concurrency: int) -> None:
    url = _endpoint(svc, "bench-echo", type="public") + "/"
    payloads = [orjson.dumps({"inputs": f"row {i} some text to echo"}) for i in range(100)]
    bare, bare_url = _bare_server()
    try:
        for target in (url, bare_url):  # warm both up
            asyncio.run(drive(target, payloads, concurrency=concurrency, seconds=1.0, token=None))
        procs = {
            "worker": psutil.Process(int(svc.status()["worker_pids"][0])),  # type: ignore[index]
            "bare": psutil.Process(bare.pid),
        }
        for run in range(3):
            rates, cpu = {}, {}
            for label, target in (("worker", url), ("bare", bare_url)):
                before = sum(procs[label].cpu_times()[:2])
                n, elapsed = asyncio.run(
                    drive(target, payloads, concurrency=concurrency, seconds=seconds, token=None)
                )
                rates[label] = n / elapsed
                cpu[label] = (sum(procs[label].cpu_times()[:2]) - before) / max(1, n) * 1e6
            print(
                f"run {run + 1}, C={concurrency}, 0 ms: echo worker {rates['worker']:,.0f} req/s "
                f"({cpu['worker']:.0f} us server CPU/request), bare aiohttp.web "
                f"{rates['bare']:,.0f} req/s ({cpu['bare']:.0f} us); "
                f"load average {os.getloadavg()[0]:.1f}"
            )
    finally:
        bare.terminate()
        bare.wait()


def bench_minilm(svc: LocalService, seconds: float, short: bool) -> None:
    if short:
        texts = [f"Sentence number {i} about batch inference and budgets." for i in range(512)]
    else:
        root = Path(__file__).resolve().parents[2]
        lines = (root / "examples" / "texts.jsonl").read_bytes().splitlines()[:512]
        texts = [str(orjson.loads(line)["text"]) for line in lines]  # paragraphs, 40-600 chars
    payloads = [orjson.dumps({"inputs": t}) for t in texts]
    for max_batch in (1, 32):
        name = f"bench-minilm-{max_batch}"
        url = _endpoint(
            svc,
            name,
            repository="sentence-transformers/all-MiniLM-L6-v2",
            task="feature-extraction",
            type="public",
            env={"BATCHRUN_MAX_BATCH": str(max_batch)},
        )
        asyncio.run(drive(url + "/", payloads, concurrency=32, seconds=1.0, token=None))
        n, elapsed = asyncio.run(
            drive(url + "/", payloads, concurrency=32, seconds=seconds, token=None)
        )
        info = httpx.get(url + "/info", trust_env=False).json()
        batches = info["batches"]["embed"]
        mean = batches["rows"] / max(1, batches["batches"])
        print(
            f"MiniLM, max batch {max_batch}, C=32: {n / elapsed:,.0f} rows/s "
            f"(mean batch {mean:.1f}, {n} rows in {elapsed:.1f} s)"
        )
        with httpx.Client(base_url=svc.api_url, headers=svc.headers, trust_env=False) as c:
            c.delete(f"/endpoint/{NS}/{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["echo", "minilm"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--short", action="store_true", help="minilm: short sentences")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        svc = start_local_service(Path(tmp) / "state")
        try:
            if args.what == "echo":
                bench_echo(svc, args.seconds, args.concurrency)
            else:
                bench_minilm(svc, args.seconds, args.short)
        finally:
            svc.stop()


if __name__ == "__main__":
    main()
