"""The echo model's capacity model and the local service's replicas, measured (not in the suite).

    python tests/perf/bench_local_capacity.py [--seconds 4] [--max-batch 8] [--max-queue 32]
        [--base-ms 50] [--per-item-ms 5]

Starts `batchrun serve` on a temp state dir, creates an echo endpoint with the capacity model
in its env, and drives it closed-loop (one aiohttp session, C loops, kept-alive connections)
at C = 1, 4, 16, 64 against one replica, then against two (after a live `update` 1 -> 2).
Per row: answers/s (200s), p50 latency of the 200s, the share of 429s, and how the 200s split
between the replicas (X-Batchrun-Replica). The model's knee for one replica is
MAX_BATCH / (base + per_item * MAX_BATCH) requests/s, printed first for comparison.
Then how soon a new replica gets requests: under C = 16 on kept-alive connections, scale
1 -> 2 live and print the seconds to the new replica's first answer and its share of the
next 3 s (the workers close a kept-alive connection after 2 s, `BATCHRUN_RECYCLE_S`). Last,
what that recycling costs: the echo at 0 ms, C = 64, recycling off vs 2 s vs 0.25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import LocalService, start_local_service
from tests.test_local_helpers import NS, api, body, wait_state


async def drive(
    url: str, token: str, *, concurrency: int, seconds: float
) -> tuple[int, int, list[float], Counter[str], float]:
    """(200s, 429s, latencies of the 200s, 200s per replica pid, elapsed s)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ok = refused = 0
    latencies: list[float] = []
    pids: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        stop = start + seconds

        async def loop(i: int) -> None:
            nonlocal ok, refused
            n = 0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=b'{"inputs": "a row of text %d"}' % n) as r:
                    await r.read()
                    if r.status == 200:
                        ok += 1
                        latencies.append(time.perf_counter() - t0)
                        pids[r.headers["X-Batchrun-Replica"]] += 1
                    elif r.status == 429:
                        refused += 1
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")) / 10)
                n += 1

        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    return ok, refused, latencies, pids, elapsed


def _status(c: httpx.Client, name: str) -> dict[str, Any]:
    status: dict[str, Any] = c.get(f"/endpoint/{NS}/{name}").json()["status"]
    return status


def _scale(c: httpx.Client, name: str, replicas: int) -> None:
    r = c.put(
        f"/endpoint/{NS}/{name}",
        json={"compute": {"scaling": {"minReplica": replicas, "maxReplica": replicas}}},
    )
    r.raise_for_status()


def _wait_ready(c: httpx.Client, name: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _status(c, name)["readyReplica"] != n:
        if time.monotonic() > deadline:
            raise SystemExit(f"readyReplica did not reach {n}")
        time.sleep(0.05)


async def new_replica_uptake(
    svc: LocalService, c: httpx.Client, name: str, url: str
) -> tuple[float, float, float]:
    """Under C = 16 on kept-alive connections, scale 1 -> 2: (seconds from the PUT to the new
    replica's first answer, from readyReplica = 2 to it, the new replica's share of the
    answers in the 3 s after readyReplica = 2)."""
    headers = {"Authorization": f"Bearer {svc.token}"}
    answers: list[tuple[float, str]] = []
    marks: dict[str, float] = {}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16), headers=headers
    ) as session:
        stop = time.perf_counter() + 60

        async def loop() -> None:
            while time.perf_counter() < stop:
                async with session.post(url, json={"inputs": "x"}) as r:
                    await r.read()
                    if r.status == 200:
                        answers.append((time.perf_counter(), r.headers["X-Batchrun-Replica"]))

        async def scaler() -> None:
            nonlocal stop
            await asyncio.sleep(1.0)
            marks["put"] = time.perf_counter()
            await asyncio.to_thread(_scale, c, name, 2)
            await asyncio.to_thread(_wait_ready, c, name, 2)
            marks["ready"] = time.perf_counter()
            stop = marks["ready"] + 3

        await asyncio.gather(scaler(), *(loop() for _ in range(16)))
    old = {pid for t, pid in answers if t < marks["put"]}
    new = [t for t, pid in answers if pid not in old]
    if not new:
        return float("nan"), float("nan"), 0.0
    after = [(t, pid) for t, pid in answers if t >= marks["ready"]]
    share = sum(1 for _, pid in after if pid not in old) / max(len(after), 1)
    return new[0] - marks["put"], new[0] - marks["ready"], share


