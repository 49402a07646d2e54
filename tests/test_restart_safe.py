"""`--restart` is safe: nothing is discarded before the endpoint and its token were checked, and
the discard happens under the run state's lock, which no other run can take meanwhile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import RunLockedError
from batchrun.io.ledger import Ledger
from batchrun.io.readers import open_input
from batchrun.job import Job, load_job
from batchrun.runner import run_job
from tests.support.endpoint_app import EndpointApp
from tests.support.lifecycle import finish, start_run
from tests.support.run import committed_meta, job_sections, read_jsonl, write_job, write_jsonl

N = 40


def _url_job(tmp: Path, url: str) -> Path:
    write_jsonl(tmp / "in.jsonl", [{"id": f"r{i}", "text": f"t{i}"} for i in range(N)])
    return write_job(
        tmp / "url.toml",
        job_sections(
            url, str(tmp / "in.jsonl"), str(tmp / "out/r.jsonl"), input={"id_field": "id"}
        ),
    )


def test_restart_with_a_refused_token_discards_nothing(
    tmp_path: Path, endpoint_app: EndpointApp, local_service: Any
) -> None:
    url_job = _url_job(tmp_path, endpoint_app.url)
    assert run_job(load_job(url_job), progress=False).exit_code == 0
    output = tmp_path / "out/r.jsonl"
    before, meta = output.read_bytes(), committed_meta(output)

    # the same output, now on a lifecycle endpoint whose API refuses the token (401)
    sections = job_sections("", str(tmp_path / "in.jsonl"), str(output), input={"id_field": "id"})
    sections["endpoint"] = {
        "provider": "local",
        "api_url": local_service.api_url,
        "name": "guarded",
        "namespace": "me",
        "repository": "batchrun/echo",
        "task": "text-generation",
    }
    lifecycle_job = write_job(tmp_path / "local.toml", sections)
    code, _, err = finish(start_run(lifecycle_job, "hf_wrong_token", "--restart"))
    assert code == 2, err
    assert "401" in err and "discarding" not in err and "hf_wrong_token" not in err, err
    assert output.read_bytes() == before and committed_meta(output) == meta

    # with a usable endpoint, --restart discards (saying what) and starts over
    code, summary, err = finish(start_run(url_job, "", "--restart"))
    assert code == 0, err
    assert "discarding 40 result(s)" in (summary["discarded"] or "")
    assert summary["skipped_done"] == 0 and summary["succeeded"] == N
    assert sorted(r["id"] for r in read_jsonl(output)) == sorted(f"r{i}" for i in range(N))


def _job(tmp: Path) -> Job:
    return Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": "http://127.0.0.1:9"},
            "input": {"path": str(tmp / "in.jsonl"), "field": "text"},
            "output": {"path": str(tmp / "out/r.jsonl"), "commit_rows": 10},
        }
    )


def _ledger(job: Job, *, restart: bool) -> Ledger:
    return Ledger(job, open_input(job.input, limit=job.run.limit), restart=restart)


def test_restart_holds_the_lock_from_open_through_the_discard(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({"text": f"t{i}"}) + b"\n" for i in range(5))
    )
    job = _job(tmp_path)
    first = _ledger(job, restart=False)
    for r in open_input(job.input).rows():
        first.track(r.seq, r.pos)
        first.add_result(r.seq, {"id": r.seq})
    first.commit()
    first.close()
    output = tmp_path / "out/r.jsonl"
    kept = output.read_bytes()

    restart = _ledger(job, restart=True)  # the lock is taken, nothing is deleted yet
    assert restart.discarded is None and output.read_bytes() == kept
    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()}"):
        _ledger(job, restart=False)
    restart.close()  # never begun (the endpoint did not get ready): everything stays
    assert output.read_bytes() == kept

    restart = _ledger(job, restart=True)
    restart.begin()  # the discard, still under the same lock
    assert restart.discarded is not None and "5 result(s)" in restart.discarded
    assert output.read_bytes() == b"" and restart.results_count == 0
    with pytest.raises(RunLockedError):
        _ledger(job, restart=False)
    restart.close()
    again = _ledger(job, restart=False)
    assert again.results_count == 0 and again.watermark == 0
    again.close()
