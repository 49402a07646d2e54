"""Input readers, output writers, and the run state that makes results exactly-once."""

from __future__ import annotations

from batchrun.io.ledger import Ledger, job_fingerprint
from batchrun.io.readers import InputReader, Position, Row, open_input
from batchrun.io.state import Committed, RunState
from batchrun.io.writers import JsonlWriter, ParquetWriter

__all__ = [
    "Committed",
    "InputReader",
    "JsonlWriter",
    "Ledger",
    "ParquetWriter",
    "Position",
    "Row",
    "RunState",
    "job_fingerprint",
    "open_input",
]
