"""Totals and the end-of-run summary a person sees: `InputReader.count_rows` for every format
(equal to the rows the reader yields), and `batchrun run` on a real pty (bar, then a few lines
on stderr; the JSON still on stdout) and on a pipe (no human summary)."""

from __future__ import annotations

import fcntl
import gzip
import io
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.io.readers import open_input
from batchrun.job import InputSpec
from batchrun.progress import Counts, Progress, summary_lines
from batchrun.summary import RunSummary
from batchrun.targets import StopReason
from tests.support.endpoint_app import EndpointApp
from tests.support.run import ROOT, job_sections, write_job
from tests.support.waiting import wait_for


def _count_and_rows(path: Path, limit: int | None = None) -> tuple[int | None, int]:
    reader = open_input(InputSpec(path=str(path)), limit=limit)
    return reader.count_rows(), sum(1 for _ in reader.rows())


def _csv_text(n: int) -> str:
    """A CSV whose fields hold quoted newlines (LF, CRLF), quotes, commas; with blank lines and
    a row with too many fields (a bad row the reader yields too)."""
    lines = ["id,text"]
    for i in range(n):
        if i % 7 == 3:
            lines.append(f'{i},"two\nlines, {i}"')
        elif i % 7 == 5:
            lines.append(f'{i},"crlf\r\ninside ""quoted"" {i}"')
        elif i == 10:
            lines.append("10,one,too many")
        else:
            lines.append(f"{i},plain {i}")
        if i % 50 == 0:
            lines.append("")
    return "\n".join(lines)  # no newline after the last row


@pytest.mark.parametrize("gzipped", [False, True], ids=["csv", "csv.gz"])
def test_csv_count_equals_the_readers_rows_with_quoted_newlines(
    tmp_path: Path, gzipped: bool
) -> None:
    data = _csv_text(500).encode()
    path = tmp_path / ("in.csv.gz" if gzipped else "in.csv")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    assert _count_and_rows(path) == (500, 500)
    assert _count_and_rows(path, limit=123) == (123, 123)
    assert _count_and_rows(path, limit=10_000) == (500, 500)


