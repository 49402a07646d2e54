"""The one way a test waits: poll a condition until it holds, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_for"]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> float:
    """Poll `condition` until it holds; return the seconds it took; fail after `timeout`.

    Args:
        condition: checked every 10 ms.
        timeout: seconds before the test fails.
        what: what is waited for, for the failure's message.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}")
