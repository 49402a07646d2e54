from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from batchrun.home import batchrun_home
from batchrun.lifecycle.registry import LeaseRecord, LeaseRegistry

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from batchrun.lifecycle.registry import LeaseRecord, LeaseRegistry
    registry = LeaseRegistry(Path(sys.argv[1]))
    with registry.locked():
        held = registry.register(LeaseRecord(
            id=sys.argv[2], endpoint="ep", namespace="ns", api_url="http://127.0.0.1:1/v2"))
    print("registered", flush=True)
    time.sleep(600)
    """
)


def _record(registry: LeaseRegistry, endpoint: str = "ep") -> LeaseRecord:
    return LeaseRecord(
        id=registry.new_id(endpoint),
        endpoint=endpoint,
        namespace="ns",
        api_url="http://127.0.0.1:1/v2/",
        on_exit="pause",
        found_state="paused",
    )


def test_default_root_is_in_home() -> None:
    assert LeaseRegistry().root == batchrun_home() / "leases"


def test_register_update_release(tmp_path: Path) -> None:
    registry = LeaseRegistry(tmp_path / "leases")
    with registry.locked():
        held = registry.register(_record(registry))
    lease_id = held.record.id
    assert registry.is_live(lease_id)
    assert registry.claim(lease_id) is None  # live: nobody else may claim it
    held.update(meter={"cost_usd": 0.5})
    on_disk = json.loads(registry.json_path(lease_id).read_text())
    assert on_disk["meter"] == {"cost_usd": 0.5}
    assert on_disk["pid"] == os.getpid()
    assert "token" not in json.dumps(on_disk).lower()
    (record,) = registry.records()
    assert record.key == ("http://127.0.0.1:1/v2", "ns", "ep")
    assert registry.live_on(record.key) == [record]
    assert registry.live_on(record.key, exclude=lease_id) == []
    held.release()
    held.release()  # idempotent
    assert not held.held
    assert registry.records() == []
    assert not registry.is_live(lease_id)
    assert sorted(p.name for p in registry.root.iterdir()) == [".registry.lock"]


def test_a_killed_holder_leaves_a_dead_lease_that_one_claimer_gets(tmp_path: Path) -> None:
    root = tmp_path / "leases"
    registry = LeaseRegistry(root)
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root), "ep-dead-1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "registered"
        assert registry.is_live("ep-dead-1")
        (record,) = registry.records()
        assert record.pid == child.pid
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert not registry.is_live("ep-dead-1")
    assert registry.live_on(record.key) == []
    claimed = registry.claim("ep-dead-1")
    assert claimed is not None and claimed.record.endpoint == "ep"
    assert registry.is_live("ep-dead-1")  # a claimer holds it now
    assert registry.claim("ep-dead-1") is None  # a second claimer gets nothing
    claimed.release()
    assert registry.claim("ep-dead-1") is None  # gone
    assert registry.records() == []


def test_registry_lock_serializes_processes(tmp_path: Path) -> None:
    root = tmp_path / "leases"
    registry = LeaseRegistry(root)
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from batchrun.lifecycle.registry import LeaseRegistry
        with LeaseRegistry(Path(sys.argv[1])).locked():
            print(time.monotonic(), flush=True)
        """
    )
    with registry.locked():
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.5)  # the child must still be waiting for the lock while we hold it
        assert child.poll() is None
        released_at = time.monotonic()
    out, _ = child.communicate(timeout=30)
    assert float(out) >= released_at


def test_async_lock_does_not_block_the_loop(tmp_path: Path) -> None:
    registry = LeaseRegistry(tmp_path / "leases")

    async def scenario() -> list[str]:
        events: list[str] = []
        async with registry.alocked():
            waiter = asyncio.create_task(_take(registry, events))
            for _ in range(5):
                await asyncio.sleep(0.01)  # the loop runs while the waiter waits in a thread
            events.append("holder done")
        await waiter
        return events

    async def _take(reg: LeaseRegistry, events: list[str]) -> None:
        async with reg.alocked():
            events.append("waiter got it")

    assert asyncio.run(scenario()) == ["holder done", "waiter got it"]


def test_unreadable_and_foreign_files_are_skipped(tmp_path: Path) -> None:
    registry = LeaseRegistry(tmp_path / "leases")
    (registry.root / "broken.json").write_text("{not json")
    (registry.root / "list.json").write_text("[1, 2]")
    data = _record(registry).to_json() | {"from_a_newer_batchrun": 1}
    (registry.root / "newer.json").write_text(json.dumps(data))
    (record,) = registry.records()
    assert record.endpoint == "ep"
    assert not registry.is_live(record.id)
