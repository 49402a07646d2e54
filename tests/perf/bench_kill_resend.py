"""Rows re-sent after kill -9: a kill loop over one run, JSONL and Parquet side by side.

For each output format it runs ``python -m batchrun run JOB`` as a real process
(``provider = "url"``, the test endpoint `tests.support.endpoint_app` in its own process on 127.0.0.1
with a small latency, ``id_field``, default commit settings) over ``--rows`` rows, kills it
with SIGKILL ``--kills`` times, restarting it after each kill, then lets the last run finish.

When to kill: each run (segment) is killed once the endpoint has received a random number of
new rows since the restart (one row a request: the default batch_size), drawn (seeded, the
same draws for every format) uniformly from 0.5–1.5 × rows / (kills + 1). Counting rows the
endpoint received, not seconds, spreads the kills over the run whatever the machine's load, and
puts them at random points of the commit cycle (a kill right after a commit is the best case,
one right before it the worst).

From the endpoint's per-input receive counts (``/_stats?inputs=1``, taken after each kill and
at the end) and the output files it computes:

- lost: ids in neither the results nor the errors file (must be 0);
- duplicated: ids more than once in results ∪ errors (must be 0);
- committed rows sent again: ids committed at a kill that the endpoint received after it
  (must be 0);
- re-sent total: inputs received more than once;
- re-sent per kill: inputs received before the kill whose count went up after the restart
  (sent, but their result was not committed); the worst and the median over the kills.

    .venv/bin/python tests/perf/bench_kill_resend.py                       # 100,000 rows, 20 kills
    .venv/bin/python tests/perf/bench_kill_resend.py --rows 5000 --kills 3  # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

import orjson  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from tests.support.endpoint_app import EndpointProcess  # noqa: E402
from tests.support.run import committed_meta, read_jsonl, read_results  # noqa: E402

SEGMENT_TIMEOUT = 300.0  # seconds without reaching a kill point or the end: give up


@dataclass
class Outcome:
    """What one format's kill loop measured."""

    fmt: str
    rows: int
    kills: int = 0
    committed_before_last: int = 0  # rows committed when the last run started
    lost: int = 0
    duplicated: int = 0
    committed_resent: int = 0
    resent_total: int = 0
    sends: int = 0  # rows the endpoint received in all
    per_kill: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    final_rc: int = -1
    note: str = ""


def text_of(i: int) -> str:
    """The input text of row `i` (unique, so the endpoint's counts map back to ids)."""
    return f"row {i}: the quick brown fox"


def id_of(text: str) -> int:
    return int(text.split(":", 1)[0][4:])


def write_input(path: Path, rows: int) -> None:
    with open(path, "wb") as f:
        for start in range(0, rows, 10_000):
            f.write(
                b"".join(
                    orjson.dumps({"id": i, "text": text_of(i)}) + b"\n"
                    for i in range(start, min(rows, start + 10_000))
                )
            )


def write_job(path: Path, url: str, inp: Path, out: Path, concurrency: int) -> None:
    """The job: provider url, id_field, the given C, every other setting (commits) default."""
    path.write_text(
        f'[endpoint]\nprovider = "url"\nurl = "{url}"\ntask = "text-generation"\n'
        f'[input]\npath = "{inp}"\nfield = "text"\nid_field = "id"\n'
        f'[output]\npath = "{out}"\n'
        f"[run]\nconcurrency = {concurrency}\n"
    )


def start(job: Path, log: Path) -> subprocess.Popen[bytes]:
    """`batchrun run JOB --quiet` in its own session; stdout (the summary) and stderr to `log`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )


def fail(message: str, log: Path) -> NoReturn:
    """Stop the benchmark with `message` and the end of the runs' log."""
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    raise SystemExit("\n".join([message, *tail]))


