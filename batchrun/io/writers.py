"""Output writers: a JSONL file, or a directory of Parquet part files; both commit atomically.

Rows are buffered in memory until `commit()`, which makes them durable and returns where the
output now ends (bytes for JSONL, part count for Parquet). The run state stores that figure
after the commit; a writer opened with the state's figure first cuts the output back to it, so
a crash never leaves a torn line, an unreadable part, or rows the state does not know about.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

__all__ = [
    "Compaction",
    "JsonlWriter",
    "ParquetWriter",
    "ResultWriter",
    "fsync_dir",
    "move_temp",
    "temp_path",
    "write_all",
    "write_atomic",
    "write_temp",
]

log = logging.getLogger(__name__)

_PART = re.compile(r"^part-(\d{6})\.parquet$")
_MERGED_KEY = b"batchrun.merged"


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
        # Unbuffered: a failed write leaves nothing behind in a buffer that a later flush
        # could append past the point the file is cut back to.
        self._f = open(path, "ab", buffering=0)  # noqa: SIM115 - held open for the run
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
        """Buffer one row (not durable until `commit`); values orjson cannot encode are
        written as strings."""
        self._buf.append(orjson.dumps(row, default=_default, option=orjson.OPT_APPEND_NEWLINE))
        self.pending += 1

    def commit(self) -> int:
        """Write the buffered rows and fsync; return the file's committed size.

        On a failed write or fsync (disk full, I/O error) the file is cut back to its last
        committed size and the rows stay buffered.

        Raises:
            OSError: the write or the fsync failed.
        """
        if self._buf:
            data = b"".join(self._buf)
            try:
                write_all(self._f.fileno(), data)
            except OSError:
                self.rollback(self.offset)
                raise
            self._buf.clear()
            self.offset += len(data)
        self.pending = 0
        return self.offset

    def rollback(self, offset: int) -> None:
        """Cut the file back to `offset` (a committed size) after a failed commit.

        Best effort: if even that fails, the next open cuts it back.
        """
        try:
            os.ftruncate(self._f.fileno(), offset)
            os.fsync(self._f.fileno())
        except OSError as e:
            log.warning(
                "%s: cannot cut back to %d bytes now (%s); the next run will", self.path, offset, e
            )
            return
        self.offset = min(self.offset, offset)

    def close(self) -> None:
        """Close the file; buffered, uncommitted rows are dropped."""
        self._buf.clear()
        self.pending = 0
        self._f.close()


@dataclass(slots=True, frozen=True)
class Compaction:
    """A merged part written and renamed, waiting for the run state before the old go.

    Attributes:
        number: the merged part's number (a new, higher one).
        merged: the numbers of the parts it replaces.
    """

    number: int
    merged: tuple[int, ...]


class ParquetWriter:
    """A directory of Parquet part files (`part-000001.parquet`, ...), one per commit.

    A part is written to a temporary name, fsynced and renamed, so a part either exists whole
    or not at all. Opening deletes temporary files and every part the run state does not list
    as live. Buffered rows become Arrow tables every `chunk_rows` rows, which keeps them compact.

    Commits are small and frequent (a kill loses at most one commit's rows), so parts are
    merged to keep the file count down: once `compact_after` small parts are live,
    `compact_begin` streams them (one part, one small batch at a time, so memory stays flat)
    into a new part marked as merged in its metadata. A merged part with fewer than
    `merge_rows` rows still counts as small and is merged again with the next ones, so slow
    runs (small commits) still end with parts of about `merge_rows` rows; a merged part of
    `merge_rows` or more is never rewritten. The caller records the new live list in the run
    state, then `compact_end` deletes the merged parts. A crash at any step leaves either the
    old parts or the new one listed as live; opening deletes the other.

    Args:
        directory: the output directory (the job's `.parquet` path).
        committed_parts: the highest part number the run state recorded.
        live_parts: the part numbers the run state lists as live (None: 1..committed_parts).
        chunk_rows: rows per in-memory Arrow chunk.
        compact_after: merge when this many small parts are live (0: never).
        merge_rows: a merged part is small (merged again) below this many rows (0: never).
    """

    def __init__(
        self,
        directory: Path,
        *,
        committed_parts: int = 0,
        live_parts: Sequence[int] | None = None,
        chunk_rows: int = 1000,
        compact_after: int = 32,
        merge_rows: int = 0,
    ) -> None:
        self.directory = directory
        if directory.exists() and not directory.is_dir():
            from batchrun.errors import JobError

            raise JobError(f"{directory}: Parquet output must be a directory, found a file")
        directory.mkdir(parents=True, exist_ok=True)
        live = set(range(1, committed_parts + 1) if live_parts is None else live_parts)
        removed = 0
        for entry in directory.iterdir():
            m = _PART.match(entry.name)
            stray = entry.name.endswith(".tmp") or (m is not None and int(m.group(1)) not in live)
            if stray and entry.is_file():
                entry.unlink()
                removed += 1
        if removed:
            log.info("%s: removed %d uncommitted part file(s)", directory, removed)
            fsync_dir(directory)
        self.parts = committed_parts
        self.chunk_rows = chunk_rows
        self.compact_after = compact_after
        self.merge_rows = merge_rows
        self._live: dict[int, _Part] = {}  # live part number -> what it is
        for n in sorted(live):
            path = self._path(n)
            if path.exists():
                self._live[n] = _Part.of(path)
        self._rows: list[dict[str, Any]] = []
        self._chunks: list[Any] = []
        self._schema: Any = None
        self.pending = 0

    @property
    def live(self) -> list[int]:
        """The numbers of the committed part files, in order."""
        return sorted(self._live)

    def _path(self, number: int) -> Path:
        return self.directory / f"part-{number:06d}.parquet"

    def part_path(self, number: int) -> Path:
        """The file of part `number`."""
        return self._path(number)

    def write(self, row: dict[str, Any]) -> None:
        """Buffer one row (not durable until `commit`); values orjson cannot encode are
        written as strings."""
        self._rows.append(row)
        self.pending += 1
        if len(self._rows) >= self.chunk_rows:
            self._flush_chunk()

    def commit(self) -> int:
        """Write the buffered rows as one new part file; return the committed part count."""
        import pyarrow as pa

        self._flush_chunk()
        if self._chunks:
            table = (
                self._chunks[0]
                if len(self._chunks) == 1
                else pa.concat_tables(self._chunks, promote_options="permissive")
            )
            self._chunks = [table]  # kept until the part is on disk
            path = self._path(self.parts + 1)
            try:
                _write_part(path, table)
            except OSError:
                self._remove(path)
                raise
            self._chunks.clear()
            self.parts += 1
            self._live[self.parts] = _Part(merged=False, rows=table.num_rows)
        self.pending = 0
        return self.parts

    def compact_begin(self) -> Compaction | None:
        """Merge the small parts into a new part when there are enough; None when not due.

        The merged parts stay on disk (and live) until `compact_end`. Parts whose schemas
        cannot be unified are left alone.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        small = [
            n
            for n, part in sorted(self._live.items())
            if not part.merged or part.rows < self.merge_rows
        ]
        if not self.compact_after or len(small) < self.compact_after:
            return None
        try:
            schema = pa.unify_schemas(
                [pq.read_schema(self._path(n)) for n in small], promote_options="permissive"
            ).with_metadata({_MERGED_KEY: b"1"})
        except (pa.ArrowException, ValueError) as e:
            log.info("%s: parts not merged (schemas differ: %s)", self.directory, e)
            return None
        number = self.parts + 1
        path = self._path(number)
        rows = 0

        def merge(f: BinaryIO) -> None:
            nonlocal rows
            with pq.ParquetWriter(f, schema, compression="zstd") as out:
                for n in small:
                    with pq.ParquetFile(self._path(n)) as part:
                        for batch in part.iter_batches(
                            batch_size=self.chunk_rows, use_threads=False
                        ):
                            table = pa.Table.from_batches([batch])
                            out.write_table(_conform(table, schema))
                            rows += table.num_rows

        try:
            write_atomic(path, merge)
        except OSError:  # before ArrowException: pyarrow's IOError is both
            self._remove(path)
            raise
        except (pa.ArrowException, ValueError) as e:
            log.info("%s: parts not merged: %s", self.directory, e)
            return None
        self.parts = number
        for n in small:
            del self._live[n]
        self._live[number] = _Part(merged=True, rows=rows)
        log.debug(
            "%s: merged %d parts (%d rows) into %s", self.directory, len(small), rows, path.name
        )
        return Compaction(number=number, merged=tuple(small))

    def compact_end(self, compaction: Compaction) -> None:
        """Delete the merged parts (after the run state lists the new part instead)."""
        for n in compaction.merged:
            self._path(n).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def rollback(self, parts: int, live: Sequence[int] | None) -> None:
        """Go back to a committed `parts` / `live` list after a failed commit or merge: the
        parts the run state does not list are deleted (best effort: else on the next open)."""
        keep = set(range(1, parts + 1) if live is None else live)
        for n in [n for n in self._live if n not in keep]:
            del self._live[n]
        for n in keep - self._live.keys():
            try:
                self._live[n] = _Part.of(self._path(n))
            except OSError:
                pass  # gone: the next open sees the state's list and the directory again
        for n in range(1, max(self.parts, parts) + 2):
            if n not in keep:
                self._remove(self._path(n))
        self.parts = parts

    def _remove(self, path: Path) -> None:
        """Delete a part and its temporary file if they exist (best effort)."""
        try:
            removed = False
            for p in (path, temp_path(path)):
                if p.exists():
                    p.unlink()
                    removed = True
            if removed:
                fsync_dir(self.directory)
        except OSError as e:
            log.warning(
                "%s: cannot remove %s now (%s); the next run will", self.directory, path.name, e
            )

    def close(self) -> None:
        """Drop buffered, uncommitted rows."""
        self._rows.clear()
        self._chunks.clear()
        self.pending = 0

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


@dataclass(slots=True, frozen=True)
class _Part:
    """A live part: made by a merge or by a commit, and how many rows it holds."""

    merged: bool
    rows: int

    @classmethod
    def of(cls, path: Path) -> _Part:
        """Read it from the file's footer."""
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        return cls(merged=_MERGED_KEY in (meta.metadata or {}), rows=meta.num_rows)


def _conform(table: Any, schema: Any) -> Any:
    """`table` with `schema`'s columns in its order (missing ones null), cast to its types."""
    import pyarrow as pa

    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _write_part(path: Path, table: Any) -> None:
    """Write `table` as the part `path`, atomically (`write_atomic`)."""
    import pyarrow.parquet as pq

    write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"))


def write_atomic(
    path: Path, data: bytes | list[bytes] | Callable[[BinaryIO], object], *, tmp: Path | None = None
) -> int:
    """Replace `path` whole: write a temporary file, fsync it, rename it over `path`, fsync the
    directory; return the new size. Every file batchrun replaces goes through here.

    Args:
        path: the file to replace.
        data: its new content, or a function that writes it to the open temporary file.
        tmp: the temporary file (default `<path>.tmp`, which a reader may treat as stray).

    Raises:
        OSError: it could not be written; `path` is as it was and the temporary file is gone.
    """
    tmp = tmp or temp_path(path)
    size = write_temp(path, data, tmp=tmp)
    move_temp(path, tmp=tmp)
    return size


def temp_path(path: Path) -> Path:
    """The temporary file `write_atomic` writes before it renames it over `path`."""
    return path.with_name(path.name + ".tmp")


def write_temp(
    path: Path, data: bytes | list[bytes] | Callable[[BinaryIO], object], *, tmp: Path | None = None
) -> int:
    """The first half of `write_atomic`: the temporary file, written and fsynced; its size.

    For a replacement that something must record in between (the errors-file rewrite notes
    its size in the run state before `move_temp`).

    Raises:
        OSError: it could not be written; the temporary file is gone.
    """
    tmp = tmp or temp_path(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data if isinstance(data, bytes) else b"".join(data))
            f.flush()
            os.fsync(f.fileno())
            return f.tell()
    except BaseException:
        with contextlib.suppress(OSError):  # the temporary file would only take space
            tmp.unlink(missing_ok=True)
        raise


def move_temp(path: Path, *, tmp: Path | None = None) -> None:
    """The second half of `write_atomic`: rename the temporary file over `path`, fsync the
    directory.

    Raises:
        OSError: the rename or the fsync failed.
    """
    os.replace(tmp or temp_path(path), path)
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` at `fd`'s offset (a short write goes on), then fsync.

    Raises:
        OSError: the write or the fsync failed (the caller cuts the file back).
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename or a new file in it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
