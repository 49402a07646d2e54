"""A resume decides on content: touched or copied-again files resume, appended rows, new glob
files after the committed ones and a raised `--limit` extend the run (only new rows are sent:
counted on the test endpoint), and a changed committed part is refused naming where.

`--restart` asks on a terminal (a real pty) how many results and errors it discards."""

from __future__ import annotations

import gzip
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batchrun.errors import RunStateError
from batchrun.io.coverage import BLOCK
from batchrun.io.state import RunState
from batchrun.job import load_job
from batchrun.runner import RunSummary, run_job
from tests.support.endpoint_app import EndpointApp
from tests.support.lifecycle import ROOT, run_env
from tests.support.run import job_sections, read_results, write_job


def _texts(start: int, stop: int, tag: str = "t") -> list[str]:
    return [f"{tag}{i}" for i in range(start, stop)]


def _jsonl(texts: list[str]) -> bytes:
    return b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts)


def _job(tmp: Path, url: str, inp: str, **run: Any) -> Path:
    sections = job_sections(url, str(tmp / inp), str(tmp / "out/r.jsonl"), run=run)
    return write_job(tmp / "job.toml", sections)


def _run(job: Path, **kw: Any) -> RunSummary:
    return run_job(load_job(job), progress=False, **kw)


def _once(tmp: Path, app: EndpointApp, texts: list[str]) -> None:
    """Every text was sent exactly once over all runs, and is in the results exactly once."""
    assert app.received() == dict.fromkeys(texts, 1)
    got = Counter(r["generated_text"] for r in read_results(tmp / "out/r.jsonl"))
    assert got == Counter(f"echo: {t}" for t in texts)


def _refused(job: Path, match: str, **kw: Any) -> None:
    with pytest.raises(RunStateError, match=match):
        _run(job, **kw)


