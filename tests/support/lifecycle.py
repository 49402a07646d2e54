"""Helpers for the lifecycle tests: jobs on the local service, a faulty control-plane proxy,
`batchrun run` as a real process, and reading endpoint states."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from batchrun.endpoints import SyncEndpointsClient
from batchrun.errors import NotFoundError
from batchrun.local.backends import EchoFaults

ROOT = Path(__file__).resolve().parents[2]
ECHO = "batchrun/echo"


def first_request_hangs(env: dict[str, str] | None = None, *, clear: int = 200) -> dict[str, str]:
    """The echo model's `env` plus a seeded hang: the first request its worker admits never
    answers, and none of the `clear` after it does (other faults as `env` says).

    The echo model draws each admitted request's fate from `BATCHRUN_ECHO_SEED`
    (`EchoFaults`), so a worker started with this env holds exactly that request: a run on it
    cannot end before its `request_timeout`, however loaded the machine is. The env takes
    effect when the worker starts: at create, or at the resume after an update.
    """
    base = {**(env or {}), "BATCHRUN_ECHO_HANG_RATE": "0.002"}
    for seed in itertools.count():
        trial = {**base, "BATCHRUN_ECHO_SEED": str(seed)}
        faults = EchoFaults.from_env(trial)
        if faults.draw() == "hang" and all(faults.draw() != "hang" for _ in range(clear)):
            return trial
    raise AssertionError("unreachable")


def write_rows(path: Path, n: int, *, start: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"".join(
            orjson.dumps({"id": f"r{i}", "text": f"row {i}"}) + b"\n"
            for i in range(start, start + n)
        )
    )
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def job_sections(
    api_url: str, name: str, tmp: Path, *, rows: int = 20, **extra: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """A job on the local service's echo model: `rows` input rows, JSONL output under `tmp`."""
    inp = tmp / "input.jsonl"
    if not inp.exists():
        write_rows(inp, rows)
    sections: dict[str, dict[str, Any]] = {
        "endpoint": {
            "provider": "local",
            "api_url": api_url,
            "name": name,
            "repository": ECHO,
            "task": "text-generation",
            "ready_timeout": 60,
        },
        "input": {"path": str(inp), "field": "text", "id_field": "id"},
        "output": {"path": str(tmp / "out.jsonl"), "commit_seconds": 0.1},
        "run": {
            "concurrency": 4,
            "max_attempts": 2,
            "request_timeout": 10,
            "backoff_max": 0.1,
            "grace_period": 1,
            "scale_up_timeout": 30,
        },
    }
    for section, values in extra.items():
        target = sections.setdefault(section, {})
        for key, value in values.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return sections


def write_job(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def run_env(token: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_TOKEN"] = token
    env.update(extra)
    return env


def start_run(job: Path, token: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`batchrun run JOB` as a real process in its own session."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job), "--quiet", *args],
        cwd=ROOT,
        env=run_env(token, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 90.0) -> tuple[int, dict[str, Any], str]:
    """Wait for a run: its exit code, its JSON summary ({} if none), its stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    summary = orjson.loads(out) if out.strip() else {}
    return proc.returncode, summary, err.decode(errors="replace")


def batchrun_cli(token: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=ROOT,
        env=run_env(token),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def state_of(client: SyncEndpointsClient, name: str) -> str:
    try:
        return client.get(name).state_text
    except NotFoundError:
        return "missing"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(trust_env=False)


class FaultyProxy:
    """A reverse proxy in front of a control plane that can refuse pause calls (HTTP 500)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/v2")
        self.fail_pause = False
        self.pause_calls = 0
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.Response:
        if request.path.endswith("/pause"):
            self.pause_calls += 1
            if self.fail_pause:
                return web.json_response({"error": "pause is out of order"}, status=500)
        assert self._session is not None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read(),
            headers=headers,
        ) as resp:
            body = await resp.read()
            return web.Response(body=body, status=resp.status, content_type=resp.content_type)

    def __enter__(self) -> FaultyProxy:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._forward)
            runner = web.AppRunner(app)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self._session = loop.run_until_complete(_session())
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v2"
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._session.close())
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
