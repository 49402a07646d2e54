"""What a finished job costs when it runs again: "nothing to do", flat in the input's size.

For a small and a large input (JSONL, `id_field`, `provider = "url"` against the test endpoint
`tests.support.endpoint_app` in this process), it runs the job to the end once, then times
`run_job` again `--repeat` times (`progress=False`, as under `--quiet`): every row is
committed, so the run must read no more than a row or two past the ledger's anchor, enter no
target and send nothing. It prints the median seconds of each size, their ratio (about 1 when
the check does not grow with the input), and the requests the endpoint received during the
reruns (must be 0).

    .venv/bin/python tests/perf/bench_nothing_to_do.py                  # 2,000 and 100,000 rows
    .venv/bin/python tests/perf/bench_nothing_to_do.py --large 20000    # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

import orjson  # noqa: E402

from batchrun import load_job, run_job  # noqa: E402
from tests.support.endpoint_app import EndpointApp  # noqa: E402
from tests.support.run import job_sections, write_job  # noqa: E402


def _prepare(tmp: Path, url: str, rows: int) -> Path:
    inp = tmp / f"in-{rows}.jsonl"
    inp.write_bytes(
        b"".join(orjson.dumps({"id": f"r{i}", "text": f"row {i}"}) + b"\n" for i in range(rows))
    )
    sections = job_sections(
        url,
        str(inp),
        str(tmp / f"out-{rows}.jsonl"),
        input={"id_field": "id"},
        run={"concurrency": 8, "batch_size": 32},
        output={"commit_rows": 5000},
    )
    return write_job(tmp / f"job-{rows}.toml", sections)


def _time_reruns(job: Path, repeat: int) -> tuple[float, int]:
    times = []
    done = 0
    for _ in range(repeat):
        start = time.perf_counter()
        summary = run_job(load_job(job), progress=False)
        times.append(time.perf_counter() - start)
        assert summary.rows == 0 and summary.pending == 0, summary
        done = summary.skipped_done
    return statistics.median(times), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d, EndpointApp(task="text-generation") as app:
        tmp = Path(d)
        figures = {}
        for rows in (args.small, args.large):
            job = _prepare(tmp, app.url, rows)
            start = time.perf_counter()
            first = run_job(load_job(job), progress=False)
            full = time.perf_counter() - start
            assert first.succeeded == rows, first
            before = app.stats()["requests"]
            median, done = _time_reruns(job, args.repeat)
            sent = app.stats()["requests"] - before
            figures[rows] = median
            print(
                f"{rows:>9,} rows: full run {full:7.2f} s; nothing to do ({done:,} done): "
                f"median {median * 1000:7.1f} ms over {args.repeat}; requests sent {sent}"
            )
        ratio = figures[args.large] / figures[args.small]
        print(f"nothing-to-do time, {args.large:,} rows vs {args.small:,}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
