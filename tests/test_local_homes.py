"""The local service belongs to its home (issue 13, sections 1 and 2).

Each `BATCHRUN_HOME` has its own service, found through `<home>/local/service.json` and a
liveness check, never by probing a fixed port; `batchrun endpoints --local` reaches it with the
home's token; whatever finds it later (leases, `reap`, `plan`, the pause command) goes through
that file, so a restart on another port breaks nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result

from batchrun.cli import main
from batchrun.endpoints.connect import HOME_SERVICE
from batchrun.lifecycle.rest import pause_command
from batchrun.local import service_status, stop_service
from tests.support.lifecycle import (
    ROOT,
    finish,
    first_request_hangs,
    job_sections,
    start_run,
    write_job,
)
from tests.support.waiting import wait_for

JUNK_HF_TOKEN = "hf_not_the_local_services_token"


def _home_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHRUN_", "HF_TOKEN"))}
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        BATCHRUN_HOME=str(home),
        HF_TOKEN=JUNK_HF_TOKEN,
        NO_PROXY="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def _cli(home: Path, *args: str, **env: str) -> Result:
    """`batchrun ARGS` in this process (a CLI process costs a second of imports), in `home`."""
    settings: dict[str, str | None] = {
        "BATCHRUN_HOME": str(home),
        "HF_TOKEN": JUNK_HF_TOKEN,
        "BATCHRUN_ENDPOINTS_API": None,
        **env,
    }
    return CliRunner().invoke(main, list(args), env=settings)


def _batchrun(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`batchrun ARGS` as its own process, in `home`."""
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=ROOT,
        env=_home_env(home, **env),
        capture_output=True,
        text=True,
        timeout=90,
    )


def _address(home: Path) -> dict[str, object]:
    return dict(orjson.loads((home / "local" / "service.json").read_bytes()))


