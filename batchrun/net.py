"""What both HTTP stacks share: Retry-After, the server's message, excerpts, backoff, retry lines.

The data plane (`batchrun.pool`, aiohttp) and the control plane (`batchrun.endpoints.http`,
httpx) each map their library's answers to batchrun's errors in one place; the small rules
those two places have in common live here, written once:

- `parse_retry_after`: a ``Retry-After`` header (delta-seconds or an HTTP date) in seconds;
- `server_message`: the server's own words from a decoded JSON error body (``error``,
  ``message``, ``detail``; OpenAI's ``{"error": {"message"}}``);
- `excerpt`: a short, one-line, token-free quote of a body (`EXCERPT_CHARS` at most);
- `scrub_secrets`: every secret replaced by ``***``;
- `backoff`: exponential backoff with jitter;
- `retry_line`: the ``retry n/max in Ws`` text of a retry's WARNING line.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson

__all__ = [
    "EXCERPT_CHARS",
    "backoff",
    "excerpt",
    "parse_retry_after",
    "retry_line",
    "scrub_secrets",
    "server_message",
]

EXCERPT_CHARS = 200
"""The longest excerpt of a server's body quoted in a message."""

_MESSAGE_KEYS = ("error", "message", "detail")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if unreadable.

    Args:
        value: the header's value, or None when there is none.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def server_message(payload: Any, *, secrets: Sequence[str] = ()) -> str | None:
    """The server's own message in a decoded JSON error body, as an excerpt; None if it has
    none (the caller then quotes the body).

    The first non-empty of ``error``, ``message`` and ``detail`` wins; an ``error`` that is an
    object (OpenAI) gives its ``message``; a value that is not a string is shown as JSON.

    Args:
        payload: the decoded body.
        secrets: replaced by ``***`` before the text is cut.
    """
    if not isinstance(payload, dict):
        return None
    for key in _MESSAGE_KEYS:
        value = payload.get(key)
        if isinstance(value, dict):  # OpenAI: {"error": {"message": ...}}
            value = value.get("message") or value
        if value:
            text = value if isinstance(value, str) else orjson.dumps(value)
            return excerpt(text, secrets=secrets)
    return None


def excerpt(body: bytes | str, limit: int = EXCERPT_CHARS, *, secrets: Sequence[str] = ()) -> str:
    """A short, one-line excerpt of a body for error messages.

    Args:
        body: the server's bytes or text.
        limit: the longest excerpt, in characters.
        secrets: replaced by ``***`` before the body is cut, so no part of one is shown.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(scrub_secrets(text, secrets).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scrub_secrets(text: str, secrets: Sequence[str]) -> str:
    """`text` with every occurrence of each of `secrets` replaced by ``***``, longest first."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


def backoff(failures: int, *, initial: float, cap: float) -> float:
    """Seconds to wait after `failures` failed attempts: exponential from `initial`, capped at
    `cap`, the upper half of it jitter.

    Args:
        failures: failed attempts so far (1 for the first retry).
        initial: the first backoff, seconds; it doubles per failed attempt.
        cap: the longest backoff, seconds.
    """
    exponent = min(max(failures - 1, 0), 60)
    base = min(cap, min(initial, cap) * 2.0**exponent)
    return base / 2 + random.uniform(0, base / 2)


def retry_line(retry: int, retries: int, wait: float) -> str:
    """``retry n/max in Ws``: the head of a retry's WARNING line (the caller adds what failed).

    Args:
        retry: this retry's number (1 for the first).
        retries: the most retries there will be (attempts - 1).
        wait: seconds until the next attempt.
    """
    return f"retry {retry}/{retries} in {wait:.1f}s"
