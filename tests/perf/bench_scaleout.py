"""Scale-out: rows/s of `batchrun run` unsharded and with `--workers W` (local executor).

One run against the same endpoint (tests/support/endpoint_app.py in its own process) at 50 ms
latency; the job's concurrency is 64 × W (so each worker has 64; the unsharded run has 64),
and the input has `--rows` × W rows (`--rows` for the unsharded run), so each case lasts about
as long. rows/s is rows over the command's wall time (start-up, planning and the merge
included), and over the summary's `elapsed_s`; the ratios are the issue's goals:
W=1 sharded / unsharded (≥ 0.95) and W=2 / W=1 (≥ 1.8).

    python tests/perf/bench_scaleout.py              # W = 1, 2, 4 and unsharded
    python tests/perf/bench_scaleout.py --rows 2000 --workers 1 2
    python tests/perf/bench_scaleout.py --ray     # and the Ray executor on a joined head
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

import orjson

from tests.support.endpoint_app import EndpointProcess
from tests.support.run import ROOT, job_sections, write_job, write_jsonl


def _run(
    app_url: str, work: Path, rows: int, workers: int | None, executor: str = "local"
) -> dict[str, float]:
    work.mkdir(parents=True)
    data = write_jsonl(work / "in.jsonl", [{"text": f"t{i}"} for i in range(rows)])
    concurrency = 64 * (workers or 1)
    sections = job_sections(
        app_url,
        str(data),
        str(work / "out.jsonl"),
        run={"concurrency": concurrency, "request_timeout": 30},
    )
    job = write_job(work / "job.toml", sections)
    args = [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"]
    if workers is not None:
        args += ["--workers", str(workers), "--executor", executor]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, check=False)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    summary = orjson.loads(done.stdout)
    assert summary["succeeded"] == rows, summary
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "rows": rows,
        "wall_s": wall,
        "rows_per_s": rows / wall,
        "summary_rows_per_s": float(summary["rows_per_s"]),
        "cpu_us_per_row": cpu / rows * 1e6,
    }


@contextlib.contextmanager
def _ray_head(cpus: int) -> Iterator[None]:
    """A Ray head on 127.0.0.1 that the runs join (RAY_ADDRESS); its processes killed after."""
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            f"--num-cpus={cpus}",
            "--include-dashboard=false",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--temp-dir=/tmp/brbench{os.getpid()}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield
    finally:
        members = [head.pid] + [p.pid for p in psutil.Process(head.pid).children(recursive=True)]
        for pid in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        head.wait(10)
        del os.environ["RAY_ADDRESS"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000, help="rows per worker (64 in flight)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--ray", action="store_true", help="also the Ray executor (a head on 127.0.0.1, joined)"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with EndpointProcess(latency_ms=args.latency_ms) as app, tempfile.TemporaryDirectory() as tmp:
        results["unsharded"] = _run(app.url, Path(tmp) / "u", args.rows, None)
        for w in args.workers:
            results[f"W={w}"] = _run(app.url, Path(tmp) / f"w{w}", args.rows * w, w)
        if args.ray:
            with _ray_head(max(args.workers) + 1):
                for w in args.workers:
                    work = Path(tmp) / f"r{w}"
                    results[f"ray W={w}"] = _run(app.url, work, args.rows * w, w, "ray")
    ideal = 64 / (args.latency_ms / 1000)
    print(
        f"# {args.latency_ms:.0f} ms latency, concurrency 64 x W, ideal {ideal:.0f} rows/s per 64"
    )
    print("| run | rows | wall s | rows/s (wall) | rows/s (summary) | CPU µs/row | vs unsharded |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = results["unsharded"]["rows_per_s"]
    for name, r in results.items():
        print(
            f"| {name} | {r['rows']:.0f} | {r['wall_s']:.1f} | {r['rows_per_s']:.0f} | "
            f"{r['summary_rows_per_s']:.0f} | {r['cpu_us_per_row']:.0f} | "
            f"{r['rows_per_s'] / base:.2f} |"
        )
    if "W=1" in results and "W=2" in results:
        w1 = results["W=1"]["rows_per_s"]
        print(f"\nW=1 / unsharded = {w1 / base:.2f} (goal >= 0.95)")
        print(f"W=2 / W=1 = {results['W=2']['rows_per_s'] / w1:.2f} (goal >= 1.8)")


if __name__ == "__main__":
    main()