def test_touch_and_an_identical_copy_resume_sending_nothing(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(_jsonl(_texts(0, 30)))
    job = _job(tmp_path, endpoint_app.url, "in.jsonl")
    assert _run(job).succeeded == 30
    os.utime(inp, ns=(1, 1))  # touch: another mtime, the same bytes
    assert _run(job).skipped_done == 30
    with RunState.open(tmp_path / "out/r.jsonl.batchrun", fingerprint=None, output="o") as st:
        (cover,) = st.covers()  # the new mtime is noted: the next resume skips the hash
        assert (cover.mtime_ns, cover.size, cover.extent) == (1, inp.stat().st_size, cover.size)
    shutil.copyfile(tmp_path / "in.jsonl", tmp_path / "copy.jsonl")
    os.replace(tmp_path / "copy.jsonl", inp)  # the identical file again: a new inode and mtime
    s = _run(job)
    assert s.exit_code == 0 and s.skipped_done == 30 and s.succeeded == 0
    _once(tmp_path, endpoint_app, _texts(0, 30))


def test_appended_rows_extend_the_run_jsonl_csv_gzip(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(_jsonl(_texts(0, 20)))
    job = _job(tmp_path, endpoint_app.url, "in.jsonl")
    assert _run(job).succeeded == 20
    with open(inp, "ab") as f:
        f.write(_jsonl(_texts(20, 25)))
    s = _run(job)
    assert (s.exit_code, s.succeeded, s.skipped_done) == (0, 5, 20)
    _once(tmp_path, endpoint_app, _texts(0, 25))

    # CSV: new rows after the committed ones
    shutil.rmtree(tmp_path / "out")
    csv = tmp_path / "in.csv"
    pacsv.write_csv(pa.table({"text": _texts(0, 12, "c")}), csv)
    job = _job(tmp_path, endpoint_app.url, "in.csv")
    assert _run(job).succeeded == 12
    with open(csv, "ab") as f:
        f.write(b"".join(b'"c%d"\n' % i for i in range(12, 15)))
    assert _run(job).succeeded == 3

    # gzip: a member appended to the .gz
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(_jsonl(_texts(0, 6, "g")), mtime=0))
    (tmp_path / "job.toml").unlink()
    job = write_job(
        tmp_path / "job.toml",
        job_sections(endpoint_app.url, str(gz), str(tmp_path / "outg/r.jsonl")),
    )
    assert _run(job).succeeded == 6
    with open(gz, "ab") as f:
        f.write(gzip.compress(_jsonl(_texts(6, 8, "g")), mtime=0))
    assert _run(job).succeeded == 2
    sent = _texts(0, 25) + _texts(0, 15, "c") + _texts(0, 8, "g")
    assert endpoint_app.received() == dict.fromkeys(sent, 1)
    got = read_results(tmp_path / "outg/r.jsonl")
    assert sorted(r["generated_text"] for r in got) == sorted(f"echo: {t}" for t in sent[-8:])


def test_new_glob_file_after_extends_and_before_is_refused(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "b.jsonl").write_bytes(_jsonl(_texts(0, 5, "b")))
    (data / "c.jsonl").write_bytes(_jsonl(_texts(0, 5, "c")))
    job = _job(tmp_path, endpoint_app.url, "data/*.jsonl")
    assert _run(job).succeeded == 10
    (data / "d.jsonl").write_bytes(_jsonl(_texts(0, 4, "d")))
    s = _run(job)
    assert (s.succeeded, s.skipped_done) == (4, 10)
    (data / "a.jsonl").write_bytes(_jsonl(_texts(0, 3, "a")))
    _refused(job, r"input file a.jsonl is new and sorts before b.jsonl, which holds committed")
    (data / "a.jsonl").unlink()
    with open(data / "c.jsonl", "ab") as f:  # rows added to a file before the last: refused
        f.write(_jsonl(["c5"]))
    _refused(job, r"input file c.jsonl grew from \d+ to \d+ bytes, and it sorts before d.jsonl")
    _once(tmp_path, endpoint_app, _texts(0, 5, "b") + _texts(0, 5, "c") + _texts(0, 4, "d"))
    ids = [r["id"] for r in read_results(tmp_path / "out/r.jsonl")]
    assert sorted(ids) == sorted({*ids}) and "d.jsonl:0" in ids


def test_limit_raised_removed_and_lowered(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(_jsonl(_texts(0, 30)))
    job = _job(tmp_path, endpoint_app.url, "in.jsonl")
    assert _run(job, limit=10).succeeded == 10
    with open(inp, "ab") as f:  # appended while the committed part ends mid-file
        f.write(_jsonl(_texts(30, 35)))
    assert _run(job, limit=20).succeeded == 10
    _refused(job, r"limit 5 is below the 20 rows already committed", limit=5)
    s = _run(job)  # no limit: the rest
    assert (s.succeeded, s.skipped_done) == (15, 20)
    assert sorted(r["id"] for r in read_results(tmp_path / "out/r.jsonl")) == list(range(35))
    _once(tmp_path, endpoint_app, _texts(0, 35))


def test_changed_committed_part_is_refused_naming_bytes_and_line(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    texts = [f"row {i:05d} " + "x" * 40 for i in range(3000)]  # ~180 KB: three blocks
    inp = tmp_path / "in.jsonl"
    data = _jsonl(texts)
    inp.write_bytes(data)
    job = _job(tmp_path, endpoint_app.url, "in.jsonl", concurrency=16)
    assert _run(job, limit=2500).succeeded == 2500
    changed = data.replace(b"row 01500 ", b"row 0150x ")  # same size, a committed row
    inp.write_bytes(changed)
    at = data.index(b"row 01500 ")
    lo = at // BLOCK * BLOCK
    line = data[:lo].count(b"\n") + 1
    _refused(job, rf"input file in.jsonl changed in its committed part: bytes {lo}-{lo + BLOCK - 1}"
             rf" differ from what was committed \(from line {line}\)")  # fmt: skip
    inp.write_bytes(data[: data.index(b"row 01000 ")])  # shrunk below the committed rows
    _refused(job, r"input file in.jsonl shrank to \d+ bytes; its committed rows end at byte")
    # the uncommitted rows after the limit may change freely
    inp.write_bytes(data.replace(b"row 02900 ", b"row 0290x "))
    assert _run(job).succeeded == 500
    assert len(endpoint_app.received()) == 3000 and sum(endpoint_app.received().values()) == 3000


def test_last_line_without_newline_continued_is_refused(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(_jsonl(_texts(0, 4)).rstrip(b"\n"))  # no newline at the end
    job = _job(tmp_path, endpoint_app.url, "in.jsonl")
    assert _run(job).succeeded == 4
    with open(inp, "ab") as f:
        f.write(b'\n{"text":"t4"}')  # a newline first: a new row (again the last, no newline)
    assert _run(job).succeeded == 1
    with open(inp, "ab") as f:
        f.write(b'{"more": 1}\n')  # continues the committed last line
    _refused(job, r"its last committed line \(line 5, ending at byte \d+\) had no newline")
    _once(tmp_path, endpoint_app, _texts(0, 5))


def test_parquet_unchanged_resumes_new_file_extends_changed_refused(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"text": _texts(0, 8, "p")}), data / "a.parquet")
    job = _job(tmp_path, endpoint_app.url, "data/*.parquet")
    assert _run(job).succeeded == 8
    os.utime(data / "a.parquet", ns=(1, 1))
    pq.write_table(pa.table({"text": _texts(0, 3, "q")}), data / "b.parquet")
    assert _run(job).succeeded == 3
    pq.write_table(pa.table({"text": _texts(0, 3, "r")}), data / "b.parquet")  # rewritten
    _refused(job, r"input file b.parquet (changed|shrank)")
    _once(tmp_path, endpoint_app, _texts(0, 8, "p") + _texts(0, 3, "q"))


def _read_until(fd: int, wanted: bytes, timeout: float = 30.0) -> bytes:
    """What the pty shows until `wanted` appears (or the process closes it)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _on_a_terminal(job: Path, *args: str, answer: bytes | None) -> tuple[int, str, str]:
    """`batchrun run JOB --restart` with stdin and stderr on a pty; stdout is the summary."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job), "--quiet", "--restart", *args],
        cwd=ROOT,
        env=run_env(""),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    try:
        shown = b""
        if answer is not None:
            shown = _read_until(master, b"Go on? [y/N]: ")
            assert b"--restart discards 6 result(s) and 0 error row(s)" in shown, shown
            os.write(master, answer)
        out, _ = proc.communicate(timeout=60)
        shown += _read_until(master, b"\0", timeout=1)
    finally:
        os.close(master)
    return proc.returncode, out.decode(), shown.decode(errors="replace")


def test_restart_asks_on_a_terminal_and_yes_skips_it(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    (tmp_path / "in.jsonl").write_bytes(_jsonl(_texts(0, 6)))
    job = _job(tmp_path, endpoint_app.url, "in.jsonl")
    assert _run(job).succeeded == 6
    before = (tmp_path / "out/r.jsonl").read_bytes()
    code, out, shown = _on_a_terminal(job, answer=b"n\n")
    assert code == 2 and "--restart not confirmed: nothing was discarded" in shown
    assert (tmp_path / "out/r.jsonl").read_bytes() == before
    assert sum(endpoint_app.received().values()) == 6
    code, out, shown = _on_a_terminal(job, answer=b"y\n")
    assert code == 0 and orjson.loads(out)["succeeded"] == 6, shown
    code, out, shown = _on_a_terminal(job, "--yes", answer=None)
    assert code == 0 and "Go on?" not in shown and orjson.loads(out)["succeeded"] == 6
    assert endpoint_app.received() == dict.fromkeys(_texts(0, 6), 3)
