"""The watchdog against a small Inference Endpoints control plane (aiohttp, 127.0.0.1).

A real runner stand-in (a child process) registers a lease and starts a watchdog; the test
kills it with SIGKILL and measures how long until the API gets the pause call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchrun.lifecycle.reaper import settle_dead_lease
from batchrun.lifecycle.registry import LeaseRecord, LeaseRegistry
from batchrun.lifecycle.watchdog import Watchdog, WatchdogOrders

TOKEN = "hf_watchdogsecret_0123456789"


class ControlPlane:
    """A few routes of the Inference Endpoints API, recording every call."""

    def __init__(self, *, state: str = "running", fail_pause: bool = False) -> None:
        self.state = state
        self.fail_pause = fail_pause
        self.calls: list[tuple[float, str, str, str | None]] = []
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def _body(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "protected",
            "model": {"repository": "batchrun/echo", "task": "text-generation"},
            "status": {
                "state": self.state,
                "url": "http://127.0.0.1:9/" if self.state == "running" else None,
                "readyReplica": 1 if self.state == "running" else 0,
                "targetReplica": 1 if self.state == "running" else 0,
            },
        }

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls.append(
            (time.monotonic(), request.method, request.path, request.headers.get("Authorization"))
        )
        name = request.match_info["name"]
        action = request.match_info.get("action")
        if action == "pause":
            if self.fail_pause:
                return web.json_response({"error": "pause is broken here"}, status=500)
            self.state = "paused"
        elif action == "scale-to-zero":
            self.state = "scaledToZero"
        elif action == "resume":
            self.state = "running"
        return web.json_response(self._body(name))

    def __enter__(self) -> ControlPlane:
        app = web.Application()
        app.router.add_route("*", "/v2/endpoint/{ns}/{name}", self._handle)
        app.router.add_route("POST", "/v2/endpoint/{ns}/{name}/{action}", self._handle)
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}/v2"
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def pauses(self) -> list[float]:
        return [t for t, method, path, _ in self.calls if path.endswith("/pause")]


@pytest.fixture
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as api:
        yield api


_RUNNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from batchrun.lifecycle.registry import LeaseRecord, LeaseRegistry
    from batchrun.lifecycle.watchdog import Watchdog, WatchdogOrders
    root, api_url, token, mode = sys.argv[1:5]
    registry = LeaseRegistry(Path(root))
    with registry.locked():
        held = registry.register(LeaseRecord(
            id=registry.new_id("ep"), endpoint="ep", namespace="ns", api_url=api_url,
            found_state="paused"))
    dog = Watchdog.start(WatchdogOrders(
        lease_id=held.record.id, registry_root=root, api_url=api_url, namespace="ns",
        name="ep", on_exit="pause", found_state="paused", token=token))
    held.update(watchdog_pid=dog.pid)
    print(dog.pid, flush=True)
    if mode == "release":
        held.release()
        dog.release()
        print("released", flush=True)
    else:
        time.sleep(600)
    """
)


def _start_runner(root: Path, api_url: str, mode: str) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(root), api_url, TOKEN, mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # our grandchild: once it exits it is reaped by init, not by us
        time.sleep(0.05)
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_kill_9_runner_gets_its_endpoint_paused(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    root = tmp_path / "leases"
    child, dog_pid = _start_runner(root, control_plane.url, "hold")
    try:
        assert control_plane.pauses() == []
        ps = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(dog_pid)], capture_output=True, text=True
        )
        assert "batchrun.lifecycle.watchdog" in ps.stdout and TOKEN not in ps.stdout
        killed_at = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        deadline = killed_at + 15
        while not control_plane.pauses() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert control_plane.pauses(), "the watchdog did not pause the endpoint within 15 s"
        latency = control_plane.pauses()[0] - killed_at
        print(f"kill -9 -> pause call in {latency:.3f}s")
        assert latency < 15
        assert _wait_gone(dog_pid, 15), "the watchdog did not exit within 15 s"
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
        _kill(dog_pid)
    # the call carried the token; the lease is gone; nothing on disk holds the token
    assert all(auth == f"Bearer {TOKEN}" for _, _, _, auth in control_plane.calls)
    assert LeaseRegistry(root).records() == []
    for path in root.iterdir():
        assert TOKEN not in path.read_text(errors="replace"), path
    assert control_plane.state == "paused"


def test_released_watchdog_exits_without_touching_the_endpoint(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    root = tmp_path / "leases"
    child, dog_pid = _start_runner(root, control_plane.url, "release")
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "released"
        assert child.wait(10) == 0
        assert _wait_gone(dog_pid, 10), "the watchdog did not exit within 10 s"
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
        _kill(dog_pid)
    assert control_plane.calls == []
    assert control_plane.state == "running"


def test_watchdog_leaves_an_endpoint_another_live_lease_holds(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    root = tmp_path / "leases"
    registry = LeaseRegistry(root)
    with registry.locked():
        ours = registry.register(
            LeaseRecord(
                id=registry.new_id("ep"), endpoint="ep", namespace="ns", api_url=control_plane.url
            )
        )
    child, dog_pid = _start_runner(root, control_plane.url, "hold")
    try:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert _wait_gone(dog_pid, 15), "the watchdog did not exit within 15 s"
    finally:
        child.stdout.close() if child.stdout else None
        _kill(dog_pid)
    assert control_plane.pauses() == []  # our live lease still holds it
    assert [r.id for r in registry.records()] == [ours.record.id]
    ours.release()


def test_failed_settle_keeps_the_lease_for_reap(tmp_path: Path) -> None:
    registry = LeaseRegistry(tmp_path / "leases")
    with ControlPlane(fail_pause=True) as api:
        with registry.locked():
            dead = registry.register(
                LeaseRecord(
                    id="ep-dead", endpoint="ep", namespace="ns", api_url=api.url, on_exit="pause"
                )
            )
        dead.abandon()  # as if its runner had died
        held = registry.claim("ep-dead")
        assert held is not None
        from batchrun.errors import EndpointRestError

        with pytest.raises(EndpointRestError) as info:
            asyncio.run(settle_dead_lease(held, token=TOKEN, attempts=1))
        message = str(info.value)
        assert "ns/ep" in message and "batchrun endpoints pause ep --namespace ns" in message
        assert TOKEN not in message
        assert not registry.is_live("ep-dead")
        assert registry.read("ep-dead") is not None  # still there for `batchrun reap`
        api.fail_pause = False
        again = registry.claim("ep-dead")
        assert again is not None
        result = asyncio.run(settle_dead_lease(again, token=TOKEN))
        assert "pause → paused" in result
        assert registry.records() == []


def test_orders_keep_the_token_out_of_repr() -> None:
    orders = WatchdogOrders(
        lease_id="x",
        registry_root="/r",
        api_url="http://a/v2",
        namespace="n",
        name="e",
        on_exit="pause",
        token=TOKEN,
    )
    assert TOKEN not in repr(orders)
    assert WatchdogOrders.decode(orders.encode()) == orders
    assert Watchdog  # the class the runner uses
