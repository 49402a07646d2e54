"""Throughput of the data plane against a local aiohttp endpoint in its own process.

One run, the same server and the same rows for every client:

- ``batchrun Pool``: `batchrun.pool.Pool` with the job's codec (encode + decode per row);
- ``batchrun run``: `batchrun.runner.run_job` end to end on a JSONL file (reading input,
  writing results, run state), when `batchrun.runner` exists;
- ``bare aiohttp``: C workers over one ClientSession, orjson in and out (the reference);
- ``bare httpx``: the same with httpx.AsyncClient;
- ``huggingface_hub``: `AsyncInferenceClient.text_generation` + ``asyncio.gather`` over every
  row (the seed's way; no C of its own, the client's connection limits): once per latency, on
  the first ``--seed-requests`` rows, run to the end;
- ``cli`` (the CPU-per-row case): the ``batchrun run`` command in its own process on
  ``--cli-rows`` rows with ``id_field``, C = 64, against the lean bare aiohttp loop (orjson in
  and out), alternating ``--cli-repeat`` times per latency. Both run in processes of their own
  (the bare loop as ``bench_throughput.py --bare-child URL N``), so both pay the same process
  costs (a fresh heap, imports, the event loop's own syscalls); each one's CPU (user + sys, from
  ``getrusage(RUSAGE_CHILDREN)``) and wall time less those of a 1-row run of the same program
  (start-up: imports, the job, the run state, the session, the first connection), divided by
  the remaining rows; medians of the repeats. The bare loop in this script's own process (warm,
  after a warm-up) is printed beside it, as before.

For each latency (0 ms and 50 ms) and concurrency C (64 and 256) it prints requests/s, client
CPU µs per request (process CPU time / requests: the server runs in another process), and
ratios against the bare aiohttp loop, against the ideal C/L, and against the seed's way.
Each client gets a short warm-up, then at most ``--requests`` requests or ``--seconds`` s.
The Pool and the bare aiohttp loop alternate ``--repeat`` times and the best run of each
counts: the machine is shared, and CPU µs per request is the steadier figure.

    .venv/bin/python tests/perf/bench_throughput.py            # the full table
    .venv/bin/python tests/perf/bench_throughput.py --requests 1000 --concurrency 64
    .venv/bin/python tests/perf/bench_throughput.py --clients cli   # the CLI's CPU per row only
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# Only 127.0.0.1 is contacted; huggingface_hub's offline mode would refuse even that.
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

import aiohttp
import httpx
import orjson

from batchrun.codecs import RequestCodec, codec_for
from batchrun.job import Job
from batchrun.pool import Outcome, Pool, Request
from tests.support.endpoint_app import EndpointProcess

WARMUP = 200


def encode(codec: RequestCodec, records: Sequence[dict[str, Any]]) -> bytes:
    """A request body built the way the runner builds it: each row rendered, then encoded."""
    return codec.encode_rendered([codec.render(r) for r in records])


@dataclass
class Result:
    client: str
    latency_ms: float
    concurrency: int
    done: int
    seconds: float
    cpu_s: float
    note: str = ""

    @property
    def rps(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.done * 1e6 if self.done else float("nan")


Runner = Callable[[str, list[str], int, float], Coroutine[Any, Any, int]]


def make_job(url: str, concurrency: int, **extra: object) -> Job:
    data: dict[str, dict[str, object]] = {
        "endpoint": {"provider": "url", "url": url, "task": "text-generation"},
        "input": {"path": "in.jsonl", "field": "text"},
        "output": {"path": "out.jsonl"},
        "run": {"concurrency": concurrency, "max_attempts": 3, "request_timeout": 60},
    }
    for section, values in extra.items():
        assert isinstance(values, dict)
        data.setdefault(section, {}).update(values)
    return Job.from_dict(data)


# --- clients: each sends texts[:] with C in flight until done or the deadline -----------------


async def run_pool(url: str, texts: list[str], concurrency: int, seconds: float) -> int:
    codec = codec_for(make_job(url, concurrency))
    pool = Pool(url=url, codec=codec, concurrency=concurrency, request_timeout=60, max_attempts=3)
    done = 0
    deadline = time.perf_counter() + seconds

    def requests() -> Iterator[Request]:
        for i, text in enumerate(texts):
            if time.perf_counter() > deadline:
                return
            yield Request(i, encode(codec, [{"text": text}]), 1)

    def on_outcome(outcome: Outcome) -> None:
        nonlocal done
        if outcome.error is None:
            done += 1

    await pool.run(requests(), on_outcome)
    return done


async def run_aiohttp(url: str, texts: list[str], concurrency: int, seconds: float) -> int:
    done = 0
    it = iter(texts)
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal done
            for text in it:
                if time.perf_counter() > deadline:
                    return
                body = orjson.dumps({"inputs": text})
                async with session.post(url + "/", data=body) as response:
                    payload = orjson.loads(await response.read())
                if response.status == 200 and payload[0]["generated_text"]:
                    done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def run_httpx(url: str, texts: list[str], concurrency: int, seconds: float) -> int:
    done = 0
    it = iter(texts)
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=60) as client:

        async def worker() -> None:
            nonlocal done
            for text in it:
                if time.perf_counter() > deadline:
                    return
                response = await client.post(url + "/", content=orjson.dumps({"inputs": text}))
                if response.status_code == 200 and orjson.loads(response.content)[0]:
                    done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def run_hf(url: str, texts: list[str], concurrency: int, seconds: float) -> int:
    from huggingface_hub import AsyncInferenceClient

    async with AsyncInferenceClient(model=url) as client:
        tasks = [asyncio.ensure_future(client.text_generation(text)) for text in texts]
        finished, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return sum(1 for t in finished if not t.cancelled() and t.exception() is None)


def timer_overshoot_ms() -> float:
    """Mean lateness of 64 concurrent 50 ms sleeps: how busy the machine is right now.

    On an idle machine it is ~0.1 ms; every ms of it comes straight off the C/L ratio at 50 ms.
    """
    late: list[float] = []

    async def sleeper() -> None:
        for _ in range(10):
            t = time.perf_counter()
            await asyncio.sleep(0.05)
            late.append(time.perf_counter() - t - 0.05)

    async def main() -> None:
        await asyncio.gather(*(sleeper() for _ in range(64)))

    asyncio.run(main())
    return sum(late) / len(late) * 1000


def runner_available() -> bool:
    return importlib.util.find_spec("batchrun.runner") is not None


def run_batchrun(url: str, texts: list[str], concurrency: int, workdir: Path) -> Result:
    """`batchrun run` end to end via run_job on a JSONL file (no deadline: it runs to the end)."""
    from batchrun.runner import run_job

    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "in.jsonl"
    with source.open("wb") as f:
        for i, text in enumerate(texts):
            f.write(orjson.dumps({"id": i, "text": text}) + b"\n")
    out = workdir / "out.jsonl"
    job = make_job(
        url,
        concurrency,
        input={"path": str(source), "id_field": "id"},
        output={"path": str(out)},
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = run_job(job, restart=True, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Result(RUN, 0, concurrency, summary.succeeded, seconds, cpu)


@dataclass
class CliCase:
    """One latency of the CLI case: medians over the repeats, start-up subtracted."""

    latency_ms: float
    rows: int
    startup_cpu_s: float
    startup_wall_s: float
    cli_cpu_us: float
    cli_rps: float
    bare_cpu_us: float
    bare_rps: float
    inproc_cpu_us: float
    inproc_rps: float
    runs: list[tuple[float, float, float, float]]  # (cli cpu µs, cli rows/s, bare µs, bare/s)

    @property
    def cpu_ratio(self) -> float:
        return self.cli_cpu_us / self.bare_cpu_us

    @property
    def rps_ratio(self) -> float:
        return self.cli_rps / self.bare_rps


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_cli_job(workdir: Path, url: str, rows: int, concurrency: int) -> Path:
    """A JSONL input of `rows` rows (`id`, `text`) and a job file for `batchrun run`."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "in.jsonl").open("wb") as f:
        for i in range(rows):
            text = f"row {i}: the quick brown fox jumps over the lazy dog"
            f.write(orjson.dumps({"id": f"r{i}", "text": text}) + b"\n")
    job = workdir / "job.toml"
    job.write_text(
        f'[endpoint]\nprovider = "url"\nurl = "{url}"\ntask = "text-generation"\n'
        f'[input]\npath = "in.jsonl"\nid_field = "id"\nfield = "text"\n'
        f'[output]\npath = "out.jsonl"\n'
        f"[run]\nconcurrency = {concurrency}\nmax_attempts = 3\nrequest_timeout = 60\n",
        encoding="utf-8",
    )
    return job