def test_csv_with_a_byte_order_mark_counts_and_reads_strings(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text\n1,a\n2,b\n")
    reader = open_input(InputSpec(path=str(path), id_field="id"))
    assert [(r.id, r.record) for r in reader.rows()] == [
        ("1", {"id": "1", "text": "a"}),
        ("2", {"id": "2", "text": "b"}),
    ]
    assert reader.count_rows() == 2


def test_csv_quoted_newlines_past_the_first_block_are_rows_not_damage(tmp_path: Path) -> None:
    # Arrow reads CSV in 1 MB blocks; a quoted newline after the first one used to make the
    # rest of the file one damaged-tail row, and the count unknown.
    path = tmp_path / "big.csv"
    n = 40_000
    path.write_text("id,text\n" + "".join(f'{i},"row {i}\nsecond line"\n' for i in range(n)))
    assert path.stat().st_size > 1 << 20
    reader = open_input(InputSpec(path=str(path)))
    rows = list(reader.rows())
    assert len(rows) == n and all(r.error is None for r in rows)
    assert rows[-1].record == {"id": str(n - 1), "text": f"row {n - 1}\nsecond line"}
    assert reader.count_rows() == n


@pytest.mark.parametrize("gzipped", [False, True], ids=["jsonl", "jsonl.gz"])
def test_jsonl_count_skips_blank_lines_as_the_reader_does(tmp_path: Path, gzipped: bool) -> None:
    lines = []
    for i in range(300):
        lines.append(orjson.dumps({"text": f"t{i}"}))
        if i % 9 == 0:
            lines.append(b"")  # a blank line
        if i % 13 == 0:
            lines.append(b" \t\r")  # whitespace only
        if i % 17 == 0:
            lines.append(b"not json")  # a bad row: the reader yields it
    data = b"\n".join(lines)  # no newline at the end
    path = tmp_path / ("in.jsonl.gz" if gzipped else "in.jsonl")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    want = 300 + len(range(0, 300, 17))
    assert _count_and_rows(path) == (want, want)
    assert _count_and_rows(path, limit=7) == (7, 7)


def test_parquet_count_from_metadata_and_glob_with_limit(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for name, n in (("a", 1500), ("b", 700)):
        table = pa.table({"text": [f"{name}{i}" for i in range(n)]})
        pq.write_table(table, tmp_path / "d" / f"{name}.parquet", row_group_size=400)
    glob = tmp_path / "d" / "*.parquet"
    assert _count_and_rows(glob) == (2200, 2200)
    assert _count_and_rows(glob, limit=1600) == (1600, 1600)
    assert _count_and_rows(tmp_path / "d" / "b.parquet", limit=0) == (0, 0)


def test_a_damaged_gzip_has_no_count(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(orjson.dumps({"text": f"t{i}"}) + b"\n" for i in range(5000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    reader = open_input(InputSpec(path=str(path)))
    assert reader.count_rows() is None  # unknown, not a wrong figure
    rows = list(reader.rows())  # the reader goes as far as it can, then one damaged-tail row
    assert rows[-1].error is not None and "cannot read past" in rows[-1].error


def test_the_log_lines_eta_is_for_the_rows_left_at_this_runs_rate(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Off a terminal: 300 rows done by earlier runs, 200 by this one in (at least) 100 s.
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal, even under `pytest -s`
    counts = Counts(succeeded=190, failed=10, retries=2, skipped_done=300)
    shown = Progress(
        enabled=True,
        total=1000,
        initial=300,
        counts=lambda: counts,
        cost_text=lambda: None,
        start=time.monotonic() - 100,
    )
    assert shown.bar is None
    with caplog.at_level(logging.INFO, logger="batchrun.progress"):
        shown.log_line()
    line = caplog.messages[-1]
    assert "500/1000 rows (ok 190, errors 10, retries 2, already done 300)" in line
    eta = re.search(r"ETA (\d+) s", line)
    assert eta is not None and 250 <= int(eta.group(1)) <= 260  # 500 left at 2 rows/s


def test_summary_lines_of_a_stopped_metered_run() -> None:
    summary = RunSummary(
        rows=1200,
        succeeded=1190,
        failed=10,
        skipped_done=3000,
        retries=4,
        elapsed_s=3725.0,
        rows_per_s=0.3,
        stop_reason=StopReason.BUDGET,
        output="out/r.parquet",
        errors_path="out/r.errors.jsonl",
        results_total=4150,
        errors_total=50,
        input_rows=10_000,
        pending=5800,
        cost_usd=1.25,
        billed_s=3780.0,
        idle_billed_s=60.0,
        endpoint="me/llm",
        on_exit="pause",
        endpoint_state_at_exit="paused",
    )
    assert summary_lines(summary) == [
        "batchrun: stopped (budget) after 1:02:05: 1,200 row(s) this run (0.3/s), 1,190 ok, "
        "10 failed, 4 retries",
        "  rows: 10,000 in the input, 3,000 done by earlier runs, 5,800 pending (a rerun sends "
        "them)",
        "  cost: $1.2500 (3,780 s billed, 60 s idle)",
        "  endpoint: me/llm, paused at exit (on_exit = pause)",
        "  results: out/r.parquet (4,150 row(s))",
        "  errors: out/r.errors.jsonl (50 row(s))",
    ]


# --- batchrun run on a terminal and on a pipe ---------------------------------------------------


def _job(tmp_path: Path, url: str) -> Path:
    (tmp_path / "in.csv").write_text(
        "id,text\n"
        + "".join(
            f'r{i},"{"bad" if i % 10 == 9 else "ok"} row {i}\nsecond line"\n' for i in range(100)
        )
    )
    sections = job_sections(
        url,
        str(tmp_path / "in.csv"),
        str(tmp_path / "out" / "r.jsonl"),
        input={"id_field": "id"},
        run={"max_attempts": 1, "concurrency": 4, "grace_period": 0.2},
    )
    return write_job(tmp_path / "job.toml", sections)


def _command(job: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "batchrun", "run", str(job), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_on_a_pty(job: Path, *args: str) -> tuple[int, dict[str, object], str]:
    """`batchrun run` with a 120-column pty as its stderr; (exit code, JSON stdout, terminal)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(
            _command(job, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=slave
        )
    finally:
        os.close(slave)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        reader.join(timeout=10)
        os.close(master)
    terminal = b"".join(seen).decode(errors="replace").replace("\r\n", "\n")
    return proc.returncode, orjson.loads(out), terminal


def test_interrupted_resumed_and_retried_on_a_terminal(tmp_path: Path) -> None:
    # 1. On a pipe: 30 rows settle, the endpoint holds the rest, SIGINT; no human summary.
    with EndpointApp(reject_match="bad", hold_after=30) as app:
        job = _job(tmp_path, app.url)
        first = subprocess.Popen(
            _command(job, "--limit", "60"),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            # 4 more than the 30 answered: the 30 are settled (each freed a slot) and 4 are held
            wait_for(lambda: app.stats()["requests"] >= 34, 30, "4 requests held after the 30th")
            os.kill(first.pid, signal.SIGINT)
            out, err = first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 130, err
        summary = orjson.loads(out)
        assert summary["rows"] == 30 and summary["input_rows"] == 60 and summary["pending"] == 30
        assert b"batchrun: " not in err  # no human summary off a terminal

        # 2. The resume, on a terminal: the bar starts at the 30 committed rows, of --limit's 60.
        app.configure(hold_after=-1)
        code, summary, terminal = _run_on_a_pty(job, "--limit", "60")
        assert code == 3, terminal
        assert summary["rows"] == 30 and summary["skipped_done"] == 30
        assert summary["input_rows"] == 60 and summary["pending"] == 0
        assert " 30/60 " in terminal and " 60/60 " in terminal and "61/60" not in terminal
        tail = terminal[terminal.rindex("batchrun: finished") :]
        ok, failed = summary["succeeded"], summary["failed"]
        assert "30 row(s) this run" in tail and f"{ok} ok, {failed} failed" in tail
        assert "rows: 60 in the input, 30 done by earlier runs" in tail
        assert f"results: {tmp_path / 'out' / 'r.jsonl'} (54 row(s))" in tail
        assert f"errors: {tmp_path / 'out' / 'r.errors.jsonl'} (6 row(s))" in tail
        assert '"rows"' not in terminal  # the JSON went to stdout only

        # 3. --retry-errors: the 6 are sent again; the bar starts at 54, not 60, and ends at 60.
        app.configure(reject_match="")
        code, summary, terminal = _run_on_a_pty(job, "--limit", "60", "--retry-errors")
    assert code == 0, terminal
    assert summary["succeeded"] == 6 and summary["results_total"] == 60
    assert " 54/60 " in terminal and " 60/60 " in terminal and "66/60" not in terminal
    tail = terminal[terminal.rindex("batchrun: finished") :]
    assert "6 row(s) this run" in tail and "6 ok, 0 failed" in tail
    assert "errors:" not in tail  # none left
