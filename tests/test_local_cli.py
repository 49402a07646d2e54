"""`batchrun serve` options, `--status`/`--stop`, idle exit, and `ensure_service`."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from batchrun.errors import APIConnectionError
from batchrun.local import LocalServiceInfo, ensure_service, service_status, stop_service
from tests.conftest import start_local_service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batchrun(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "bg-service"
    try:
        yield directory
    finally:
        stop_service(directory)


def test_ensure_service_starts_one_background_service_and_reuses_it(state_dir: Path) -> None:
    api_url = f"http://127.0.0.1:{_free_port()}/v2"
    infos: list[LocalServiceInfo] = []
    threads = [
        threading.Thread(
            target=lambda: infos.append(ensure_service(api_url=api_url, home=state_dir))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(infos) == 3
    assert len({i.pid for i in infos}) == 1, "one service per state dir"
    info = infos[0]
    token_file = state_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert info.token == token_file.read_text().strip()
    assert info.token and info.token not in repr(info)
    assert info.api_url == api_url and info.state_dir == state_dir
    with httpx.Client(trust_env=False) as c:
        me = c.get(
            api_url.removesuffix("/v2") + "/api/whoami-v2",
            headers={"Authorization": f"Bearer {info.token}"},
        )
        assert me.status_code == 200 and me.json()["name"] == "local"
        assert c.get(api_url + "/endpoint/local").status_code == 401
    again = ensure_service(api_url=api_url, home=state_dir)
    assert again.pid == info.pid and again.token == info.token
    assert (state_dir / "service.log").exists()

    status = _batchrun("serve", "--status", "--state-dir", str(state_dir))
    assert status.returncode == 0, status.stderr
    assert '"running": true' in status.stdout and str(info.pid) in status.stdout
    assert info.token not in status.stdout
    stopped = _batchrun("serve", "--stop", "--state-dir", str(state_dir))
    assert stopped.returncode == 0 and f"stopped (pid {info.pid})" in stopped.stderr
    assert service_status(state_dir) is None
    status = _batchrun("serve", "--status", "--state-dir", str(state_dir))
    assert status.returncode == 1 and '"running": false' in status.stdout
    assert not (state_dir / "service.json").exists()


def test_ensure_service_refuses_a_remote_url_it_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(APIConnectionError, match="not on this machine"):
        ensure_service(api_url="http://10.255.255.1:9/v2", home=tmp_path / "x", timeout=2)


def test_serve_exits_by_itself_when_idle(tmp_path: Path) -> None:
    svc = start_local_service(tmp_path / "idle", extra_args=("--idle-exit", "1"))
    try:
        svc.process.wait(timeout=30)
    finally:
        svc.stop()
    assert svc.process.returncode == 0
    assert not (svc.state_dir / "service.json").exists()


def test_token_file_and_no_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    svc = start_local_service(
        tmp_path / "tf",
        token="from-a-file",
        token_in_env=False,
        extra_args=("--token-file", str(token_file)),
    )
    try:
        with httpx.Client(base_url=svc.api_url, trust_env=False) as c:
            assert c.get("/endpoint/local").status_code == 401
            ok = c.get("/endpoint/local", headers={"Authorization": "Bearer from-a-file"})
            assert ok.status_code == 200
        assert "from-a-file" not in svc.log()
    finally:
        svc.stop()
    open_svc = start_local_service(tmp_path / "open", token_in_env=False)
    try:
        with httpx.Client(base_url=open_svc.api_url, trust_env=False) as c:
            assert c.get("/endpoint/local").json() == {"items": []}
    finally:
        open_svc.stop()


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    r = _batchrun("serve", "--state-dir", str(tmp_path / "s"), "--token-file", str(empty))
    assert r.returncode == 2 and "the file is empty" in r.stderr
    r = _batchrun("serve", "--state-dir", str(tmp_path / "s"), "--port", "0", "--minute", "0")
    assert r.returncode == 1 and "--minute must be positive" in r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        r = _batchrun("serve", "--state-dir", str(tmp_path / "s2"), "--port", str(port))
        assert time.monotonic() - start < 30
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_shipped_job_files_load_and_point_at_the_shipped_texts() -> None:
    import orjson

    from batchrun.job import load_job

    root = Path(__file__).resolve().parents[1]
    echo = load_job(root / "jobs" / "echo.toml")
    quick = load_job(root / "jobs" / "quickstart.toml")
    for job in (echo, quick):
        assert job.endpoint.provider == "local"
        assert Path(job.input.path).resolve() == root / "examples" / "texts.jsonl"
    assert echo.endpoint.repository == "batchrun/echo"
    assert quick.endpoint.repository == "sentence-transformers/all-MiniLM-L6-v2"
    assert quick.task == "feature-extraction" and quick.output.output_format == "parquet"
    rows = [
        orjson.loads(line) for line in (root / "examples" / "texts.jsonl").read_bytes().splitlines()
    ]
    assert len(rows) >= 2000
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(isinstance(r["text"], str) and len(r["text"]) >= 40 for r in rows)