def _timed(cmd: list[str], **kw: Any) -> tuple[float, float, bytes]:
    """Run `cmd` to the end: (CPU s of the child, wall s, stdout)."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, timeout=900, **kw)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return cpu, wall, proc.stdout


def run_cli(job: Path, *extra: str) -> tuple[float, float, dict[str, Any]]:
    """`batchrun run JOB --restart` in its own process: (CPU s, wall s, summary)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHRUN_", "HF_"))}
    env["BATCHRUN_HOME"] = str(job.parent / "home")
    cmd = [sys.executable, "-m", "batchrun", "run", str(job), "--restart", *extra]
    cpu, wall, out = _timed(cmd, env=env, cwd=job.parent)
    return cpu, wall, orjson.loads(out)


def run_bare_child(url: str, rows: int) -> tuple[float, float]:
    """The lean bare loop on `rows` rows in a process of its own: (CPU s, wall s)."""
    cpu, wall, out = _timed([sys.executable, __file__, "--bare-child", url, str(rows)])
    assert int(out) == rows, out
    return cpu, wall


def measure_cli(url: str, latency: float, rows: int, repeat: int, workdir: Path) -> CliCase:
    """The CLI case at one latency (the server is configured already)."""
    job = write_cli_job(workdir, url, rows, 64)
    texts = [f"row {i}: the quick brown fox jumps over the lazy dog" for i in range(rows)]
    asyncio.run(run_aiohttp(url, texts[:WARMUP], 64, 60.0))
    # start-up: a 1-row run of each program (a 0-row run of batchrun has nothing to do and
    # never opens its pool, so it would leave the session and first connection in "per row")
    startup = [run_cli(job, "--limit", "1", "--output", "one.jsonl") for _ in range(repeat)]
    startup_cpu = statistics.median(c for c, _, _ in startup)
    startup_wall = statistics.median(w for _, w, _ in startup)
    bare_start = [run_bare_child(url, 1) for _ in range(repeat)]
    bare_start_cpu = statistics.median(c for c, _ in bare_start)
    bare_start_wall = statistics.median(w for _, w in bare_start)
    n = rows - 1
    runs, inproc = [], []
    for _ in range(repeat):
        cpu, wall, summary = run_cli(job)
        assert summary["succeeded"] == rows, summary
        bare_cpu, bare_wall = run_bare_child(url, rows)
        warm = measure("bare", run_aiohttp, url, texts, 64, 600.0, latency, warmup=False)
        assert warm.done == rows
        inproc.append((warm.cpu_us, warm.rps))
        runs.append(
            (
                (cpu - startup_cpu) / n * 1e6,
                n / max(wall - startup_wall, 1e-9),
                (bare_cpu - bare_start_cpu) / n * 1e6,
                n / max(bare_wall - bare_start_wall, 1e-9),
            )
        )
        print(
            f"  {latency:g} ms cli: {runs[-1][0]:.0f} µs/row {runs[-1][1]:,.0f} rows/s; "
            f"bare: {runs[-1][2]:.0f} µs/req {runs[-1][3]:,.0f} req/s; "
            f"bare in this process: {warm.cpu_us:.0f} µs/req {warm.rps:,.0f} req/s",
            file=sys.stderr,
        )
    return CliCase(
        latency_ms=latency,
        rows=rows,
        startup_cpu_s=startup_cpu,
        startup_wall_s=startup_wall,
        cli_cpu_us=statistics.median(r[0] for r in runs),
        cli_rps=statistics.median(r[1] for r in runs),
        bare_cpu_us=statistics.median(r[2] for r in runs),
        bare_rps=statistics.median(r[3] for r in runs),
        inproc_cpu_us=statistics.median(c for c, _ in inproc),
        inproc_rps=statistics.median(r for _, r in inproc),
        runs=runs,
    )


