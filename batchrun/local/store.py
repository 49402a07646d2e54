"""The local service's endpoints, kept in one SQLite file (WAL) in the state directory.

A row per endpoint: its configuration (the normalized create body, as JSON), its state and
message, the port its worker listens on, and its timestamps. The store is the truth the API
renders; the supervisor writes every state change here before anyone can read it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["EndpointRecord", "EndpointStore", "utc_now"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    port INTEGER,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
)
"""


def utc_now() -> str:
    """Now as Hugging Face writes it: ISO 8601, milliseconds, ending in "Z"."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(slots=True, kw_only=True)
class EndpointRecord:
    """One endpoint as stored."""

    namespace: str
    name: str
    config: dict[str, Any]
    state: str
    message: str
    port: int | None
    created_at: str
    updated_at: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


class EndpointStore:
    """Endpoints in SQLite; every write is its own committed transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _row(row: tuple[Any, ...]) -> EndpointRecord:
        return EndpointRecord(
            namespace=row[0],
            name=row[1],
            config=orjson.loads(row[2]),
            state=row[3],
            message=row[4],
            port=row[5],
            created_at=row[6],
            updated_at=row[7],
        )

    _COLUMNS = "namespace, name, config, state, message, port, created_at, updated_at"

    def get(self, namespace: str, name: str) -> EndpointRecord | None:
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM endpoints WHERE namespace = ? AND name = ?",
            (namespace, name),
        ).fetchone()
        return None if row is None else self._row(row)

    def list(self, namespace: str | None = None) -> list[EndpointRecord]:
        if namespace is None:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM endpoints ORDER BY namespace, created_at, name"
            )
        else:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM endpoints WHERE namespace = ? "
                "ORDER BY created_at, name",
                (namespace,),
            )
        return [self._row(r) for r in rows.fetchall()]

    def insert(self, record: EndpointRecord) -> bool:
        """Add a new endpoint; False when the name is taken in its namespace."""
        try:
            self._db.execute(
                f"INSERT INTO endpoints ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.namespace,
                    record.name,
                    orjson.dumps(record.config).decode(),
                    record.state,
                    record.message,
                    record.port,
                    record.created_at,
                    record.updated_at,
                ),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def save(self, record: EndpointRecord) -> None:
        """Write back a changed record, stamping `updated_at`."""
        record.updated_at = utc_now()
        self._db.execute(
            "UPDATE endpoints SET config = ?, state = ?, message = ?, port = ?, updated_at = ? "
            "WHERE namespace = ? AND name = ?",
            (
                orjson.dumps(record.config).decode(),
                record.state,
                record.message,
                record.port,
                record.updated_at,
                record.namespace,
                record.name,
            ),
        )

    def delete(self, namespace: str, name: str) -> None:
        self._db.execute(
            "DELETE FROM endpoints WHERE namespace = ? AND name = ?", (namespace, name)
        )