def recycle_cost(svc: LocalService, c: httpx.Client, seconds: float, rounds: int = 3) -> None:
    """Echo at 0 ms, one replica, C = 64: answers/s with recycling off, at 2 s and at 0.25 s,
    interleaved over `rounds` rounds (the machine is shared), the median of each."""
    urls = {}
    for value in ("0", "2", "0.25"):
        name = f"recycle-{value.replace('.', '-')}"
        c.post(f"/endpoint/{NS}", json=body(name, env={"BATCHRUN_RECYCLE_S": value}))
        urls[value] = wait_state(c, name, "running")["status"]["url"]
    rates: dict[str, list[float]] = {value: [] for value in urls}
    for _ in range(rounds):
        for value, url in urls.items():
            ok, _, _, _, elapsed = asyncio.run(
                drive(url, svc.token, concurrency=64, seconds=seconds / 2)
            )
            rates[value].append(ok / elapsed)
    base = statistics.median(rates["0"])
    for value, got in rates.items():
        rate = statistics.median(got)
        print(f"recycle after {value:>4} s: {rate:8.1f} answers/s ({rate / base:.2f} x off)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--base-ms", type=float, default=50)
    ap.add_argument("--per-item-ms", type=float, default=5)
    args = ap.parse_args()
    env = {
        "BATCHRUN_ECHO_MAX_BATCH": str(args.max_batch),
        "BATCHRUN_ECHO_MAX_QUEUE": str(args.max_queue),
        "BATCHRUN_ECHO_BASE_MS": str(args.base_ms),
        "BATCHRUN_ECHO_PER_ITEM_MS": str(args.per_item_ms),
    }
    knee = args.max_batch / ((args.base_ms + args.per_item_ms * args.max_batch) / 1000)
    print(f"capacity model {env}")
    print(f"model knee, one replica: {knee:.1f} requests/s at C = {args.max_batch}")
    with tempfile.TemporaryDirectory() as tmp:
        svc = start_local_service(Path(tmp) / "state")
        try:
            with api(svc) as c:
                b = body("cap", env=env)
                b["compute"]["scaling"]["maxReplica"] = 2
                c.post(f"/endpoint/{NS}", json=b).raise_for_status()
                url = wait_state(c, "cap", "running")["status"]["url"]
                print(f"{'replicas':>8} {'C':>4} {'rows/s':>8} {'p50 ms':>8} {'429 %':>6}  split")
                for replicas in (1, 2):
                    if replicas == 2:
                        _scale(c, "cap", 2)
                        _wait_ready(c, "cap", 2)
                    for conc in (1, 4, 16, 64):
                        ok, refused, lat, pids, elapsed = asyncio.run(
                            drive(url, svc.token, concurrency=conc, seconds=args.seconds)
                        )
                        p50 = statistics.median(lat) * 1000 if lat else float("nan")
                        share = 100 * refused / max(ok + refused, 1)
                        split = "/".join(str(n) for _, n in pids.most_common())
                        print(
                            f"{replicas:>8} {conc:>4} {ok / elapsed:>8.1f} {p50:>8.1f}"
                            f" {share:>6.1f}  {split}"
                        )
                _scale(c, "cap", 1)
                _wait_ready(c, "cap", 1)
                time.sleep(3)  # let the drained replica exit
                from_put, from_ready, share = asyncio.run(new_replica_uptake(svc, c, "cap", url))
                print(
                    f"1 -> 2 replicas under C = 16: the new replica's first answer {from_put:.2f} s"
                    f" after the PUT ({from_ready:+.2f} s from readyReplica = 2); its share of"
                    f" the answers in the next 3 s: {100 * share:.0f} %"
                )
                c.delete(f"/endpoint/{NS}/cap")
                recycle_cost(svc, c, args.seconds)
        finally:
            svc.stop()


if __name__ == "__main__":
    main()
