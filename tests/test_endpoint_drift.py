"""An existing endpoint that differs from the job: refused before anything is touched, or updated
with `--update-endpoint`; and the exit codes of an unreachable control plane (5).

The drift runs are real `batchrun run` processes against a real `batchrun serve`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun.endpoints import SyncEndpointsClient
from batchrun.endpoints.models import Endpoint
from batchrun.endpoints.payloads import EndpointDrift
from batchrun.job import EndpointSpec, Job
from tests.support.lifecycle import (
    ECHO,
    batchrun_cli,
    finish,
    job_sections,
    read_jsonl,
    start_run,
    state_of,
    write_job,
)

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def api(local_service: Any) -> Iterator[SyncEndpointsClient]:
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as client:
        yield client


def _raw(**model: Any) -> dict[str, Any]:
    return {
        "name": "ep",
        "type": "authenticated",
        "provider": {"vendor": "aws", "region": "us-east-1"},
        "compute": {"accelerator": "cpu", "instanceType": "intel-icl", "instanceSize": "x2"},
        "model": {"repository": ECHO, "framework": "pytorch", "task": "text-generation", **model},
        "status": {"state": "paused"},
    }


def _drift(endpoint: dict[str, Any], **keys: Any) -> EndpointDrift:
    job = Job.from_dict(
        {
            "endpoint": {"provider": "local", "name": "ep", **keys},
            "input": {"path": "in.jsonl"},
            "output": {"path": "out.jsonl"},
        }
    )
    return EndpointDrift.of(
        job.endpoint, Endpoint.from_raw(endpoint, "me"), given=job.endpoint_keys
    )


def test_drift_compares_only_the_keys_the_job_gives_normalised() -> None:
    # defaults the job does not write (instance_size "x8"? no: "x2", vendor, ...) are not wishes
    same = _drift(_raw(env={"A": "1", "B": "2"}), repository=ECHO, type="protected", env={"A": "1"})
    assert same.differences == [] and same.warnings == []
    assert _drift(_raw(), region="eu-west-1").fixed == ["region"]  # an update cannot move it
    branch = _drift(_raw(revision=SHA), revision="main")
    assert branch.differences == [] and branch.warnings[0].startswith("revision: job main")
    drift = _drift(
        _raw(env={"A": "1", "B": "2", "HF_TOKEN": "hf_old"}),
        repository="batchrun/other",
        instance_size="x8",
        env={"A": "9", "HF_TOKEN": "hf_new"},
    )
    assert drift.differences == [
        "repository: job batchrun/other, endpoint batchrun/echo",
        "instance_size: job x8, endpoint x2",
        "env.A: job 9, endpoint 1",
        "env.HF_TOKEN: differs (value not shown)",
    ]
    assert "hf_new" not in str(drift.differences) and "hf_old" not in str(drift.differences)
    # the update keeps the endpoint's other env keys: an update replaces the whole env
    assert drift.update == {
        "repository": "batchrun/other",
        "instance_size": "x8",
        "env": {"A": "9", "B": "2", "HF_TOKEN": "hf_new"},
    }
    # built in Python (no job file): the keys that differ from their defaults are the job's
    python = EndpointDrift.of(
        EndpointSpec(name="ep", instance_size="x4"), Endpoint.from_raw(_raw(), "me")
    )
    assert python.differences == ["instance_size: job x4, endpoint x2"]


def test_drift_is_refused_untouched_then_applied_with_update_endpoint(
    local_service: Any, api: SyncEndpointsClient, tmp_path: Path
) -> None:
    api.create("drifty", repository=ECHO, task="text-generation")
    api.wait("drifty", timeout=60, refresh_every=0.1)
    api.pause("drifty")
    api.update("drifty", repository="batchrun/other")  # paused: takes effect at the next resume
    before = api.get("drifty")
    assert before.repository == "batchrun/other" and before.instance_size == "x2"
    job = write_job(tmp_path / "job.toml", job_sections(local_service.api_url, "drifty", tmp_path))
    out = tmp_path / "out.jsonl"

    code, _, err = finish(start_run(job, local_service.token, "--set", "endpoint.instance_size=x8"))
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("batchrun: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "repository: job batchrun/echo, endpoint batchrun/other" in lines[0]
    assert "instance_size: job x8, endpoint x2" in lines[0] and "--update-endpoint" in lines[0]
    after = api.get("drifty")  # never resumed: still paused, unchanged, no row sent
    assert after.state_text == "paused" and after.updated_at == before.updated_at
    assert after.repository == "batchrun/other" and read_jsonl(out) == []

    code, summary, err = finish(
        start_run(
            job, local_service.token, "--set", "endpoint.instance_size=x8", "--update-endpoint"
        )
    )
    assert code == 0 and summary["succeeded"] == 20, err
    updated = api.get("drifty")
    assert (updated.repository, updated.instance_size) == (ECHO, "x8")
    assert state_of(api, "drifty") == "paused" and len(read_jsonl(out)) == 20


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_control_plane_is_exit_5_for_endpoints_and_run(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}/v2"
    listed = batchrun_cli("hf_x", "endpoints", "list", "--api-url", dead, "--namespace", "me")
    errors = [line for line in listed.stderr.splitlines() if line.startswith("batchrun: error: ")]
    assert listed.returncode == 5 and "Traceback" not in listed.stderr, listed.stderr
    assert len(errors) == 1 and "cannot connect" in errors[0], listed.stderr

    sections = job_sections(dead, "gone", tmp_path)
    sections["endpoint"].update(provider="hf", namespace="me", watchdog=False)
    code, _, err = finish(start_run(write_job(tmp_path / "job.toml", sections), "hf_x"))
    errors = [line for line in err.splitlines() if line.startswith("batchrun: error: ")]
    assert code == 5 and "Traceback" not in err, err
    assert len(errors) == 1 and "cannot connect" in errors[0] and "hf_x" not in err, err
