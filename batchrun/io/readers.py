"""Input readers: JSONL (also gzipped), Parquet and CSV, one file or a sorted glob, streamed.

A reader yields `Row`s in input order, each with its sequence number (its 0-based position over
the whole input), its id, its record, and a `Position` from which a resumed run can seek back to
it: a byte offset for JSONL, a row index in the file for Parquet (served from the row group that
holds it) and CSV (skipped in whole batches). Memory stays flat: JSONL is read line by line,
Parquet and CSV in record batches of `batch_rows`.

A row that cannot be used (a line that is not a JSON object, a missing id field) comes out with
`record = None` and `error` saying why, so the run can put it in the errors file and go on.
"""

from __future__ import annotations

import glob
import gzip
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import orjson

from batchrun.errors import InputError
from batchrun.job import InputFormat, InputSpec

__all__ = ["InputReader", "Position", "Row", "open_input"]

log = logging.getLogger(__name__)

Position = tuple[int, int, int, int]
"""(file index, row index in the file, byte offset of the line (JSONL; else -1), 1-based line)."""

_GLOB_CHARS = frozenset("*?[")
_NO_POSITION: Position = (0, 0, 0, 1)


@dataclass(slots=True)
class Row:
    """One input row.

    Attributes:
        seq: the row's 0-based position over the whole input (all files, in order).
        id: the `id_field` value; else `seq` for one file, `"relpath:pos"` for a glob.
        record: the row's fields, or None when the row is unusable (then `error` says why).
        pos: where the row starts, for seeking back to it on resume.
        error: why the row is unusable, or None.
    """

    seq: int
    id: Any
    record: dict[str, Any] | None
    pos: Position
    error: str | None = None


class InputReader:
    """Streams the rows of a job's input.

    Build it with `open_input`, which checks that the files exist and can be opened.
    """

    def __init__(
        self,
        *,
        files: list[Path],
        root: Path,
        is_glob: bool,
        fmt: InputFormat,
        id_field: str | None,
        limit: int | None = None,
        batch_rows: int = 1024,
    ) -> None:
        self.files = files
        self.root = root
        self.is_glob = is_glob
        self.format: InputFormat = fmt
        self.id_field = id_field
        self.limit = limit
        self.batch_rows = batch_rows
        self.relpaths = [_relpath(f, root) for f in files]

    def where(self, pos: Position) -> str:
        """`file:line` (JSONL) or `file:row N` (Parquet, CSV) for messages and the errors file."""
        name = self.relpaths[pos[0]] if self.is_glob else self.files[pos[0]].name
        if self.format == "jsonl":
            return f"{name}:{pos[3]}"
        return f"{name}:row {pos[1]}"

    def count_rows(self) -> int | None:
        """The number of rows, when cheap to know (Parquet metadata, newlines of plain JSONL).

        Returns None for gzipped JSONL and CSV. The figure is for the progress ETA only.
        """
        total = 0
        for path in self.files:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(path).metadata.num_rows
            elif self.format == "jsonl" and not _is_gzip(path):
                total += _count_lines(path)
            else:
                return None
        return total if self.limit is None else min(total, self.limit)

    def rows(self, *, start_seq: int = 0, start: Position | None = None) -> Iterator[Row]:
        """Rows in input order, from `start` (whose row has sequence number `start_seq`).

        Args:
            start_seq: the sequence number of the row at `start` (0 from the beginning).
            start: a `Position` a previous run recorded; None starts at the first row.
        """
        seq = start_seq
        pos = start or _NO_POSITION
        limit = self.limit
        if limit is not None and seq >= limit:
            return
        for file_index in range(pos[0], len(self.files)):
            first = pos if file_index == pos[0] else (file_index, 0, 0, 1)
            for row in self._file_rows(file_index, first, seq):
                yield row
                seq += 1
                if limit is not None and seq >= limit:
                    return

    def first_record(self) -> Row | None:
        """The first row of the input (which may be unusable), or None when the input is empty."""
        for row in self.rows():
            return row
        return None

    def _file_rows(self, file_index: int, pos: Position, seq: int) -> Iterator[Row]:
        if self.format == "jsonl":
            return self._jsonl_rows(file_index, pos, seq)
        if self.format == "parquet":
            return self._parquet_rows(file_index, pos[1], seq)
        return self._csv_rows(file_index, pos[1], seq)

    def _make_row(self, seq: int, record: Any, pos: Position) -> Row:
        row_id: Any = seq if not self.is_glob else f"{self.relpaths[pos[0]]}:{pos[1]}"
        if not isinstance(record, dict):
            kind = type(record).__name__
            return Row(seq, row_id, None, pos, f"not a JSON object (got {kind})")
        if self.id_field is not None:
            if self.id_field not in record or record[self.id_field] is None:
                return Row(seq, row_id, None, pos, f"no value for id_field {self.id_field!r}")
            row_id = record[self.id_field]
        return Row(seq, row_id, record, pos)

    def _jsonl_rows(self, file_index: int, pos: Position, seq: int) -> Iterator[Row]:
        path = self.files[file_index]
        row_in_file, offset, line_no = pos[1], pos[2], pos[3]
        loads = orjson.loads
        with _open_binary(path) as f:
            if offset:
                f.seek(offset)
            for line in f:
                start = offset
                offset += len(line)
                here = line_no
                line_no += 1
                if not line.strip():
                    continue
                p = (file_index, row_in_file, start, here)
                row_in_file += 1
                try:
                    record = loads(line)
                except orjson.JSONDecodeError as e:
                    yield Row(seq, self._position_id(seq, p), None, p, f"not JSON: {e}")
                    seq += 1
                    continue
                yield self._make_row(seq, record, p)
                seq += 1

    def _position_id(self, seq: int, pos: Position) -> Any:
        return seq if not self.is_glob else f"{self.relpaths[pos[0]]}:{pos[1]}"

    def _parquet_rows(self, file_index: int, start_row: int, seq: int) -> Iterator[Row]:
        import pyarrow.parquet as pq

        path = self.files[file_index]
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        group_start = 0
        first_group = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if group_start + n > start_row:
                break
            group_start += n
            first_group = g + 1
        if first_group >= meta.num_row_groups:
            return
        groups = list(range(first_group, meta.num_row_groups))
        batches = pf.iter_batches(batch_size=self.batch_rows, row_groups=groups)
        for row_in_file, record in _records(batches, group_start, start_row - group_start):
            yield self._make_row(seq, record, (file_index, row_in_file, -1, row_in_file + 1))
            seq += 1

    def _csv_rows(self, file_index: int, start_row: int, seq: int) -> Iterator[Row]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        path = self.files[file_index]
        columns = _csv_header(path)
        if columns is None:
            return
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string()))
        read = pacsv.ReadOptions(block_size=1 << 20)
        reader = pacsv.open_csv(str(path), read_options=read, convert_options=convert)
        row_in_file = start_row
        try:
            for row_in_file, record in _records(reader, 0, start_row):
                yield self._make_row(seq, record, (file_index, row_in_file, -1, row_in_file + 2))
                seq += 1
        except pa.ArrowInvalid as e:
            raise InputError(f"{path}: cannot read CSV after row {row_in_file}: {e}") from e
        finally:
            reader.close()


