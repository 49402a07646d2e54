"""Shared fixtures. Every test runs with a clean environment and its own batchrun home."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test inference endpoint (tests/support/endpoint_app.py): fixtures endpoint_app, endpoint_process.
pytest_plugins = ["tests.support.endpoint_app"]

_LEAKY_PREFIXES = ("HF_", "HUGGING_FACE_", "BATCHRUN_")
_LEAKY_NAMES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Strip tokens, batchrun settings and proxies, and give each test its own home dirs."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES) or name in _LEAKY_NAMES:
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "batchrun-home"
    monkeypatch.setenv("BATCHRUN_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield


# --- the local Inference Endpoints service (batchrun serve) as a real subprocess ----------------

import secrets as _secrets  # noqa: E402
import signal as _signal  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402
import time as _time  # noqa: E402
from dataclasses import dataclass as _dataclass  # noqa: E402
from dataclasses import field as _field  # noqa: E402


@_dataclass
class LocalService:
    """A running `batchrun serve`: `.api_url` ends in /v2; `.token` is its bearer token."""

    api_url: str
    token: str
    state_dir: Path
    process: _subprocess.Popen[bytes] = _field(repr=False)
    log_path: Path = _field(repr=False)

    @property
    def origin(self) -> str:
        return self.api_url.removesuffix("/v2")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def status(self) -> dict[str, object]:
        import httpx

        return dict(httpx.get(f"{self.origin}/batchrun/status", timeout=5, trust_env=False).json())

    def worker_pids(self) -> list[int]:
        import psutil

        try:
            return [p.pid for p in psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, *, check_orphans: bool = True) -> None:
        """SIGTERM the service, wait for it, and check that none of its workers is left."""
        import psutil

        children = []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if self.process.poll() is None:
            self.process.send_signal(_signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except _subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            p.kill()
        if check_orphans:
            assert not alive, f"worker processes left behind: {[p.pid for p in alive]}"

    def kill(self) -> None:
        """SIGKILL the service (its workers exit by themselves when their pipe closes)."""
        import psutil

        children = []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        self.process.kill()
        self.process.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            p.kill()
        assert not alive, f"workers outlived a killed service: {[p.pid for p in alive]}"


def start_local_service(
    state_dir: Path,
    *,
    token: str | None = None,
    minute: float = 0.5,
    extra_args: tuple[str, ...] = (),
    timeout: float = 30.0,
    token_in_env: bool = True,
) -> LocalService:
    """Start `batchrun serve --port 0` on `state_dir` and wait until it answers.

    The token goes in BATCHRUN_SERVE_TOKEN unless `token_in_env` is False (then pass it in
    `extra_args`, e.g. `("--token-file", path)`).
    """
    import httpx
    import orjson

    token = token or _secrets.token_urlsafe(16)
    state_dir.mkdir(parents=True, exist_ok=True)
    address = state_dir / "service.json"
    log_path = state_dir / f"serve-{_time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    if token_in_env:
        env["BATCHRUN_SERVE_TOKEN"] = token
    env.update(
        BATCHRUN_HOME=str(state_dir.parent / "service-home"),
        HF_HUB_OFFLINE="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    with open(log_path, "wb") as log:
        proc = _subprocess.Popen(
            [
                _sys.executable,
                "-m",
                "batchrun",
                "serve",
                "--port",
                "0",
                "--state-dir",
                str(state_dir),
                "--minute",
                str(minute),
                *extra_args,
            ],
            stdin=_subprocess.DEVNULL,
            stdout=log,
            stderr=_subprocess.STDOUT,
            env=env,
        )
    deadline = _time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"batchrun serve exited ({proc.returncode}): {log_path.read_text()}")
        try:
            info = orjson.loads(address.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            info = None
        if info and info.get("pid") == proc.pid:
            try:
                r = httpx.get(
                    str(info["api_url"]).removesuffix("/v2") + "/batchrun/status",
                    timeout=2,
                    trust_env=False,
                )
                if r.status_code == 200:
                    return LocalService(str(info["api_url"]), token, state_dir, proc, log_path)
            except httpx.HTTPError:
                pass
        if _time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"batchrun serve did not come up: {log_path.read_text()}")
        _time.sleep(0.05)


@pytest.fixture
def local_service(tmp_path: Path) -> Iterator[LocalService]:
    """`batchrun serve` in a subprocess on a free port, tmp state dir, a 0.5 s "minute".

    Yields `.api_url` (ending in /v2), `.token`, `.state_dir`, `.headers`; stops it and checks
    that no worker process is left afterwards.
    """
    service = start_local_service(tmp_path / "local-service")
    try:
        yield service
    finally:
        service.stop()
