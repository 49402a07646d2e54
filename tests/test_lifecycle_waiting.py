"""The wait for a cold endpoint, as a person sees it (issue 13, section 4).

`batchrun run` on a terminal shows `waiting for local/cold: initializing 0:02` in place while
the local service's echo model starts slowly (`BATCHRUN_ECHO_START_DELAY_MS`); off a terminal
each state is one INFO line, and at INFO (`-v`) nothing else says a state, let alone a poll.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pty
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.endpoints import SyncEndpointsClient
from batchrun.job import Job
from batchrun.progress import WaitingLine
from batchrun.runner import arun_job
from tests.support.lifecycle import ROOT, job_sections, run_env, state_of, write_job

COLD = {"BATCHRUN_ECHO_START_DELAY_MS": "1200"}
"""The echo model sleeps 1.2 s while initializing: the waiting line has something to show."""

_SHOWN = re.compile(r"waiting for local/cold: (\w+) (\d+:\d\d)")
"""The waiting line's text; group 1 is the state, group 2 the clock."""


def _cold_job(tmp: Path, api_url: str, output: str) -> dict[str, dict[str, Any]]:
    return job_sections(
        api_url,
        "cold",
        tmp,
        rows=5,
        endpoint={"env": COLD, "watchdog": False},  # not what this tests: one process less
        output={"path": str(tmp / output)},
    )


def _run(job: Path, token: str, *, stderr: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job)],
        cwd=ROOT,
        env=run_env(token),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
    )


def _read_all(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the run closed the terminal
            return
        if not chunk:
            return
        into.extend(chunk)


def test_cold_start_waiting_line_on_a_terminal_and_once_per_state_in_a_log(
    local_service: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token)
    # On a terminal (the line's only reader is a person): the endpoint is created, and the line is redrawn in place while it starts.
    master, slave = pty.openpty()
    job_file = write_job(
        tmp_path / "job.toml", _cold_job(tmp_path, local_service.api_url, "tty.jsonl")
    )
    proc = _run(job_file, local_service.token, stderr=slave)
    os.close(slave)
    screen = bytearray()
    reader = threading.Thread(target=_read_all, args=(master, screen), daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=90)
    code, summary = proc.returncode, orjson.loads(out)
    reader.join(30)
    os.close(master)
    text = screen.decode(errors="replace")
    assert code == 0 and summary["succeeded"] == 5, text
    redraws = text.split("\r\x1b[K")
    shown = [m.groups() for m in map(_SHOWN.match, redraws) if m]
    assert "initializing" in {state for state, _ in shown}, text
    assert len({clock for _, clock in shown}) >= 2, text  # the clock moves: > 1 s of waiting
    assert "INFO batchrun.progress: waiting for" not in text  # in place only, on a terminal
    assert state_of(api, "cold") == "paused"

    # Off a terminal, all at INFO as with -v: the paused endpoint is resumed; a line a state.
    monkeypatch.setenv("HF_TOKEN", local_service.token)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    job = Job.from_dict(_cold_job(tmp_path, local_service.api_url, "log.jsonl"), source="job")
    with caplog.at_level(logging.INFO):
        summary = asyncio.run(arun_job(job))
    assert summary.succeeded == 5
    said = [r.getMessage() for r in caplog.records]
    states = Counter(m.group(1) for s in said if (m := _SHOWN.fullmatch(s)))
    assert states["initializing"] == 1, said
    assert set(states.values()) == {1}, said
    assert not [s for s in said if " is initializing" in s or "next look in" in s], said

    # Without a waiting line (`--quiet`, `batchrun endpoints wait`), the wait says each state
    # once at INFO, never a line a look.
    caplog.clear()
    api.resume("cold")
    with caplog.at_level(logging.INFO, logger="batchrun.endpoints.client"):
        api.wait("cold", timeout=60, refresh_every=0.05)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    states = Counter(m.group(1) for s in said if (m := re.search(r"cold is (\w+)$", s)))
    assert states["initializing"] == 1, said  # 1.2 s at a look every 50 ms: once, not ~24 times
    assert set(states.values()) == {1}, said
    assert sum("is ready after" in s for s in said) == 1
    api.close()


def test_waiting_line_redraws_in_place_and_logs_once_per_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    screen = io.StringIO()
    line = WaitingLine(screen, tty=True)
    for state, elapsed in [("pending", 0.2), ("pending", 0.7), ("initializing", 1.1)]:
        line.show("local/cold", state, elapsed)
    line.show("local/cold", "initializing", 3725.0)
    line.done()
    assert screen.getvalue().split("\r\x1b[K") == [
        "",
        "waiting for local/cold: pending 0:00",
        "waiting for local/cold: initializing 0:01",
        "waiting for local/cold: initializing 1:02:05",
        "",
    ]

    elsewhere = io.StringIO()
    logged = WaitingLine(elsewhere, tty=False)
    with caplog.at_level(logging.INFO, logger="batchrun.progress"):
        for state, elapsed in [("pending", 0.0), ("pending", 0.5), ("initializing", 6.0)]:
            logged.show("local/cold", state, elapsed)
        logged.show("local/cold", "initializing", 7.0)
        logged.done()
    assert [r.getMessage() for r in caplog.records] == [
        "waiting for local/cold: pending 0:00",
        "waiting for local/cold: initializing 0:06",
    ]
    assert elsewhere.getvalue() == ""