def committed_ids(output: Path, errors: Path) -> set[int]:
    """Ids in the committed part of the results and the errors file, as a crash left them."""
    try:
        meta = committed_meta(output)
    except Exception:  # no run state yet: nothing committed
        return set()
    ids: set[int] = set()
    if output.is_dir():
        live = meta.get("live_parts")
        numbers = live if live is not None else range(1, int(meta.get("parts", 0)) + 1)
        for n in numbers:
            part = output / f"part-{int(n):06d}.parquet"
            ids.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
    elif output.exists():
        data = output.read_bytes()[: int(meta.get("results_offset", 0))]
        ids.update(orjson.loads(line)["id"] for line in data.splitlines())
    if errors.exists():
        data = errors.read_bytes()[: int(meta.get("errors_offset", 0))]
        ids.update(orjson.loads(line)["id"] for line in data.splitlines())
    return ids


def run_format(
    fmt: str, app: EndpointProcess, base: Path, inp: Path, targets: list[int], args: Any
) -> Outcome:
    """The kill loop for one output format; the endpoint's counters are reset first."""
    work = base / fmt
    work.mkdir()
    output = work / f"results.{fmt}"
    errors = work / "results.errors.jsonl"
    job = work / "job.toml"
    log = work / "run.log"
    write_job(job, app.url, inp, output, args.concurrency)
    app.configure(reset=True)
    result = Outcome(fmt=fmt, rows=args.rows)
    snapshots: list[tuple[set[int], Counter[str]]] = []
    t0 = time.perf_counter()
    for k, target in enumerate(targets, 1):
        floor = app.stats()["requests"]
        proc = start(job, log)
        deadline = time.monotonic() + SEGMENT_TIMEOUT
        try:
            while proc.poll() is None and app.stats()["requests"] - floor < target:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{fmt}: kill {k} not reached in {SEGMENT_TIMEOUT:.0f} s")
                time.sleep(0.005)
            if proc.poll() is not None:  # it finished (or failed) before the kill point
                if proc.returncode not in (0, 3):
                    fail(f"{fmt}: run {k} exited {proc.returncode} before its kill point", log)
                result.note = f"the run finished (exit {proc.returncode}) before kill {k}"
                break
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        result.kills += 1
        snapshots.append((committed_ids(output, errors), Counter(app.received())))
        sent = app.stats()["requests"] - floor
        print(
            f"  {fmt}: kill {k} at {sent:,} rows sent by this run (kill point {target:,}), "
            f"{len(snapshots[-1][0]):,} committed",
            file=sys.stderr,
        )
    result.committed_before_last = len(snapshots[-1][0]) if snapshots else 0
    proc = start(job, log)
    try:
        result.final_rc = proc.wait(SEGMENT_TIMEOUT * 4)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SystemExit(f"{fmt}: the last run did not finish") from None
    result.wall_s = time.perf_counter() - t0
    if result.final_rc not in (0, 3):
        fail(f"{fmt}: the last run exited {result.final_rc}", log)
    final = Counter(app.received())

    # every id exactly once in results ∪ errors
    found = Counter(int(r["id"]) for r in read_results(output))
    found.update(int(e["id"]) for e in read_jsonl(errors))
    result.lost = sum(1 for i in range(args.rows) if i not in found)
    result.duplicated = sum(1 for n in found.values() if n > 1)

    # re-sent rows, per kill: received before the kill, received again after the restart
    counts = [s[1] for s in snapshots] + [final]
    for (committed, before), later in zip(snapshots, counts[1:], strict=True):
        again = [t for t, n in before.items() if later[t] > n]
        result.per_kill.append(len(again))
        result.committed_resent += sum(1 for t in again if id_of(t) in committed)
    result.resent_total = sum(1 for n in final.values() if n > 1)
    result.sends = sum(final.values())
    print(f"  {fmt}: done in {result.wall_s:.1f} s, exit {result.final_rc}", file=sys.stderr)
    return result