def cli_table(cases: list[CliCase]) -> str:
    lines = [
        "| latency | rows | start-up CPU / wall | CLI CPU µs/row | bare CPU µs/req | × bare "
        "| CLI rows/s | bare req/s | × bare | bare in-process µs/req, req/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cases:
        lines.append(
            f"| {c.latency_ms:g} ms | {c.rows:,} | {c.startup_cpu_s:.2f} s / {c.startup_wall_s:.2f} s "
            f"| {c.cli_cpu_us:.0f} | {c.bare_cpu_us:.0f} | {c.cpu_ratio:.2f} "
            f"| {c.cli_rps:,.0f} | {c.bare_rps:,.0f} | {c.rps_ratio:.2f} "
            f"| {c.inproc_cpu_us:.0f}, {c.inproc_rps:,.0f} |"
        )
    out = ["\n".join(lines), ""]
    for c in cases:
        out.append(
            f"CLI CPU per row ≤ 1.1× the bare loop's at {c.latency_ms:g} ms: "
            f"{c.cpu_ratio:.2f} {_ok(c.cpu_ratio <= 1.1)}"
        )
        if c.latency_ms:
            out.append(
                f"CLI rows/s ≥ 0.97× the bare loop's at {c.latency_ms:g} ms: "
                f"{c.rps_ratio:.2f} {_ok(c.rps_ratio >= 0.97)}"
            )
    return "\n".join(out)


SEED = "huggingface_hub AsyncInferenceClient + gather"
RUN = "batchrun run (end to end)"

CLIENTS: dict[str, tuple[str, Runner]] = {
    "pool": ("batchrun Pool", run_pool),
    "aiohttp": ("bare aiohttp loop", run_aiohttp),
    "httpx": ("bare httpx loop", run_httpx),
    "hf": (SEED, run_hf),
}


def measure(
    name: str,
    fn: Runner,
    url: str,
    texts: list[str],
    c: int,
    seconds: float,
    latency: float,
    *,
    warmup: bool = True,
) -> Result:
    if warmup:
        asyncio.run(fn(url, texts[:WARMUP], c, seconds))
    cpu0, t0 = time.process_time(), time.perf_counter()
    done = asyncio.run(fn(url, texts, c, seconds))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    note = "" if done == len(texts) else f"time-bounded: {done} of {len(texts)}"
    return Result(name, latency, c, done, elapsed, cpu, note)


def table(results: list[Result]) -> str:
    lines = [
        "| latency | C | client | requests | req/s | CPU µs/req | × bare aiohttp "
        "| of C/L ideal | × seed's way |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        peers = [
            p for p in results if (p.latency_ms, p.concurrency) == (r.latency_ms, r.concurrency)
        ]
        base = next((p for p in peers if p.client == CLIENTS["aiohttp"][0]), None)
        seed = next((p for p in results if p.client == SEED and p.latency_ms == r.latency_ms), None)
        ideal = r.concurrency / (r.latency_ms / 1000) if r.latency_ms else None
        cells = [
            f"{r.latency_ms:g} ms",
            str(r.concurrency) if r.client != SEED else "all rows",
            r.client + (f" ({r.note})" if r.note else ""),
            f"{r.done:,}",
            f"{r.rps:,.0f}",
            f"{r.cpu_us:,.0f}",
            f"{r.rps / base.rps:.2f}" if base and base.rps else "–",
            f"{r.rps / ideal:.2f}" if ideal else "–",
            f"{r.rps / seed.rps:.1f}" if seed and seed.rps else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(results: list[Result]) -> list[str]:
    def get(client: str, latency: float, c: int) -> Result | None:
        return next(
            (
                r
                for r in results
                if r.client == client and r.latency_ms == latency and r.concurrency == c
            ),
            None,
        )

    out = []
    pool, base, seed, run = CLIENTS["pool"][0], CLIENTS["aiohttp"][0], SEED, RUN
    a0 = get(base, 0, 64)
    for name in (pool, run):
        r0 = get(name, 0, 64)
        if r0 and a0:
            ratio = r0.rps / a0.rps
            out.append(f"{name} ≥ 0.8× bare aiohttp at 0 ms, C=64: {ratio:.2f} {_ok(ratio >= 0.8)}")
    for name in (pool, run):
        r50 = get(name, 50, 64)
        if r50:
            ratio = r50.rps / 1280
            out.append(f"{name} ≥ 0.9 of C/L at 50 ms, C=64: {ratio:.2f} {_ok(ratio >= 0.9)}")
    for latency in sorted({r.latency_ms for r in results}):
        s = next((r for r in results if r.client == seed and r.latency_ms == latency), None)
        for c in sorted({r.concurrency for r in results if r.client == pool}):
            p = get(pool, latency, c)
            if not (p and s and s.rps):
                continue
            ratio = p.rps / s.rps
            line = (
                f"Pool ≥ 3× the seed's way at {latency:g} ms, C={c}: {ratio:.1f} {_ok(ratio >= 3)}"
            )
            if latency and c / (latency / 1000) < 3 * s.rps:
                cap = c / (latency / 1000) / s.rps
                line += (
                    f" (C/L caps the Pool at {c / (latency / 1000):,.0f} req/s: {cap:.1f}× at most)"
                )
            out.append(line)
    return out


def _ok(passed: bool) -> str:
    return "(goal met)" if passed else "(GOAL MISSED)"


def bare_child(url: str, rows: int) -> None:
    """`--bare-child URL N`: the lean bare loop on N rows, then the rows done on stdout."""
    texts = [f"row {i}: the quick brown fox jumps over the lazy dog" for i in range(rows)]
    print(asyncio.run(run_aiohttp(url, texts, 64, 600.0)))


def main() -> None:
    if sys.argv[1:2] == ["--bare-child"]:
        bare_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="per client and setting")
    parser.add_argument("--seconds", type=float, default=8.0, help="time bound per client")
    parser.add_argument("--latencies", default="0,50", help="server latency in ms, comma-separated")
    parser.add_argument("--concurrency", default="64,256", help="C values, comma-separated")
    parser.add_argument(
        "--seed-requests", type=int, default=1000, help="rows for the seed's way (gather)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of Pool and aiohttp (best)")
    parser.add_argument("--clients", default="pool,aiohttp,httpx,hf,run,cli", help="which clients")
    parser.add_argument("--cli-rows", type=int, default=30000, help="rows of the CLI case")
    parser.add_argument("--cli-repeat", type=int, default=3, help="runs of the CLI case (median)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    latencies = [float(x) for x in args.latencies.split(",")]
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    chosen = args.clients.split(",")
    texts = [f"row {i}: the quick brown fox jumps over the lazy dog" for i in range(args.requests)]
    results: list[Result] = []
    cli_cases: list[CliCase] = []
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()[0]
    overshoot_start = timer_overshoot_ms()
    with EndpointProcess(python=sys.executable) as server, tempfile.TemporaryDirectory() as tmp:
        for latency in latencies:
            for c in concurrencies:
                server.configure(latency_ms=latency, reset=True)
                # The two fast clients alternate `--repeat` times (the best run counts): the
                # machine is shared, and alternating spreads its noise over both.
                best: dict[str, Result] = {}
                for rep in range(args.repeat):
                    for key in ("pool", "aiohttp"):
                        if key not in chosen:
                            continue
                        name, fn = CLIENTS[key]
                        r = measure(
                            name, fn, server.url, texts, c, args.seconds, latency, warmup=rep == 0
                        )
                        if key not in best or r.rps > best[key].rps:
                            best[key] = r
                        print(f"  {latency:g} ms C={c} {name}: {r.rps:,.0f} req/s", file=sys.stderr)
                results.extend(best.values())
                if "httpx" in chosen:
                    name, fn = CLIENTS["httpx"]
                    r = measure(name, fn, server.url, texts, c, args.seconds, latency)
                    results.append(r)
                    print(f"  {latency:g} ms C={c} {name}: {r.rps:,.0f} req/s", file=sys.stderr)
                if "hf" in chosen and not any(
                    r.client == SEED and r.latency_ms == latency for r in results
                ):
                    # gather over every row at once has no C: measured once per latency, on
                    # fewer rows (its first answers come late, so a time bound would lie).
                    name, fn = CLIENTS["hf"]
                    rows = texts[: args.seed_requests]
                    r = measure(name, fn, server.url, rows, c, 120.0, latency)
                    results.append(r)
                    print(f"  {latency:g} ms {name}: {r.rps:,.0f} req/s", file=sys.stderr)
                if "run" in chosen and runner_available():
                    try:
                        r = run_batchrun(server.url, texts, c, Path(tmp) / f"run-{latency}-{c}")
                    except Exception as e:  # report it, keep the other figures
                        print(f"  batchrun run failed: {type(e).__name__}: {e}", file=sys.stderr)
                    else:
                        r.latency_ms = latency
                        results.append(r)
                        print(f"  {latency:g} ms C={c} {r.client}: {r.rps:,.0f}", file=sys.stderr)
            if "cli" in chosen:
                server.configure(latency_ms=latency, reset=True)
                cli_cases.append(
                    measure_cli(
                        server.url,
                        latency,
                        args.cli_rows,
                        args.cli_repeat,
                        Path(tmp) / f"cli-{latency}",
                    )
                )
    print(
        f"\n{started:%Y-%m-%d %H:%M} UTC · {platform.node()} · {os.cpu_count()} cores · "
        f"Python {platform.python_version()} · aiohttp {aiohttp.__version__} · "
        f"httpx {httpx.__version__}"
    )
    print("command: .venv/bin/python tests/perf/bench_throughput.py " + " ".join(sys.argv[1:]))
    load_end = os.getloadavg()[0]
    print(
        f"machine noise: load average (1 min) {load_start:.2f} at start, {load_end:.2f} at end; "
        f"50 ms timer late by {overshoot_start:.2f} ms at start, {timer_overshoot_ms():.2f} ms at end"
    )
    if "run" in chosen and not runner_available():
        print("(batchrun.runner not present: `batchrun run` end to end not measured)")
    if results:
        print()
        print(table(results))
        print()
        for line in goals(results):
            print(line)
    if cli_cases:
        print()
        print(f"`batchrun run` in its own process, C = 64, id_field, median of {args.cli_repeat}:")
        print()
        print(cli_table(cli_cases))


if __name__ == "__main__":
    main()
