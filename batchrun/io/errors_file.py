"""Reading the errors file: counts by status, the first messages, what `--retry-errors` resends.

The errors file is JSONL for JSONL and Parquet outputs alike (`OutputSpec.errors_path`), one
row per failed input row: `id`, `status`, `error`, `attempts`, `source` (`file:line` or
`file:row N`), `row` (the row's sequence number). Only its committed part counts: a caller that
knows the run state passes `end` (the committed byte offset), so a live run's uncommitted tail
or a crash's torn line is never read.

The file is usually small, so one pass with orjson is cheap; nothing is kept per row beyond
the first `head` rows of each status.

An OpenAI batch errors file (`batchrun.openai_batch`) holds these fields under ``"batchrun"``,
the message under ``"error"``'s ``message`` and the id as ``custom_id``: `own_fields` reads both
layouts the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["NOT_RETRIED", "StatusTally", "Tally", "own_fields", "tally_errors"]

NOT_RETRIED = frozenset({"bad_input", "duplicate_id"})
"""Errors-file statuses `--retry-errors` leaves alone: sending them again cannot help."""

_SAMPLE_KEYS = ("id", "row", "source", "attempts", "error")


def own_fields(row: dict[str, Any]) -> dict[str, Any]:
    """batchrun's fields of an errors-file (or results) row: the row itself, or for an OpenAI
    batch line its ``"batchrun"`` fields with ``id`` (the ``custom_id``) and ``error`` (the
    message)."""
    own = row.get("batchrun")
    if not isinstance(own, dict):
        return row
    error = row.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return {"id": row.get("custom_id"), "error": message, **own}


@dataclass(slots=True, kw_only=True)
class StatusTally:
    """The rows of one status.

    Attributes:
        count: rows with this status.
        first_error: the message of the first of them.
        rows: the first `head` of them (`id`, `row`, `source`, `attempts`, `error`).
    """

    count: int = 0
    first_error: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class Tally:
    """What an errors file holds, by status (most rows first).

    Attributes:
        path: the errors file.
        total: rows read (of the statuses asked for).
        by_status: per status, most rows first, then by name.
        retryable: rows `--retry-errors` would send again (status not in `NOT_RETRIED`).
        unreadable: lines that are not a JSON object (none, unless the file was edited).
    """

    path: str
    total: int = 0
    by_status: dict[str, StatusTally] = field(default_factory=dict)
    retryable: int = 0
    unreadable: int = 0

    def counts(self) -> dict[str, dict[str, Any]]:
        """`{status: {"count", "first_error"}}`, most rows first: `RunSummary.errors_by_status`."""
        return {
            s: {"count": t.count, "first_error": t.first_error} for s, t in self.by_status.items()
        }

    @property
    def retryable_statuses(self) -> list[str]:
        """The statuses whose rows `--retry-errors` sends again."""
        return [s for s in self.by_status if s not in NOT_RETRIED]


def tally_errors(
    path: str | Path, *, end: int | None = None, head: int = 0, status: str | None = None
) -> Tally:
    """Count the rows of an errors file by status; a missing file has none.

    Args:
        path: the errors file.
        end: read only this many bytes (the committed offset from the run state); None: all.
        head: keep the first `head` rows of each status.
        status: only rows of this status.

    Raises:
        OSError: the file exists but cannot be read.
    """
    tally = Tally(path=str(path))
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; a missing file is no error)
    except FileNotFoundError:
        return tally
    counts: dict[str, StatusTally] = {}
    read = 0
    with f:
        for line in f:  # streamed: a big errors file does not sit in memory
            read += len(line)
            if end is not None and read > end:
                break  # past the committed part (a live run's tail, or a torn line)
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                tally.unreadable += 1
                continue
            if not isinstance(row, dict):
                tally.unreadable += 1
                continue
            row = own_fields(row)
            name = str(row.get("status") or "error")
            if status is not None and name != status:
                continue
            entry = counts.get(name)
            if entry is None:
                entry = counts[name] = StatusTally(first_error=str(row.get("error") or ""))
            entry.count += 1
            if len(entry.rows) < head:
                entry.rows.append({k: row.get(k) for k in _SAMPLE_KEYS})
            if name not in NOT_RETRIED and isinstance(row.get("row"), int):
                tally.retryable += 1  # what the runner's --retry-errors selects
    tally.by_status = dict(sorted(counts.items(), key=lambda kv: (-kv[1].count, kv[0])))
    tally.total = sum(t.count for t in counts.values())
    return tally