def _records(batches: Iterable[Any], first_row: int, skip: int) -> Iterator[tuple[int, Any]]:
    """(row number in the file, record) for Arrow record batches starting at row `first_row`,
    leaving out the first `skip` rows without converting them to Python."""
    row = first_row
    for batch in batches:
        n = batch.num_rows
        if skip >= n:
            skip -= n
            row += n
            continue
        if skip:
            batch = batch.slice(skip)
            row += skip
            skip = 0
        for record in batch.to_pylist():
            yield row, record
            row += 1


def open_input(spec: InputSpec, *, limit: int | None = None, source: str = "job") -> InputReader:
    """Resolve `[input] path` (a file or a glob) and check every file can be opened.

    Args:
        spec: the job's `[input]`.
        limit: read at most this many rows (the first ones, every time).
        source: the job file, named in messages.

    Raises:
        InputError: the file is missing, the glob matches nothing, a Parquet file is unreadable,
            a file is a directory or cannot be opened.
    """
    pattern = spec.path
    fmt = spec.input_format
    is_glob = any(c in _GLOB_CHARS for c in pattern)
    if is_glob:
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"{source}: [input] path {pattern!r} matches no files")
        root = _glob_root(pattern)
    else:
        path = Path(pattern)
        if not path.exists():
            raise InputError(f"{source}: [input] path {pattern!r}: input file not found")
        if path.is_dir():
            raise InputError(
                f"{source}: [input] path {pattern!r} is a directory; use a glob such as "
                f"'{pattern.rstrip('/')}/*.{'jsonl' if fmt == 'jsonl' else fmt}'"
            )
        files = [path]
        root = path.parent
    for f in files:
        _check_readable(f, fmt)
    return InputReader(
        files=files, root=root, is_glob=is_glob, fmt=fmt, id_field=spec.id_field, limit=limit
    )


def _check_readable(path: Path, fmt: InputFormat) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"{path}: cannot read input file: {e.strerror}") from e
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.ParquetFile(path).metadata  # noqa: B018 - reads and checks the footer
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file: {e}") from e
    elif fmt == "jsonl" and _is_gzip(path):
        try:
            with gzip.open(path, "rb") as g:
                g.read(1)
        except (OSError, EOFError) as e:
            raise InputError(f"{path}: not a readable gzip file: {e}") from e
    del head


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_binary(path: Path) -> IO[bytes]:
    if _is_gzip(path):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb", buffering=1 << 20)


def _count_lines(path: Path) -> int:
    count = 0
    last = b"\n"
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


def _csv_header(path: Path) -> list[str] | None:
    import csv

    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), None)
    return header


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if any(c in _GLOB_CHARS for c in part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relpath(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return os.path.relpath(path, root)
