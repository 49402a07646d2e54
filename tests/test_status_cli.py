"""`batchrun status` for a job file and for every live run; a closed pipe; `-v` anywhere.

Real `python -m batchrun` processes, a real test endpoint on 127.0.0.1, a real kill -9.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from batchrun.io.runs import RunIndex
from batchrun.job import load_job
from batchrun.reports import live_runs
from batchrun.runner import run_job
from tests.support.endpoint_app import EndpointApp
from tests.support.run import ROOT, finish, job_sections, start_run, write_job, write_jsonl
from tests.support.waiting import wait_for


def batchrun(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def test_status_lists_live_url_runs_not_killed_ones_and_reads_a_job_file(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    texts = [f"BAD row {i}" if i % 5 == 0 else f"row {i}" for i in range(20)]
    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    with EndpointApp(hold_after=2, reject_match="BAD") as app:  # the third request waits
        job = write_job(
            tmp_path / "job.toml",
            job_sections(app.url, str(tmp_path / "in.jsonl"), str(output)),
        )
        proc = start_run(job)
        try:
            wait_for(lambda: len(live_runs().runs) == 1, 30, "the run listed as live")
            shown = batchrun("status", "--json")
            assert shown.returncode == 0, shown.stderr
            (run,) = orjson.loads(shown.stdout)["runs"]
            assert run["pid"] == proc.pid and run["output"] == str(output)
            assert run["provider"] == "url" and run["endpoint"] == app.url
            assert run["job"] == str(job)
            assert orjson.loads(shown.stdout)["leases"] == []  # a url run holds no endpoint

            # A job file names its output; -v after the subcommand is accepted.
            of_job = batchrun("status", str(job), "-v")
            assert of_job.returncode == 0, of_job.stderr
            assert f"run: live, pid {proc.pid}" in of_job.stdout.splitlines()
            assert f"job: {job}" in of_job.stdout.splitlines()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            finish(proc)
        # Killed: its run file is still there, but its lock went with it, so it is not live.
        assert RunIndex().path_for(str(output)).exists()
        assert live_runs().runs == []
        app.configure(hold_after=-1)
        summary = run_job(load_job(job), progress=False)  # the resume ends and forgets itself
    assert summary.exit_code == 3
    assert not RunIndex().path_for(str(output)).exists()

    after = batchrun("status", str(job), "--json")
    assert after.returncode == 0, after.stderr
    status = orjson.loads(after.stdout)
    assert status["job"] == str(job) and status["live_pid"] is None
    assert status["results"] == 16 and status["errors"] == 4
    assert status["errors_by_status"] == {
        "http_400": {"count": 4, "first_error": "input rejected: contains 'BAD'"}
    }


def test_a_closed_stdout_exits_141_without_a_word(tmp_path: Path) -> None:
    for args in (["status", "--json"], ["endpoints", "--help"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before anything is written (`| head -c 0`)
        try:
            result = batchrun(*args, stdout=write_end)
        finally:
            os.close(write_end)
        assert result.returncode == 141, (args, result.stderr)
        assert result.stderr == "", (args, result.stderr)


def test_verbose_after_a_nested_subcommand(endpoint_app: EndpointApp) -> None:
    api = ["--api-url", endpoint_app.url + "/v2", "--namespace", "me"]
    loud = batchrun("endpoints", "list", *api, "-vv")
    # the test endpoint has no control plane: the API's 404 (exit 2), not click's "no such option"
    assert loud.returncode == 2 and "namespace 'me' not found" in loud.stderr, loud.stderr
    assert "DEBUG batchrun.endpoints.http: GET" in loud.stderr  # -vv took effect
