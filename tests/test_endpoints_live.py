"""The seed's whole flow against the real local service (`batchrun serve` in a subprocess).

Python API and CLI, with the echo model `batchrun/echo`: create, wait, call it, list, pause,
resume, scale to zero, update, hardware, delete; `wait` failing, timing out and refusing
paused endpoints; `list("*")`; exit codes and one-line errors of `batchrun endpoints`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from click.testing import CliRunner, Result

from batchrun.cli import main
from batchrun.endpoints import EndpointsClient, EndpointState, SyncEndpointsClient
from batchrun.errors import (
    AuthenticationError,
    ConflictError,
    EndpointFailedError,
    EndpointNotRunningError,
    EndpointTimeoutError,
    NotFoundError,
    UnprocessableError,
)

ECHO = {"repository": "batchrun/echo", "task": "text-generation"}
POLL = 0.05


def test_seed_flow_through_the_python_api(local_service: Any) -> None:
    async def flow() -> None:
        async with EndpointsClient(api_url=local_service.api_url, token=local_service.token) as c:
            assert await c.namespace() == "local"
            created = await c.create("batch-endpoint", type="protected", **ECHO)
            assert created.state in (EndpointState.PENDING, EndpointState.INITIALIZING)
            assert created.url is None and created.type == "authenticated"

            ready = await c.wait("batch-endpoint", timeout=30, refresh_every=POLL)
            assert ready.state is EndpointState.RUNNING and ready.url
            async with ready.async_client as http:
                answer = await http.post("/", json={"inputs": "I am"})
            assert answer.status_code == 200 and "generated_text" in answer.json()[0]
            with ready.client as http:
                assert http.get(ready.health_route or "/health").status_code == 200

            assert [e.name for e in await c.list()] == ["batch-endpoint"]
            assert [(e.namespace, e.name) for e in await c.list("*")] == [
                ("local", "batch-endpoint")
            ]

            paused = await c.pause("batch-endpoint")
            assert paused.state is EndpointState.PAUSED and paused.url is None
            with pytest.raises(EndpointNotRunningError, match="resume"):
                await c.wait("batch-endpoint", timeout=30, refresh_every=POLL)

            resumed = await c.resume("batch-endpoint")
            assert resumed.state in (EndpointState.PENDING, EndpointState.INITIALIZING)
            ready = await c.wait("batch-endpoint", timeout=30, refresh_every=POLL)
            again = await c.resume("batch-endpoint")  # 400 "already running" is fine
            assert again.state is EndpointState.RUNNING

            zero = await c.scale_to_zero("batch-endpoint")
            assert zero.state is EndpointState.SCALED_TO_ZERO and zero.url
            with pytest.raises(EndpointNotRunningError, match="scaled to zero"):
                await c.wait("batch-endpoint", timeout=30, refresh_every=POLL)

            updated = await c.update("batch-endpoint", min_replica=0, max_replica=2)
            assert (updated.min_replica, updated.max_replica) == (0, 2)
            assert updated.repository == "batchrun/echo"  # untouched: only the keys given
            fetched = await c.get("batch-endpoint")
            assert (fetched.min_replica, fetched.max_replica) == (0, 2)

            cpu = await c.hardware(accelerator="cpu", vendor="aws")
            assert cpu and all(h.price_per_hour > 0 for h in cpu)

            with pytest.raises(ConflictError, match="already exists"):
                await c.create("batch-endpoint", **ECHO)
            with pytest.raises(UnprocessableError):
                await c.create("bad-scaling", min_replica=3, max_replica=1, **ECHO)

            await c.delete("batch-endpoint")
            with pytest.raises(NotFoundError, match=r"'batch-endpoint'.*'local'"):
                await c.get("batch-endpoint")

    asyncio.run(flow())


def test_wait_fails_times_out_and_refuses_a_wrong_token(local_service: Any) -> None:
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as c:
        c.create("missing-model", repository="nobody/missing", task="text-generation")
        start = time.monotonic()
        with pytest.raises(EndpointFailedError, match="not available locally"):
            c.wait("missing-model", timeout=30, refresh_every=POLL)
        assert time.monotonic() - start < 20

        c.create("slow-start", env={"BATCHRUN_ECHO_START_DELAY_MS": "20000"}, **ECHO)
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            c.wait("slow-start", timeout=0.5, refresh_every=POLL)
        assert isinstance(info.value, EndpointTimeoutError)
        assert 0.4 < time.monotonic() - start < 5
        assert "slow-start" in str(info.value) and "last state" in str(info.value)
        c.pause("slow-start")

    with (
        SyncEndpointsClient(api_url=local_service.api_url, token="not-the-token") as wrong,
        pytest.raises(AuthenticationError, match="HF_TOKEN") as auth,
    ):
        wrong.list()
    assert auth.value.status == 401 and "not-the-token" not in str(auth.value)


# -- the CLI ---------------------------------------------------------------------------------


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["endpoints", *args], catch_exceptions=False)


def test_seed_flow_through_the_cli(local_service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHRUN_ENDPOINTS_API", local_service.api_url)
    monkeypatch.setenv("HF_TOKEN", local_service.token)

    r = cli("deploy", "cli-ep", "--repo", "batchrun/echo", "--task", "text-generation",
            "--env", "BATCHRUN_ECHO_LATENCY_MS=1", "--custom-image", "ghcr.io/tgi:1.1.0",
            "--health-route", "/ready", "--port", "80", "--wait", "--timeout", "30s",
            "--refresh-every", "0.05")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "state:" in r.stdout and "running" in r.stdout and "http://127.0.0.1:" in r.stdout

    r = cli("ls")
    assert r.exit_code == 0, r.output
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "MODEL", "TASK", "INSTANCE", "REPLICAS", "URL"]
    assert row.split()[:4] == ["cli-ep", "running", "batchrun/echo", "text-generation"]
    assert header.index("STATE") == row.index("running")  # aligned columns

    r = cli("list", "--namespace", "*")
    assert r.exit_code == 0 and r.stdout.splitlines()[1].split()[:2] == ["local", "cli-ep"]
    assert cli("list", "-q").stdout == "cli-ep\n"
    items = json.loads(cli("list", "--json").stdout)
    assert (
        items[0]["name"] == "cli-ep" and items[0]["model"]["env"]["BATCHRUN_ECHO_LATENCY_MS"] == "1"
    )
    described = json.loads(cli("describe", "cli-ep", "--json").stdout)
    assert described["status"]["state"] == "running" and described["healthRoute"] == "/ready"
    assert described["model"]["image"] == {
        "custom": {"url": "ghcr.io/tgi:1.1.0", "healthRoute": "/ready", "port": 80}
    }

    r = cli("pause", "cli-ep")
    assert r.exit_code == 0 and "paused" in r.stdout
    r = cli("wait", "cli-ep", "--timeout", "30", "--refresh-every", "0.05")
    assert r.exit_code == 5
    assert r.stderr.count("\n") == 1 and "batchrun endpoints resume cli-ep" in r.stderr

    r = cli("resume", "cli-ep", "--wait", "--refresh-every", "0.05", "-q")
    assert (r.exit_code, r.stdout) == (0, "cli-ep\n")
    r = cli("resume", "cli-ep", "--fail-if-already-running")
    assert r.exit_code == 2 and "already running" in r.stderr

    r = cli("scale-to-zero", "cli-ep", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"]["state"] == "scaledToZero"
    r = cli("update", "cli-ep", "--min-replica", "0", "--max-replica", "2")
    assert r.exit_code == 0 and "(0-2)" in r.stdout
    r = cli("update", "cli-ep")
    assert r.exit_code == 2 and "nothing to change" in r.stderr

    r = cli("hardware", "--accelerator", "cpu")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert "$/HOUR" in lines[0] and all(" cpu " in line for line in lines[1:])

    r = cli("delete", "cli-ep")
    assert r.exit_code == 2 and "--yes" in r.stderr
    assert cli("delete", "cli-ep", "--yes").exit_code == 0
    r = cli("get", "cli-ep")
    assert r.exit_code == 2 and "'cli-ep'" in r.stderr and "'local'" in r.stderr


def test_cli_exit_codes_and_one_line_errors(
    local_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHRUN_ENDPOINTS_API", local_service.api_url)
    monkeypatch.setenv("HF_TOKEN", local_service.token)

    r = cli("create", "broken", "--repository", "nobody/missing", "--task", "text-generation",
            "--wait", "--refresh-every", "0.05")  # fmt: skip
    assert r.exit_code == 5 and "failed" in r.stderr and r.stderr.count("\n") == 1
    r = cli("create", "slow", "--repo", "batchrun/echo", "--task", "text-generation",
            "--env", "BATCHRUN_ECHO_START_DELAY_MS=20000")  # fmt: skip
    assert r.exit_code == 0 and "batchrun endpoints wait slow" in r.stderr
    r = cli("wait", "slow", "--timeout", "0.3", "--refresh-every", "0.05")
    assert r.exit_code == 5 and "not ready after 0.3s" in r.stderr
    assert cli("pause", "slow").exit_code == 0

    r = cli("create", "x", "--repo", "batchrun/echo", "--task", "t", "--health-route", "/h")
    assert r.exit_code == 2 and "--custom-image" in r.stderr
    r = cli("create", "x", "--repo", "batchrun/echo", "--task", "t", "--env", "NOEQUALS")
    assert r.exit_code == 2 and "KEY=VALUE" in r.stderr
    r = cli("create", "x", "--repo", "batchrun/echo", "--task", "t", "--min-replica", "3")
    assert r.exit_code == 2 and "maxReplica" in r.stderr  # 422 from the API
    r = cli("get", "slow", "--namespace", "*")
    assert r.exit_code == 2 and "only works with `list`" in r.stderr
    r = cli("list", "--token", "wrong")
    assert r.exit_code == 2 and "HF_TOKEN" in r.stderr and "wrong" not in r.stderr

    # A real process: an unreachable API gives WARNING retry lines, then one error line, exit 5
    # (APIConnectionError, issue 12).
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env["BATCHRUN_ENDPOINTS_API"] = "http://127.0.0.1:1/v2"
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "endpoints", "list", "--namespace", "local"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 5, proc.stderr
    *retries, last = proc.stderr.splitlines()
    assert last.startswith("batchrun: error: ") and "cannot connect" in last
    assert retries and all("WARNING" in line and "retry" in line for line in retries)