def table(outcomes: list[Outcome]) -> str:
    def per_kill(o: Outcome, how: str) -> str:
        if not o.per_kill:
            return "–"
        value = max(o.per_kill) if how == "max" else statistics.median(o.per_kill)
        return f"{value:,.0f}"

    rows: list[tuple[str, list[str]]] = [
        ("kills", [str(o.kills) for o in outcomes]),
        ("rows", [f"{o.rows:,}" for o in outcomes]),
        ("lost (must be 0)", [f"{o.lost:,}" for o in outcomes]),
        ("duplicated (must be 0)", [f"{o.duplicated:,}" for o in outcomes]),
        ("committed rows sent again (must be 0)", [f"{o.committed_resent:,}" for o in outcomes]),
        ("re-sent total (received more than once)", [f"{o.resent_total:,}" for o in outcomes]),
        ("worst re-sent per kill", [per_kill(o, "max") for o in outcomes]),
        ("median re-sent per kill", [per_kill(o, "median") for o in outcomes]),
        ("rows sent in all", [f"{o.sends:,}" for o in outcomes]),
        ("committed when the last run started", [f"{o.committed_before_last:,}" for o in outcomes]),
        ("last run's exit code", [str(o.final_rc) for o in outcomes]),
        ("wall time (s)", [f"{o.wall_s:.1f}" for o in outcomes]),
    ]
    lines = [
        "| figure | "
        + " | ".join(o.fmt.upper() if o.fmt == "jsonl" else o.fmt.title() for o in outcomes)
        + " |",
        "| --- |" + " ---: |" * len(outcomes),
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1, help="for the kill points")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=3.0, help="the endpoint's latency")
    parser.add_argument("--formats", default="jsonl,parquet", help="comma-separated")
    parser.add_argument(
        "--workdir", help="keep inputs, outputs and run logs here (default: a temp dir)"
    )
    args = parser.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in ("jsonl", "parquet") for f in formats):
        parser.error("--formats takes jsonl, parquet or both (comma-separated)")
    if args.rows < 1 or args.kills < 0 or args.concurrency < 1 or args.latency_ms < 0:
        parser.error("--rows and --concurrency must be ≥ 1, --kills and --latency-ms ≥ 0")
    rng = random.Random(args.seed)
    mean = args.rows / (args.kills + 1)
    targets = [max(1, round(rng.uniform(0.5, 1.5) * mean)) for _ in range(args.kills)]

    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()[0]
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as tmp:
        base = Path(args.workdir or tmp)
        base.mkdir(parents=True, exist_ok=True)
        os.environ["BATCHRUN_HOME"] = str(base / "home")  # leases of these runs stay here
        inp = base / "in.jsonl"
        write_input(inp, args.rows)
        with EndpointProcess(python=sys.executable, latency_ms=args.latency_ms) as app:
            for fmt in formats:
                outcomes.append(run_format(fmt, app, base, inp, targets, args))
    load_end = os.getloadavg()[0]

    print(
        f"\n{started:%Y-%m-%d %H:%M} UTC · {platform.node()} · {os.cpu_count()} cores · "
        f"Python {platform.python_version()} · load average (1 min) {load_start:.2f} at start, "
        f"{load_end:.2f} at end"
    )
    print("command: .venv/bin/python tests/perf/bench_kill_resend.py " + " ".join(sys.argv[1:]))
    print(
        f"C = {args.concurrency}, endpoint latency {args.latency_ms:g} ms, id_field, default "
        f"commit settings; kill points: {mean:,.0f} × U(0.5, 1.5) new rows sent, seed {args.seed}"
    )
    print()
    print(table(outcomes))
    for o in outcomes:
        if o.note:
            print(f"\n{o.fmt}: {o.note}")
        print(f"{o.fmt} re-sent per kill: {', '.join(f'{n:,}' for n in o.per_kill)}")
    bad = [o.fmt for o in outcomes if o.lost or o.duplicated or o.committed_resent]
    if bad:
        print(f"\nEXACTLY-ONCE BROKEN: {', '.join(bad)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
