"""Sharded runs on Ray (`--executor ray`, extra batchrun[ray]), end to end: one Ray cluster for
the module (`ray start --head` on 127.0.0.1, usage stats off), which the runs join through
RAY_ADDRESS. Every id once, through a kill -9 of a shard's task and of the driver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.endpoint_app import EndpointApp
from tests.support.run import (
    ROOT,
    finish,
    job_sections,
    read_jsonl,
    start_run,
    write_job,
    write_jsonl,
)
from tests.support.waiting import wait_for

pytest.importorskip("ray")

ROWS = 600
WORKERS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    temp = Path(f"/tmp/brray{os.getpid()}")  # Ray's socket paths must stay short
    env = dict(
        os.environ,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",  # a cluster of this test only, on loopback
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    head = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "ray"),
            "start",
            "--head",
            "--block",
            f"--num-cpus={WORKERS + 1}",
            "--include-dashboard=false",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 60, "the Ray head")
        yield f"127.0.0.1:{port}"
    finally:
        members = [head.pid] + [p.pid for p in psutil.Process(head.pid).children(recursive=True)]
        for pid in members:  # the head and every agent it started: no stray one after it
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        head.wait(10)
        wait_for(lambda: not any(psutil.pid_exists(p) for p in members[1:]), 10, "no Ray agent")


def _job(tmp_path: Path, url: str, **run: Any) -> Path:
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(ROWS)])
    sections = job_sections(url, str(data), str(tmp_path / "out.jsonl"), run=run)
    return write_job(tmp_path / "job.toml", sections)


def _ids(tmp_path: Path) -> list[Any]:
    rows = read_jsonl(tmp_path / "out.jsonl") + read_jsonl(tmp_path / "out.errors.jsonl")
    return sorted(r["id"] for r in rows)


def _shard_tasks() -> list[psutil.Process]:
    """Ray worker processes running a shard right now."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any("ray::run_shard" in part for part in p.info["cmdline"] or []):
            found.append(p)
    return found


def test_ray_run_survives_a_killed_task_every_id_once(
    ray_address: str, endpoint_app: EndpointApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    endpoint_app.configure(latency_ms=20)
    job = _job(tmp_path, endpoint_app.url, concurrency=6)
    proc = start_run(job, "--workers", str(WORKERS), "--executor", "ray")
    wait_for(lambda: endpoint_app.stats()["requests"] >= ROWS * 0.4, 90, "40 % sent")
    tasks = _shard_tasks()
    assert tasks
    tasks[0].kill()
    code, _, err = finish(proc, timeout=120)
    assert code == 0, err
    assert _ids(tmp_path) == list(range(ROWS))
    assert endpoint_app.stats()["max_in_flight"] <= 6


def test_ray_driver_kill_stops_the_tasks_and_a_rerun_resumes(
    ray_address: str, endpoint_app: EndpointApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    endpoint_app.configure(latency_ms=20)
    job = _job(tmp_path, endpoint_app.url, concurrency=4)
    proc = start_run(job, "--workers", str(WORKERS), "--executor", "ray")
    wait_for(lambda: endpoint_app.stats()["requests"] >= ROWS * 0.4, 90, "40 % sent")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    wait_for(lambda: not _shard_tasks(), 10, "no shard task 10 s after the driver's kill -9")
    code, _, err = finish(start_run(job), timeout=120)  # the rest, in one process
    assert code == 0, err
    assert _ids(tmp_path) == list(range(ROWS))
