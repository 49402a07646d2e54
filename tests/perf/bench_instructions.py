"""Instructions per row: `batchrun run` against the lean bare aiohttp loop, under callgrind.

CPU time per row swings with the machine's load; instruction counts do not
(`valgrind --tool=callgrind` counts them whatever else runs). Each side runs in a process of
its own on the same server: batchrun's CLI on ``--rows`` rows with ``id_field`` (C = 64,
commits by row count as in a real run: valgrind is ~50x slower, so a commit by time would come
every few rows) and the bench's own lean bare loop (``bench_throughput.py --bare-child``), each
less a 1-row run of the same program (start-up), divided by the other rows.

    .venv/bin/python tests/perf/bench_instructions.py --rows 6000      # about 10 minutes
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_throughput as bench  # noqa: E402

from tests.support.endpoint_app import EndpointProcess  # noqa: E402


def instructions(cmd: list[str], out: Path, **kw: object) -> int:
    """The instructions `cmd` executed (callgrind's total)."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
        capture_output=True,
        check=False,
        **kw,  # type: ignore[arg-type]
    )
    found = re.search(rb"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(proc.stderr.decode()[-2000:])
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    n = args.rows
    with EndpointProcess(python=sys.executable) as server, tempfile.TemporaryDirectory() as tmp:
        server.configure(latency_ms=args.latency_ms, reset=True)
        work = Path(tmp)
        job = bench.write_cli_job(work, server.url, n, 64)
        text = job.read_text(encoding="utf-8")
        job.write_text(text.replace("[output]\n", "[output]\ncommit_seconds = 3600\n"), "utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHRUN_", "HF_"))}
        env["BATCHRUN_HOME"] = str(work / "home")
        out = work / "callgrind.out"
        child = [sys.executable, str(Path(bench.__file__)), "--bare-child", server.url]
        bare = (instructions([*child, str(n)], out) - instructions([*child, "1"], out)) / (n - 1)
        cli = [sys.executable, "-m", "batchrun", "run", str(job), "--restart", "-q"]
        one = instructions([*cli, "--limit", "1", "--output", "one.jsonl"], out, env=env, cwd=work)
        full = instructions(cli, out, env=env, cwd=work)
        run = (full - one) / (n - 1)
    print(f"{n:,} rows, {args.latency_ms:g} ms, C = 64, instructions a row, start-up subtracted")
    print(f"  bare aiohttp loop: {bare / 1e3:,.1f} k")
    print(f"  batchrun run:      {run / 1e3:,.1f} k  ({run / bare:.3f} x the bare loop)")


if __name__ == "__main__":
    main()
