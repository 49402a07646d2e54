"""Disk full and other write failures: exit 7 with one line naming the file, the run state never
ahead of the files, and a resume with space sends the rest: every id exactly once.

Two real small filesystems: `RLIMIT_FSIZE` in the `batchrun run` child process (SIGXFSZ
ignored, so a write past the limit fails with EFBIG; no root needed), which lets each write
site fail first in turn, and, as root, a 2 MiB tmpfs that really fills (ENOSPC).
"""

from __future__ import annotations

import errno
import os
import random
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from batchrun.endpoints import SyncEndpointsClient
from batchrun.errors import OutputWriteError
from batchrun.io.state import RunState
from batchrun.job import load_job
from batchrun.runner import run_job
from tests.support.endpoint_app import EndpointApp
from tests.support.lifecycle import job_sections as lifecycle_sections
from tests.support.lifecycle import state_of
from tests.support.lifecycle import write_job as write_lifecycle_job
from tests.support.run import ROOT, job_sections, write_job, write_jsonl

EFBIG = "[Errno 27] File too large"
MARK = "Z" * 600  # rows whose text holds it are refused by the endpoint (long error rows)


def _text(rng: random.Random, size: int) -> str:
    return rng.randbytes(size // 2).hex()  # hex of random bytes: Parquet cannot squeeze it much


def _rows(n: int, size: int, *, long_from: int | None = None, mark: bool = False) -> list[Any]:
    rng = random.Random(n)
    rows = []
    for i in range(n):
        big = long_from is None or i >= long_from
        text = _text(rng, size) if big else f"t{i}"
        rows.append({"text": f"{MARK} {text}" if mark else text})
    return rows


def _job(tmp: Path, url: str, out: str, **output: Any) -> Path:
    return write_job(
        tmp / "job.toml",
        job_sections(
            url,
            str(tmp / "in.jsonl"),
            out,
            run={"concurrency": 8, "max_attempts": 1},
            output={"commit_seconds": 60, **output},
        ),
    )


def _run(
    job: Path, *args: str, fsize: int | None = None, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """`batchrun run JOB` as a real process, its file sizes capped at `fsize` bytes."""

    def cap() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    environ["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(job), "--quiet", *args],
        cwd=job.parent,
        env=environ,
        capture_output=True,
        timeout=60,
        preexec_fn=cap,  # the limit is the point (the child runs no threads before exec)
    )
    summary = orjson.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, summary, proc.stderr.decode(errors="replace")


def _meta(output: Path) -> dict[str, Any]:
    view = RunState.peek(RunState.directory_for(str(output)))
    assert view is not None, f"no run state for {output}"
    return view.committed.meta()


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file (each must parse: no torn line)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _results(output: Path) -> list[dict[str, Any]]:
    if output.is_dir():  # every part file on disk must be a whole Parquet file
        rows: list[dict[str, Any]] = []
        for part in sorted(output.iterdir()):
            assert part.name.startswith("part-") and part.suffix == ".parquet", part.name
            rows.extend(pq.read_table(part).to_pylist())
        return rows
    return _jsonl(output)


def _check_state_not_ahead(output: Path, errors: Path) -> None:
    """What the state counts is on disk, and the files hold nothing else (rolled back)."""
    meta = _meta(output)
    results, error_rows = _results(output), _jsonl(errors)
    assert len(results) == meta["results_count"]
    assert len(error_rows) == meta["errors_count"]
    if not output.is_dir():
        assert output.stat().st_size == meta["results_offset"]
    if errors.exists():
        assert errors.stat().st_size == meta["errors_offset"]
    ids = [r["id"] for r in results] + [e["id"] for e in error_rows]
    assert len(ids) == len(set(ids))


def _check_exactly_once(output: Path, errors: Path, n: int) -> None:
    ids = [r["id"] for r in _results(output)] + [e["id"] for e in _jsonl(errors)]
    assert sorted(ids) == list(range(n))


def _check_exit_7(code: int, summary: dict[str, Any], err: str, path: str, text: str) -> None:
    assert code == 7, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"batchrun: error: {path}"), err
    assert text in lines[0] and "run again to resume" in lines[0], err
    assert summary["exit_code"] == 7 and summary["resumable"] is True
    assert summary["stop_reason"] == "output_write_failed" and summary["error"] in lines[0]


# name: output, rows, endpoint knobs, [output] keys, file size cap, what fails, the OS error
SITES: dict[
    str, tuple[str, Callable[[], list[Any]], dict[str, Any], dict[str, Any], int, str, str]
] = {
    "jsonl-results": ("out/r.jsonl", lambda: _rows(300, 1000), {}, {"commit_rows": 40}, 200_000,
                      "out/r.jsonl: cannot write results", EFBIG),
    "jsonl-errors": ("out/r.jsonl", lambda: _rows(600, 100, mark=True), {"reject_match": MARK},
                     {"commit_rows": 100}, 100_000, "out/r.errors.jsonl: cannot write the errors file",
                     EFBIG),
    # tiny results, a commit per row: the state's write-ahead log reaches the cap first
    "state-commit": ("out/r.jsonl", lambda: _rows(120, 0, long_from=120), {}, {"commit_rows": 1},
                     64_000, "out/r.jsonl.batchrun/state.sqlite: cannot record the commit",
                     "disk I/O error"),
    # small rows first, then parts of big rows over the cap
    "parquet-results": ("out/r.parquet", lambda: _rows(300, 4000, long_from=150), {},
                        {"commit_rows": 50}, 100_000, "out/r.parquet: cannot ", EFBIG),
    # every part under the cap, the merge of 32 of them over it
    "parquet-merge": ("out/r.parquet", lambda: _rows(1700, 600), {}, {"commit_rows": 50},
                      600_000, "out/r.parquet: cannot merge part files", EFBIG),
}  # fmt: skip


@pytest.mark.parametrize("site", list(SITES))
def test_write_failure_at_each_site_is_exit_7_then_resume_exactly_once(
    tmp_path: Path, endpoint_app: EndpointApp, site: str
) -> None:
    out, rows, knobs, output_keys, fsize, failing, os_error = SITES[site]
    data = rows()
    write_jsonl(tmp_path / "in.jsonl", data)
    job = _job(tmp_path, endpoint_app.url, out, **output_keys)
    endpoint_app.configure(**knobs)
    output, errors = tmp_path / out, tmp_path / "out/r.errors.jsonl"

    code, summary, err = _run(job, fsize=fsize)
    _check_exit_7(code, summary, err, f"{tmp_path}/{failing}", os_error)
    _check_state_not_ahead(output, errors)
    meta = _meta(output)
    assert 0 < meta["results_count"] + meta["errors_count"] < len(data), "no commit before it"
    assert summary["results_total"] == meta["results_count"]
    assert summary["errors_total"] == meta["errors_count"]
    assert summary["succeeded"] + summary["failed"] == meta["results_count"] + meta["errors_count"]

    code, summary, err = _run(job)  # space again: the rest is sent, nothing twice
    assert code == (3 if knobs else 0), err
    _check_exactly_once(output, errors, len(data))
    assert summary["skipped_done"] == meta["results_count"] + meta["errors_count"]


def test_retry_file_failure_is_exit_7_then_retry_completes(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    n = 300
    write_jsonl(tmp_path / "in.jsonl", _rows(n, 100, mark=True))
    job = _job(tmp_path, endpoint_app.url, "out/r.jsonl", commit_rows=100)
    output, errors = tmp_path / "out/r.jsonl", tmp_path / "out/r.errors.jsonl"
    endpoint_app.configure(reject_match=MARK)
    code, _, err = _run(job)
    assert code == 3, err
    assert errors.stat().st_size > 60_000  # the cap below is for the retry file alone

    # (over 32 KiB: SQLite's shared-memory index file is that big)
    code, summary, err = _run(job, "--retry-errors", fsize=40_000)
    _check_exit_7(code, summary, err, f"{tmp_path}/out/r.errors.jsonl.retry", EFBIG)
    meta = _meta(output)
    assert 0 < meta["retry_offset"] == (tmp_path / "out/r.errors.jsonl.retry").stat().st_size

    endpoint_app.configure(reject_match="")
    code, summary, err = _run(job, "--retry-errors")
    assert code == 0, err
    assert summary["results_total"] == n and summary["errors_total"] == 0
    _check_exactly_once(output, errors, n)


# --- a real full disk: a 2 MiB tmpfs (root only) ---------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards; skipped where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE tests cover the rest)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.parametrize("out", ["r.jsonl", "r.parquet"])
def test_full_tmpfs_is_exit_7_with_the_summary_then_resume_exactly_once(
    tmp_path: Path, small_disk: Path, endpoint_app: EndpointApp, out: str
) -> None:
    n = 3000
    write_jsonl(tmp_path / "in.jsonl", _rows(n, 2000))
    job_file = _job(tmp_path, endpoint_app.url, str(small_disk / out), commit_rows=50)
    output, errors = small_disk / out, small_disk / "r.errors.jsonl"

    full = "No space left on device|database or disk is full"  # whichever file fills first
    # from the command line: exit 7, one line on stderr (no warning about the summary file that
    # cannot be kept either), the summary on stdout
    code, summary, err = _run(job_file)
    assert code == 7 and summary["exit_code"] == 7, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"batchrun: error: {small_disk}") and re.search(full, lines[0])
    _check_state_not_ahead(output, errors)
    meta = _meta(output)
    assert summary["results_total"] == meta["results_count"] > 0

    _fill(small_disk / "ballast")  # a rerun on a disk still full: exit 7 again, nothing lost
    with pytest.raises(OutputWriteError, match=full) as caught:
        run_job(load_job(job_file), progress=False)
    error = caught.value
    assert str(small_disk) in error.path and "\n" not in str(error)
    assert error.summary is not None and error.summary.exit_code == 7
    assert _meta(output) == meta
    _check_state_not_ahead(output, errors)
    (small_disk / "ballast").unlink()

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    summary = run_job(load_job(job_file), progress=False)
    assert summary.exit_code == 0 and summary.skipped_done == meta["results_count"]
    _check_exactly_once(output, errors, n)


# --- a lifecycle endpoint still gets its on_exit state ------------------------------------------


def test_write_failure_still_pauses_the_endpoint(tmp_path: Path, local_service: Any) -> None:
    n = 200
    rng = random.Random(7)
    write_jsonl(tmp_path / "input.jsonl", [{"id": i, "text": _text(rng, 1000)} for i in range(n)])
    sections = lifecycle_sections(local_service.api_url, "held", tmp_path, rows=n)
    job = write_lifecycle_job(tmp_path / "job.toml", sections)
    output, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    env = {"HF_TOKEN": local_service.token}

    code, summary, err = _run(job, fsize=100_000, env=env)
    _check_exit_7(code, summary, err, f"{output}: cannot write results", EFBIG)
    assert summary["on_exit"] == "pause" and summary["endpoint_state_at_exit"] == "paused"
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as api:
        assert state_of(api, "held") == "paused"
    _check_state_not_ahead(output, errors)

    code, summary, err = _run(job, env=env)
    assert code == 0, err
    _check_exactly_once(output, errors, n)
