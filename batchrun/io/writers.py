"""Output writers: a JSONL file, or a directory of Parquet part files; both commit atomically.

Rows are buffered in memory until `commit()`, which makes them durable and returns where the
output now ends (bytes for JSONL, part count for Parquet). The run state stores that figure
after the commit; a writer opened with the state's figure first cuts the output back to it, so
a crash never leaves a torn line, an unreadable part, or rows the state does not know about.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = [
    "JsonlWriter",
    "ParquetWriter",
    "ResultWriter",
    "dumps_line",
    "fsync_dir",
    "write_atomic",
]

log = logging.getLogger(__name__)

_PART = re.compile(r"^part-(\d{6})\.parquet$")


class ResultWriter(Protocol):
    """What the ledger needs from an output."""

    pending: int

    def write(self, row: dict[str, Any]) -> None: ...

    def commit(self) -> int: ...

    def close(self) -> None: ...


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", errors="replace")
    return str(value)


def dumps_line(row: dict[str, Any]) -> bytes:
    """One JSONL line; values orjson cannot encode are written as strings."""
    return orjson.dumps(row, default=_default, option=orjson.OPT_APPEND_NEWLINE)


class JsonlWriter:
    """An append-only JSONL file, cut back to `committed_offset` when opened.

    Args:
        path: the file (created with its parent directory if missing).
        committed_offset: the size the run state recorded at its last commit.
    """

    def __init__(self, path: Path, *, committed_offset: int = 0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        self._f = open(path, "ab")  # noqa: SIM115 - held open for the run
        size = self._f.seek(0, os.SEEK_END)
        if size > committed_offset:
            log.info("%s: dropping %d uncommitted bytes", path, size - committed_offset)
            self._f.truncate(committed_offset)
            os.fsync(self._f.fileno())
        elif size < committed_offset:
            log.warning(
                "%s: is shorter (%d bytes) than the run state says (%d)",
                path,
                size,
                committed_offset,
            )
        self.offset = self._f.seek(0, os.SEEK_END)
        if created:
            fsync_dir(path.parent)
        self._buf: list[bytes] = []
        self.pending = 0

    def write(self, row: dict[str, Any]) -> None:
        """Buffer one row (not durable until `commit`)."""
        self._buf.append(dumps_line(row))
        self.pending += 1

    def commit(self) -> int:
        """Write the buffered rows, flush and fsync; return the file's committed size."""
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            self._f.write(data)
            self._f.flush()
            os.fsync(self._f.fileno())
            self.offset += len(data)
        self.pending = 0
        return self.offset

    def close(self) -> None:
        """Close the file; buffered, uncommitted rows are dropped."""
        self._f.close()


class ParquetWriter:
    """A directory of Parquet part files (`part-000001.parquet`, ...), one per commit.

    A part is written to a temporary name, fsynced and renamed, so a part either exists whole
    or not at all. Opening deletes temporary files and parts beyond `committed_parts`.
    Buffered rows become Arrow record batches every `chunk_rows` rows, which keeps them compact.

    Args:
        directory: the output directory (the job's `.parquet` path).
        committed_parts: the part count the run state recorded at its last commit.
        chunk_rows: rows per in-memory Arrow chunk.
    """

    def __init__(
        self, directory: Path, *, committed_parts: int = 0, chunk_rows: int = 1000
    ) -> None:
        self.directory = directory
        if directory.exists() and not directory.is_dir():
            from batchrun.errors import JobError

            raise JobError(f"{directory}: Parquet output must be a directory, found a file")
        directory.mkdir(parents=True, exist_ok=True)
        removed = 0
        for entry in directory.iterdir():
            m = _PART.match(entry.name)
            stray = entry.name.endswith(".tmp") or (
                m is not None and int(m.group(1)) > committed_parts
            )
            if stray and entry.is_file():
                entry.unlink()
                removed += 1
        if removed:
            log.info("%s: removed %d uncommitted part file(s)", directory, removed)
            fsync_dir(directory)
        self.parts = committed_parts
        self.chunk_rows = chunk_rows
        self._rows: list[dict[str, Any]] = []
        self._chunks: list[Any] = []
        self._schema: Any = None
        self.pending = 0

    def write(self, row: dict[str, Any]) -> None:
        """Buffer one row (not durable until `commit`)."""
        self._rows.append(row)
        self.pending += 1
        if len(self._rows) >= self.chunk_rows:
            self._flush_chunk()

    def commit(self) -> int:
        """Write the buffered rows as one new part file; return the committed part count."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush_chunk()
        if self._chunks:
            table = (
                self._chunks[0]
                if len(self._chunks) == 1
                else pa.concat_tables(self._chunks, promote_options="permissive")
            )
            self._chunks.clear()
            name = f"part-{self.parts + 1:06d}.parquet"
            tmp = self.directory / (name + ".tmp")
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.directory / name)
            fsync_dir(self.directory)
            self.parts += 1
        self.pending = 0
        return self.parts

    def close(self) -> None:
        """Drop buffered, uncommitted rows."""
        self._rows.clear()
        self._chunks.clear()

    def _flush_chunk(self) -> None:
        import pyarrow as pa

        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows)
        self._rows.clear()
        schema = self._schema
        if schema is not None and table.schema != schema and table.schema.names == schema.names:
            try:
                table = table.cast(schema)
            except (pa.ArrowException, ValueError):
                pass
        if schema is None or not any(pa.types.is_null(f.type) for f in table.schema):
            self._schema = table.schema
        self._chunks.append(table)


def write_atomic(path: Path, chunks: list[bytes] | bytes) -> int:
    """Replace `path` with `chunks` (temp file, fsync, rename, fsync dir); return the size."""
    tmp = path.with_name(path.name + ".tmp")
    data = chunks if isinstance(chunks, bytes) else b"".join(chunks)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return len(data)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename or a new file in it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