def _local_job(tmp: Path, name: str, **extra: dict[str, object]) -> Path:
    """A `provider = "local"` job with no `api_url`: this home's service."""
    tmp.mkdir(parents=True, exist_ok=True)
    endpoint = {"api_url": None, **extra.pop("endpoint", {})}
    return write_job(tmp / "job.toml", job_sections("", name, tmp, endpoint=endpoint, **extra))


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two batchrun homes; their services are stopped at the end."""
    a, b = tmp_path / "home-a", tmp_path / "home-b"
    try:
        yield a, b
    finally:
        for home in (a, b):
            stop_service(home / "local")


def test_two_homes_two_jobs_at_once_each_see_only_their_own(homes: tuple[Path, Path]) -> None:
    a, b = homes
    jobs = {home: _local_job(home.parent / f"job-{home.name}", "echo") for home in homes}
    # Jobs ignore BATCHRUN_ENDPOINTS_API (it is for `batchrun endpoints`): here it goes nowhere.
    runs = {
        home: start_run(
            jobs[home],
            JUNK_HF_TOKEN,
            BATCHRUN_HOME=str(home),
            BATCHRUN_ENDPOINTS_API="http://127.0.0.1:1/v2",
        )
        for home in homes
    }
    for proc in runs.values():
        code, summary, err = finish(proc)
        assert code == 0, err
        assert summary["succeeded"] == 20, summary

    addr = {home: _address(home) for home in homes}
    assert addr[a]["port"] != addr[b]["port"], "each home's service takes a free port of its own"
    for home in homes:
        assert Path(str(addr[home]["state_dir"])).resolve() == (home / "local").resolve()
    tokens = {home: (home / "local" / "token").read_text().strip() for home in homes}
    assert tokens[a] != tokens[b]

    # Each service holds one endpoint, "echo", paused by its own run; the other home's token
    # is refused by it.
    for home, other in ((a, b), (b, a)):
        url = str(addr[home]["api_url"])
        with httpx.Client(trust_env=False, timeout=10) as c:
            own = c.get(
                f"{url}/endpoint/local", headers={"Authorization": f"Bearer {tokens[home]}"}
            )
            assert own.status_code == 200, own.text
            items = own.json()["items"]
            assert [(e["name"], e["status"]["state"]) for e in items] == [("echo", "paused")]
            foreign = c.get(
                f"{url}/endpoint/local", headers={"Authorization": f"Bearer {tokens[other]}"}
            )
            assert foreign.status_code == 401

    # A service.json that names another home's service (a copied home, a reused port) is not
    # this home's service: `--status` says so, and a job here would start its own.
    stray = b.parent / "home-c"
    (stray / "local").mkdir(parents=True)
    (stray / "local" / "service.json").write_bytes(orjson.dumps(addr[a]))
    assert service_status(stray / "local") is None

    # `serve --status` in each home reports its own service.
    for home in homes:
        status = _cli(home, "serve", "--status")
        assert status.exit_code == 0, status.stdout + status.stderr
        assert orjson.loads(status.stdout)["pid"] == addr[home]["pid"]
        assert tokens[home] not in status.stdout

    # `--local` and BATCHRUN_ENDPOINTS_API=local reach this home's service with its token.
    listed = _cli(a, "endpoints", "list", "--local", "-q")
    assert listed.exit_code == 0, listed.stderr
    assert listed.stdout.split() == ["echo"]
    got = _cli(b, "endpoints", "get", "echo", "--json", BATCHRUN_ENDPOINTS_API="local")
    assert got.exit_code == 0, got.stderr
    assert orjson.loads(got.stdout)["status"]["state"] == "paused"
    assert tokens[b] not in got.stdout + got.stderr

    # --api-url wins over --local; an api_url without /v2 is accepted; a 401 from a local service
    # says where its token is.
    origin = str(addr[a]["api_url"]).removesuffix("/v2")
    # (home A's token: home B's service would refuse it)
    first = _cli(b, "endpoints", "list", "-q", "--local", "--api-url", origin, "--token", tokens[a])
    assert first.exit_code == 0, first.stderr
    assert first.stdout.split() == ["echo"]
    ok = _cli(a, "endpoints", "list", "-q", "--api-url", origin, HF_TOKEN=tokens[a])
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.split() == ["echo"]
    refused = _cli(a, "endpoints", "list", "--api-url", origin)
    assert refused.exit_code == 2, refused.stderr
    assert str(a / "local" / "token") in refused.stderr and "--local" in refused.stderr
    assert "hf auth login" not in refused.stderr
    assert JUNK_HF_TOKEN not in refused.stderr

    # A fixed --port another home's service holds: the message names that home.
    taken = _batchrun(b, "serve", "--port", str(addr[a]["port"]))
    assert taken.returncode == 2, taken.stderr
    assert str(Path(str(addr[a]["state_dir"]))) in taken.stderr, taken.stderr

    # `plan` finds the service: the endpoint's real state and its price.
    plan = _cli(a, "plan", str(jobs[a]), "--json")
    assert plan.exit_code == 0, plan.stderr
    planned = orjson.loads(plan.stdout)
    assert planned["endpoint_state"] == "paused", planned
    assert planned["price_per_hour"] is not None, planned


def test_a_dead_runs_lease_is_reaped_after_the_service_moved_to_another_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("BATCHRUN_HOME", str(home))  # for pause_command, in this process
    job = _local_job(
        tmp_path / "job",
        "echo-hang",
        endpoint={"watchdog": False, "env": first_request_hangs()},
        run={"request_timeout": 60, "concurrency": 1},
    )
    try:
        proc = start_run(job, JUNK_HF_TOKEN, BATCHRUN_HOME=str(home))
        leases = home / "leases"
        wait_for(
            lambda: any(
                orjson.loads(p.read_bytes()).get("found_state") for p in leases.glob("*.json")
            ),
            timeout=60,
            what="the run's lease to record the endpoint's state",
        )
        out_file = tmp_path / "job" / "out.jsonl"
        first = _address(home)
        token = (home / "local" / "token").read_text().strip()

        def running() -> bool:
            with httpx.Client(trust_env=False, timeout=5) as c:
                r = c.get(
                    f"{first['api_url']}/endpoint/local/echo-hang",
                    headers={"Authorization": f"Bearer {token}"},
                )
            return r.status_code == 200 and r.json()["status"]["state"] == "running"

        wait_for(running, timeout=60, what="the endpoint to run")
        (lease,) = [orjson.loads(p.read_bytes()) for p in leases.glob("*.json")]
        assert lease["api_url"] == HOME_SERVICE, "the lease names the home's service, not a port"
        assert pause_command("echo-hang", "local", str(first["api_url"])).endswith(" --local")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert not out_file.exists() or out_file.read_bytes().count(b"\n") < 20

        # The service restarts elsewhere (stop it; `--local` starts a new one on a free port).
        assert stop_service(home / "local") == first["pid"]
        got = _cli(home, "endpoints", "get", "echo-hang", "--local", "-q")
        assert got.exit_code == 0, got.stderr
        second = _address(home)
        assert second["pid"] != first["pid"]

        leases_now = _cli(home, "status")
        assert leases_now.exit_code == 0, leases_now.stderr
        assert "on this home's local service" in leases_now.stdout and "DEAD" in leases_now.stdout

        reaped = _cli(home, "reap")
        assert reaped.exit_code == 0, reaped.stdout + reaped.stderr
        assert "echo-hang: " in reaped.stdout and "→ paused" in reaped.stdout, reaped.stdout
        assert not list(leases.glob("*.json"))
        state = _cli(home, "endpoints", "get", "echo-hang", "--local", "--json")
        assert orjson.loads(state.stdout)["status"]["state"] == "paused"
    finally:
        stop_service(home / "local")
