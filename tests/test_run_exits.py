"""`batchrun run` prints its JSON summary on every exit, and a finished job costs nothing.

Real processes: `batchrun run` as a subprocess, the local service (`batchrun serve`) or the
test endpoint app on 127.0.0.1, a real lock held on the run state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.endpoints import SyncEndpointsClient
from batchrun.io.state import RunState, lock, unlock
from tests.support import lifecycle
from tests.support.endpoint_app import EndpointApp
from tests.support.run import finish, job_sections, read_jsonl, start_run, write_job, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def api(local_service: Any) -> Iterator[SyncEndpointsClient]:
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as client:
        yield client


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("batchrun: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_finished_job_leaves_a_paused_endpoint_paused_and_exits_2_and_8_with_summaries(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    api.create("done", repository=lifecycle.ECHO, task="text-generation")
    api.wait("done", timeout=60, refresh_every=0.1)
    api.pause("done")
    untouched = api.get("done").updated_at
    sections = lifecycle.job_sections(local_service.api_url, "done", tmp_path, rows=20)
    job = lifecycle.write_job(tmp_path / "job.toml", sections)
    out = tmp_path / "out.jsonl"

    # exit 2 (drift, refused before resuming): the summary says why, the endpoint is untouched
    code, summary, err = lifecycle.finish(
        lifecycle.start_run(job, local_service.token, "--set", "endpoint.instance_size=x8")
    )
    assert code == 2, err
    assert summary["error"] == _error_line(err).removeprefix("batchrun: error: ")
    assert "instance_size: job x8, endpoint x2" in summary["error"]
    assert summary["exit_code"] == 2 and summary["endpoint_state_at_exit"] is None
    assert summary["succeeded"] == 0 and not read_jsonl(out)
    assert api.get("done").updated_at == untouched

    code, first, err = lifecycle.finish(lifecycle.start_run(job, local_service.token))
    assert code == 0 and first["succeeded"] == 20 and first["pending"] == 0, err
    paused = api.get("done")
    assert paused.state_text == "paused" and first["cost_usd"] > 0

    # nothing to do: no resume (the endpoint is not even read), cost 0, exit 0
    for extra in ((), ("--retry-errors",)):  # an empty errors file: nothing to retry either
        code, summary, err = lifecycle.finish(lifecycle.start_run(job, local_service.token, *extra))
        assert code == 0, err
        assert "nothing to do: 20 rows already done" in err
        assert summary["exit_code"] == 0 and summary["error"] is None and summary["pending"] == 0
        assert summary["rows"] == 0 and summary["skipped_done"] == 20
        assert summary["cost_usd"] == 0 and summary["billed_s"] == 0
        assert summary["endpoint"] == "done" and summary["endpoint_state_at_exit"] is None
        after = api.get("done")
        assert after.state_text == "paused" and after.updated_at == paused.updated_at
        assert local_service.status()["active_endpoints"] == 0  # no worker was started

    # exit 8: another run holds the output; the endpoint is left alone, the summary says why
    fd = lock(RunState.directory_for(str(out)), str(out))
    try:
        code, summary, err = lifecycle.finish(lifecycle.start_run(job, local_service.token))
    finally:
        unlock(fd)
    assert code == 8, err
    assert summary["error"] == _error_line(err).removeprefix("batchrun: error: ")
    assert summary["exit_code"] == 8 and summary["pending"] is None
    assert summary["output"] == str(out) and summary["results_total"] == 0  # not opened
    assert summary["cost_usd"] == 0 and summary["endpoint_state_at_exit"] is None
    assert api.get("done").updated_at == paused.updated_at
    assert RunState.last_run(RunState.directory_for(str(out)))["exit_code"] == 0  # type: ignore[index]


def test_nothing_to_do_with_rows_in_the_errors_file_is_exit_3_and_sends_nothing(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    rows = [{"id": i, "text": f"row {i}"} for i in range(30)] + [{"id": 30, "other": "x"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    sections = job_sections(endpoint_app.url, "in.jsonl", "out.jsonl", input={"id_field": "id"})
    job = write_job(tmp_path / "job.toml", sections)
    code, summary, err = finish(start_run(job))
    assert code == 3 and summary["errors_total"] == 1 and summary["pending"] == 0, err
    sent = sum(endpoint_app.received().values())
    assert sent == 30

    # bad_input is not retried: --retry-errors has nothing to send either
    for extra in ((), ("--retry-errors",)):
        code, summary, err = finish(start_run(job, *extra))
        assert code == 3 and "nothing to do: 31 rows already done" in err, err
        assert summary["exit_code"] == 3 and summary["pending"] == 0 and summary["rows"] == 0
        assert summary["cost_usd"] is None  # provider "url": nothing is metered
    assert sum(endpoint_app.received().values()) == sent

    # with --limit: the rows up to the limit are what must be done
    sections["output"]["path"] = "limited.jsonl"
    limited = write_job(tmp_path / "limited.toml", sections)
    code, summary, err = finish(start_run(limited, "--limit", "10"))
    assert code == 0 and summary["succeeded"] == 10, err
    code, summary, err = finish(start_run(limited, "--limit", "10"))
    assert code == 0 and "nothing to do: 10 rows already done" in err, err
    assert sum(endpoint_app.received().values()) == sent + 10


def _run_cli(*args: str, cwd: Path) -> tuple[int, dict[str, Any], str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=60,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object, nothing else on stdout
    return proc.returncode, orjson.loads(lines[0]), proc.stderr.decode(errors="replace")


def test_exit_2_before_anything_was_read_prints_what_is_known(tmp_path: Path) -> None:
    # a job file that cannot be loaded: only the error is known
    bad = tmp_path / "bad.toml"
    bad.write_text('[endpoint]\nprovider = "url"\nurl = "http://127.0.0.1:9"\ncolour = 1\n')
    code, summary, err = _run_cli(str(bad), cwd=tmp_path)
    assert code == 2 and summary["exit_code"] == 2
    assert summary["error"] == _error_line(err).removeprefix("batchrun: error: ")
    assert summary["pending"] is None and summary["output"] == ""

    # a bad option (click's usage error)
    code, summary, err = _run_cli(str(bad), "--concurrency", "0", cwd=tmp_path)
    assert code == 2 and summary["exit_code"] == 2 and "--concurrency" in summary["error"], err

    # a missing input file: the job is known, so is where its output would go
    sections = job_sections("http://127.0.0.1:9", "missing.jsonl", "out/r.jsonl")
    job = write_job(tmp_path / "job.toml", sections)
    code, summary, err = _run_cli(str(job), "--quiet", cwd=tmp_path)
    assert code == 2 and summary["exit_code"] == 2 and "missing.jsonl" in summary["error"], err
    assert summary["output"].endswith("out/r.jsonl") and summary["pending"] is None
    assert summary["error"] == _error_line(err).removeprefix("batchrun: error: ")
    assert not (tmp_path / "out").exists()  # nothing was started
