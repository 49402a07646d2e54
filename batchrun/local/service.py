"""Finding, starting and stopping the local service of a state directory.

A running service writes `service.json` (its `pid`, `port`, `api_url` and `state_dir`) into its
state directory and holds `service.lock` there. A home's service is found through that file and
a liveness check (the pid it names answers at its `api_url`, for this state directory), never by
probing a fixed port: two homes on one machine each have their own. `ensure_service` is what
`provider = "local"` uses: this home's service if it runs, else one started in the background on
a free port (one starter at a time, under `start.lock`), with a token it keeps in
`<state dir>/token` (mode 0600), exiting by itself after 30 idle minutes. Given an explicit
`api_url`, it is the service answering there (started on that port when none does).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from batchrun.errors import APIConnectionError
from batchrun.home import batchrun_home

__all__ = [
    "DEFAULT_API_URL",
    "IDLE_EXIT_SECONDS",
    "LocalServiceInfo",
    "default_state_dir",
    "ensure_service",
    "port_owner",
    "service_status",
    "stop_service",
]

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "http://127.0.0.1:8765/v2"
"""The port `batchrun serve` used to default to; kept for callers that name it explicitly."""
IDLE_EXIT_SECONDS = 30 * 60.0
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Services started here run on after ensure_service returns; holding their Popen objects keeps
# Python from warning that a child it forgot about is still running.
_STARTED: list[subprocess.Popen[bytes]] = []


@dataclass(slots=True)
class LocalServiceInfo:
    """A running local service: where its API is, its token (never shown), its pid."""

    api_url: str
    token: str | None = field(default=None, repr=False)
    pid: int | None = None
    state_dir: Path | None = None


def default_state_dir() -> Path:
    """`batchrun_home()/"local"`."""
    return batchrun_home() / "local"


def _origin(api_url: str) -> str:
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}"


def _probe(api_url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The service's `/batchrun/status`, or None when no batchrun service answers."""
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            resp = client.get(f"{_origin(api_url)}/batchrun/status")
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        data = resp.json()
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("service") != "batchrun-local":
        return None
    return data


def _read_token(state_dir: Path) -> str | None:
    try:
        token = (state_dir / "token").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def _own_token(state_dir: Path) -> Path:
    """The state dir's token file, created (mode 0600) with a new random token if missing."""
    path = state_dir / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(32))
    os.chmod(path, 0o600)
    return path


def _same_dir(a: Path | str | None, b: Path) -> bool:
    if a is None:
        return False
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _info(status: dict[str, Any], api_url: str, home: Path) -> LocalServiceInfo:
    """What `status` says, with the token only when the service is `home`'s (a token is never
    read from another home's state directory)."""
    state_dir = Path(status["state_dir"]) if status.get("state_dir") else None
    token = _read_token(home) if _same_dir(state_dir, home) else None
    return LocalServiceInfo(
        api_url=api_url.rstrip("/"), token=token, pid=status.get("pid"), state_dir=state_dir
    )


def _home_service(state_dir: Path) -> LocalServiceInfo | None:
    """The running service of `state_dir`, found through its `service.json`, or None."""
    status = service_status(state_dir)
    if status is None:
        return None
    return _info(status, str(status["api_url"]), state_dir)


def ensure_service(
    *, api_url: str | None = None, home: Path | None = None, timeout: float = 30.0
) -> LocalServiceInfo:
    """The local service of `home`, started in the background if none runs.

    Args:
        api_url: None (the default): `home`'s own service, found through its `service.json`,
            else started on a free port. A base URL (ending in /v2): the batchrun service that
            answers there, else one started for `home` on that port (its host must be local).
        home: the service's state directory (default `batchrun_home()/"local"`).
        timeout: seconds to wait for a started service to answer.

    Raises:
        APIConnectionError: nothing answers and a service cannot be started there, or it did not
            come up in time (the message quotes its log).
    """
    state_dir = home or default_state_dir()
    if api_url is None:
        found = _home_service(state_dir)
        if found is not None:
            return found
        host, port = "127.0.0.1", 0
    else:
        status = _probe(api_url)
        if status is not None:
            return _info(status, api_url, state_dir)
        parts = urlsplit(api_url)
        host = parts.hostname or "127.0.0.1"
        if host not in _LOCAL_HOSTS:
            raise APIConnectionError(
                f"no batchrun service answers at {api_url}, and it is not on this machine to "
                "start one"
            )
        port = parts.port or 80
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(state_dir / "start.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise APIConnectionError(
                        f"another process is starting the local service in {state_dir}; "
                        f"it did not answer within {timeout:.0f} s"
                    ) from None
                time.sleep(0.1)
        # Someone else may have started it meanwhile.
        if api_url is None:
            found = _home_service(state_dir)
            if found is not None:
                return found
        else:
            status = _probe(api_url)
            if status is not None:
                return _info(status, api_url, state_dir)
        return _start(host, port, state_dir, deadline)
    finally:
        os.close(lock_fd)


