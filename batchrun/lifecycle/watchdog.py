"""The watchdog: puts the endpoint to rest when its runner dies without a `finally` (kill -9).

The runner starts `python -m batchrun.lifecycle.watchdog` in its own session (so a Ctrl-C or a hang-up
of the runner's terminal does not reach it) with a pipe on its stdin whose only write end the
runner keeps. Over that pipe it first sends the orders (one JSON line: the lease, the endpoint,
`on_exit`, and the token, which so never shows in `ps`, the environment or a file); the watchdog
answers "ready" on its stdout and closes it. Then it blocks reading the pipe.

- The runner ends cleanly: it has applied `on_exit` itself, writes "released" and closes the
  pipe; the watchdog exits.
- The runner dies any other way: the kernel closes the write end, the read returns EOF at once,
  and the watchdog claims the dead lease (`LeaseRegistry.claim`), and unless another live lease
  holds the endpoint, applies `on_exit` (`batchrun.lifecycle.rest.apply_on_exit`), then deletes the
  lease. If that fails, the lease stays on disk for `batchrun reap`.

It logs to `leases/watchdog.log` in batchrun's home.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from batchrun.errors import BatchrunError, EndpointRestError
from batchrun.lifecycle.reaper import settle_dead_lease
from batchrun.lifecycle.registry import HeldLease, LeaseRegistry

__all__ = ["Watchdog", "WatchdogOrders", "main"]

logger = logging.getLogger(__name__)

_RELEASED = b"released"


@dataclass(slots=True, kw_only=True)
class WatchdogOrders:
    """What the watchdog needs to put one endpoint to rest. Travels only through the pipe.

    Attributes:
        lease_id: the runner's lease.
        registry_root: the lease registry's directory.
        api_url: the endpoint's control plane.
        namespace: its namespace.
        name: the endpoint.
        on_exit: what to do with it.
        found_state: the state the run found it in ("missing" if the run creates it).
        token: the API token, or None (never in a repr, argv, env or file).
    """

    lease_id: str
    registry_root: str
    api_url: str
    namespace: str
    name: str
    on_exit: str
    found_state: str | None = None
    token: str | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> WatchdogOrders:
        data: dict[str, Any] = json.loads(line)
        return cls(**data)


class Watchdog:
    """The runner's handle on its watchdog process."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    def start(cls, orders: WatchdogOrders, *, timeout: float = 30.0) -> Watchdog:
        """Start a watchdog for `orders` and wait until it is ready.

        Blocking (a fork/exec and an import): call it from a thread in async code.

        Raises:
            BatchrunError: it did not start or did not answer in time.
        """
        process = subprocess.Popen(
            [sys.executable, "-m", "batchrun.lifecycle.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(orders.encode())
            process.stdin.flush()
            ready = _readline(process.stdout, timeout)
        except (OSError, TimeoutError) as e:
            _stop(process)
            raise BatchrunError(f"the watchdog did not start: {e}") from e
        finally:
            process.stdout.close()
        if ready.strip() != b"ready":
            _stop(process)
            raise BatchrunError(f"the watchdog did not start (it said {ready[:80]!r})")
        logger.debug("watchdog %d watches lease %s", process.pid, orders.lease_id)
        return cls(process)

    def release(self, *, timeout: float = 5.0) -> None:
        """Tell the watchdog the endpoint is at rest (or handed over), and let it exit."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write(_RELEASED + b"\n")
                stdin.flush()
            with contextlib.suppress(OSError):
                stdin.close()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("watchdog %d did not exit after release", self._process.pid)

    def abandon(self) -> None:
        """Close the pipe without releasing: the watchdog puts the endpoint to rest itself."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.close()
        # it runs on by design; a daemon thread reaps it if it ends while this process lives
        threading.Thread(target=self._process.wait, name="watchdog-reaper", daemon=True).start()


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no answer in {timeout:g}s")
    return stream.readline()


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        process.kill()
    process.wait()


def _claim(registry: LeaseRegistry, lease_id: str, *, patience: float) -> HeldLease | None:
    """Claim the lease once its runner's lock is gone (the kernel drops it as the runner exits)."""
    deadline = time.monotonic() + patience
    while True:
        held = registry.claim(lease_id)
        if held is not None or registry.read(lease_id) is None:
            return held
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _serve(orders: WatchdogOrders, buffer: bytes) -> int:
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        buffer += chunk
        if _RELEASED in buffer.split(b"\n"):
            logger.debug("lease %s released by its runner", orders.lease_id)
            return 0
    registry = LeaseRegistry(Path(orders.registry_root))
    logger.warning(
        "lease %s: the runner is gone without releasing it; putting %s/%s to rest (%s)",
        orders.lease_id,
        orders.namespace,
        orders.name,
        orders.on_exit,
    )
    held = _claim(registry, orders.lease_id, patience=10.0)
    if held is None:
        logger.info("lease %s: already settled or claimed by someone else", orders.lease_id)
        return 0
    try:
        message = asyncio.run(settle_dead_lease(held, token=orders.token, attempts=5))
    except EndpointRestError as e:
        logger.error("lease %s: %s", orders.lease_id, e)
        return 1
    logger.warning("lease %s: %s", orders.lease_id, message)
    return 0


def main() -> int:
    """Entry point of `python -m batchrun.lifecycle.watchdog` (started by `Watchdog.start` only)."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    buffer = b""
    while b"\n" not in buffer:  # raw reads: nothing may sit unseen in a buffered reader
        chunk = os.read(0, 65536)
        if not chunk:
            return 2
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    try:
        orders = WatchdogOrders.decode(line)
    except (ValueError, TypeError):
        return 2
    log_path = Path(orders.registry_root) / "watchdog.log"
    logging.basicConfig(
        filename=log_path,
        level=logging.INFO,
        format=f"%(asctime)s watchdog[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.stdout.buffer.write(b"ready\n")
    sys.stdout.buffer.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the runner closed its end; nothing more goes there
    os.close(devnull)
    return _serve(orders, rest)


if __name__ == "__main__":
    sys.exit(main())