def _start(host: str, port: int, state_dir: Path, deadline: float) -> LocalServiceInfo:
    """Start `batchrun serve` for `state_dir` on `host:port` (0: a free port) and wait until
    the pid it writes to `service.json` answers there."""
    token_path = _own_token(state_dir)
    log_path = state_dir / "service.log"
    cmd = [
        sys.executable,
        "-m",
        "batchrun",
        "serve",
        "--host",
        host,
        *(("--port", str(port)) if port else ()),  # without --port: a free one
        "--state-dir",
        str(state_dir),
        "--token-file",
        str(token_path),
        "--idle-exit",
        str(IDLE_EXIT_SECONDS),
    ]
    env = {k: v for k, v in os.environ.items() if k != "BATCHRUN_SERVE_TOKEN"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _STARTED.append(proc)
    logger.info("started the local service (pid %d) for %s", proc.pid, state_dir)
    where = f"{host}:{port}" if port else f"a free port on {host}"
    while True:
        address = _read_address(state_dir)
        if address is not None and address.get("pid") == proc.pid and address.get("api_url"):
            status = _probe(str(address["api_url"]), timeout=1.0)
            if status is not None and status.get("pid") == proc.pid:
                return _info(status, str(address["api_url"]), state_dir)
        if proc.poll() is not None:
            raise APIConnectionError(
                f"the local service exited at start (code {proc.returncode}): {_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            raise APIConnectionError(
                f"the local service did not answer on {where} in time: {_tail(log_path)}"
            )
        time.sleep(0.1)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return " | ".join(text.strip().splitlines()[-lines:]) or f"(empty log at {path})"


def _read_address(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads((state_dir / "service.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def service_status(state_dir: Path) -> dict[str, Any] | None:
    """The status of the service of `state_dir`, or None when none runs.

    Found through `state_dir/service.json`: its pid must be alive and answer at its `api_url`
    for this very state directory (a stale file whose port another service took is not it).
    """
    address = _read_address(state_dir)
    if address is None or not address.get("api_url") or not isinstance(address.get("pid"), int):
        return None
    if not _pid_alive(int(address["pid"])):
        return None
    status = _probe(str(address["api_url"]))
    if status is None or status.get("pid") != address.get("pid"):
        return None
    if not _same_dir(status.get("state_dir"), state_dir):
        return None
    return status


def port_owner(host: str, port: int) -> dict[str, Any] | None:
    """The status of the batchrun service listening on `host:port`, or None if none does."""
    shown = f"[{host}]" if ":" in host else host
    return _probe(f"http://{shown}:{port}/v2", timeout=1.0)


def stop_service(state_dir: Path, *, timeout: float = 20.0) -> int | None:
    """Stop the service of `state_dir` (SIGTERM, then wait); its pid, or None if none ran.

    Raises:
        APIConnectionError: it did not exit within `timeout` seconds.
    """
    status = service_status(state_dir)
    if status is None:
        return None
    pid = int(status["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The service holds service.lock for its whole life; once we can take it, it is gone
        # (even when it is a zombie some other process has yet to reap).
        if not _pid_alive(pid) or _lock_free(state_dir / "service.lock"):
            return pid
        time.sleep(0.1)
    raise APIConnectionError(f"the local service (pid {pid}) did not stop within {timeout:.0f} s")


def _lock_free(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True
