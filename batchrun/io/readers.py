"""Input readers: JSONL (also gzipped), Parquet and CSV, one file or a sorted glob, streamed.

A reader yields `Row`s in input order, each with its sequence number (its 0-based position over
the whole input), its id, its record, and a `Position` from which a resumed run can seek back to
it: a byte offset for JSONL, a row index in the file for Parquet (served from the row group that
holds it) and CSV (skipped in whole batches). Memory stays flat: JSONL is read line by line,
Parquet and CSV in record batches of `batch_rows`.

A row that cannot be used (a line that is not a JSON object, a CSV row with the wrong number of
fields, a missing id field) comes out with `record = None` and `error` saying why, so the run can
put it in the errors file (status ``bad_input``) and go on.

A file that is damaged part way (a truncated or corrupt ``.gz``, a Parquet row group or a CSV
block that cannot be decoded) yields one last unusable row for its *damaged tail*, with the id
``"<file>@<offset>"`` (the file's name, or its path in the glob as in glob ids; the offset is the
byte of the decompressed JSONL at which reading failed, or ``row N`` for Parquet and CSV), and
reading goes on with the next file. Whether a resumed run starts before the damage or at it, the
damage is met at the same place, so the tail row has the same sequence number and position every
time: it is settled once in the errors file, and a rerun skips it like any committed row, which
keeps every row exactly once. Damage found by `open_input` (a file that cannot be opened, the
first block of a CSV file) is an `InputError` instead: nothing has been sent yet.
"""

from __future__ import annotations

import glob
import gzip
import logging
import os
import re
import stat
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
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
_GZIP_DAMAGE = (EOFError, zlib.error, gzip.BadGzipFile)
"""What reading a truncated or corrupt gzip raises (BadGzipFile: a bad header, CRC or length)."""
_CSV_BLOCK = 1 << 20
_CSV_CHECK_BLOCK = 64 << 10
CHUNK_ROWS = 256
"""Rows a chunk of `InputReader.chunks` holds at most."""
_SHOWN = 80
"""Characters of a bad CSV row shown in its error."""


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
        """The number of rows `rows()` yields (after `limit`), counted without decoding them.

        Exact for undamaged input: Parquet from its metadata; plain or gzipped JSONL by its
        non-blank lines (gzip is decompressed: the cost of reading without the parsing); CSV
        (plain or gzipped) by Arrow's own parser in the reader's settings, one column converted,
        so quoted newlines, blank lines and rows with the wrong number of fields count as the
        reader counts them. Counting stops once `limit` rows are seen. Returns None when a
        JSONL gzip stream or a CSV file is damaged (the reader's row count then depends on where
        the damage is); a Parquet file with a damaged row group counts its metadata's rows.
        """
        limit = self.limit
        total = 0
        for path in self.files:
            left = None if limit is None else limit - total
            if left is not None and left <= 0:
                break
            if self.format == "parquet":
                import pyarrow.parquet as pq

                n: int | None = pq.ParquetFile(path).metadata.num_rows
            elif self.format == "jsonl":
                n = _count_jsonl_rows(path, left)
            else:
                n = _count_csv_rows(path, left)
            if n is None:
                return None
            total += n
        return total if limit is None else min(total, limit)

    def rows(self, *, start_seq: int = 0, start: Position | None = None) -> Iterator[Row]:
        """Rows in input order, from `start` (whose row has sequence number `start_seq`).

        Args:
            start_seq: the sequence number of the row at `start` (0 from the beginning).
            start: a `Position` a previous run recorded; None starts at the first row.
        """
        return chain.from_iterable(self.chunks(start_seq=start_seq, start=start))

    def chunks(self, *, start_seq: int = 0, start: Position | None = None) -> Iterator[list[Row]]:
        """`rows` a list at a time (at most `CHUNK_ROWS` each, never across files): the
        runner's way, with no Python frame per row between the file and the runner."""
        seq = start_seq
        pos = start or _NO_POSITION
        limit = self.limit
        if limit is not None and seq >= limit:
            return
        for file_index in range(pos[0], len(self.files)):
            first = pos if file_index == pos[0] else (file_index, 0, 0, 1)
            for chunk in self._file_chunks(file_index, first, seq):
                seq += len(chunk)
                if limit is not None and seq >= limit:
                    yield chunk[: len(chunk) - (seq - limit)]
                    return
                yield chunk

    def first_record(self) -> Row | None:
        """The first row of the input (which may be unusable), or None when the input is empty."""
        for row in self.rows():
            return row
        return None

    def first_fields(self) -> dict[str, Any] | None:
        """The first row's fields as read, before `id_field` is looked up in them.

        Returns None when the input is empty or its first row is not a usable object (a line
        that is not JSON, a damaged file): that row goes to the errors file like any other.
        """
        plain = InputReader(
            files=self.files,
            root=self.root,
            is_glob=self.is_glob,
            fmt=self.format,
            id_field=None,
            limit=1,
            batch_rows=self.batch_rows,
        )
        first = plain.first_record()
        return first.record if first is not None else None

    def _file_chunks(self, file_index: int, pos: Position, seq: int) -> Iterator[list[Row]]:
        if self.format == "jsonl":
            return self._jsonl_chunks(file_index, pos, seq)
        if self.format == "parquet":
            return _batched(self._parquet_rows(file_index, pos[1], seq))
        return _batched(self._csv_rows(file_index, pos[1], seq))

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

    def _jsonl_chunks(self, file_index: int, pos: Position, seq: int) -> Iterator[list[Row]]:
        path = self.files[file_index]
        row_in_file, offset, line_no = pos[1], pos[2], pos[3]
        loads = orjson.loads
        gzipped = _is_gzip(path)
        id_field = self.id_field
        plain_ids = not self.is_glob  # a row's id is its seq, or its id_field value
        out: list[Row] = []
        add = out.append
        with _open_binary(path) as f:
            try:
                if offset:
                    f.seek(offset)
                for line in f:
                    if len(out) >= CHUNK_ROWS:
                        yield out
                        out = []
                        add = out.append
                    start = offset
                    offset += len(line)
                    here = line_no
                    line_no += 1
                    if line.isspace():  # a blank line (the file's lines are never empty)
                        continue
                    p = (file_index, row_in_file, start, here)
                    row_in_file += 1
                    try:
                        record = loads(line)
                    except orjson.JSONDecodeError as e:
                        add(Row(seq, self._position_id(seq, p), None, p, f"not JSON: {e}"))
                        seq += 1
                        continue
                    if plain_ids and type(record) is dict:  # the usual row, without a call
                        row_id = seq if id_field is None else record.get(id_field)
                        if row_id is not None:
                            add(Row(seq, row_id, record, p))
                            seq += 1
                            continue
                    add(self._make_row(seq, record, p))
                    seq += 1
            except _GZIP_DAMAGE as e:
                if not gzipped:
                    raise
                # `offset` is the start of the line that could not be read: the same on every run.
                p = (file_index, row_in_file, offset, line_no)
                add(self._damaged(seq, p, f"byte {offset} of the decompressed data", e))
        if out:
            yield out

    def _damaged(self, seq: int, pos: Position, where: str, error: BaseException) -> Row:
        """The one row standing for the unreadable rest of file `pos[0]`, from `pos` on."""
        name = self.relpaths[pos[0]] if self.is_glob else self.files[pos[0]].name
        at = str(pos[2]) if self.format == "jsonl" else f"row {pos[1]}"
        kind = type(error)
        kind_name = (
            kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        )
        detail = " ".join(str(error).split())[:200] or "no detail"
        message = (
            f"{self.files[pos[0]]}: cannot read past {where} ({kind_name}: {detail}); "
            "the rest of this file is not read"
        )
        log.info("%s", message)
        return Row(seq, f"{name}@{at}", None, pos, message)

    def _position_id(self, seq: int, pos: Position) -> Any:
        return seq if not self.is_glob else f"{self.relpaths[pos[0]]}:{pos[1]}"

    def _parquet_rows(self, file_index: int, start_row: int, seq: int) -> Iterator[Row]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.files[file_index]
        next_row = start_row  # where reading failed, if it does
        try:
            pf = pq.ParquetFile(path)
            meta = pf.metadata
            group_start = 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if group_start + n > start_row:
                    # One row group at a time, each read from its start: damage in a group is
                    # then met at the same row whichever row a resumed run starts from.
                    batches = pf.iter_batches(batch_size=self.batch_rows, row_groups=[g])
                    skip = max(0, start_row - group_start)
                    for row_in_file, record in _records(batches, group_start, skip):
                        p = (file_index, row_in_file, -1, row_in_file + 1)
                        yield self._make_row(seq, record, p)
                        seq += 1
                        next_row = row_in_file + 1
                group_start += n
                next_row = max(next_row, group_start)
        except (pa.ArrowException, OSError) as e:
            p = (file_index, next_row, -1, next_row + 1)
            yield self._damaged(seq, p, f"row {next_row}", e)

    def _csv_rows(self, file_index: int, start_row: int, seq: int) -> Iterator[Row]:
        import pyarrow as pa

        path = self.files[file_index]
        invalid: deque[tuple[int, str]] = deque()
        row_in_file = start_row
        try:
            columns = _csv_header(path)
            if columns is None:
                return
            reader = _open_csv(path, columns, invalid, _CSV_BLOCK)
        except (pa.ArrowInvalid, InputError) as e:
            p = (file_index, 0, -1, 2)
            yield self._damaged(seq, p, "row 0", e)
            return
        try:
            for row_in_file, record, error in _csv_records(reader, invalid, start_row):
                p = (file_index, row_in_file, -1, row_in_file + 2)
                if error is not None:
                    yield Row(seq, self._position_id(seq, p), None, p, error)
                else:
                    yield self._make_row(seq, record, p)
                seq += 1
                row_in_file += 1
        except pa.ArrowInvalid as e:
            p = (file_index, row_in_file, -1, row_in_file + 2)
            yield self._damaged(seq, p, f"row {row_in_file}", e)
        finally:
            reader.close()


def _open_csv(
    path: Path,
    columns: list[str],
    invalid: deque[tuple[int, str]],
    block: int,
    include: list[str] | None = None,
) -> Any:
    """A streaming Arrow CSV reader whose rows with the wrong number of fields land in `invalid`.

    Each lands as (row in the file, message); Arrow numbers the records it parses (the header is
    1, blank lines are not counted) only when it parses in one thread, hence `use_threads=False`.
    `include`: convert only these columns (counting rows needs one).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def on_invalid(row: Any) -> str:
        if row.number is None or row.number < 2:
            return "error"
        text = " ".join(str(row.text).split())
        shown = text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
        invalid.append(
            (
                row.number - 2,
                f"CSV row has {row.actual_columns} field(s), the header {row.expected_columns}: "
                f"{shown}",
            )
        )
        return "skip"

    return pacsv.open_csv(
        str(path),
        read_options=pacsv.ReadOptions(block_size=block, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(columns, pa.string()), include_columns=include
        ),
    )


def _csv_records(
    batches: Iterable[Any], invalid: deque[tuple[int, str]], skip: int
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row in the file, record, None) and, in their place, (row, None, why) for the rows Arrow
    left out (`invalid`, filled while it parses); the first `skip` rows are left out, whole
    batches without converting them to Python."""
    row = 0
    for batch in batches:
        n = batch.num_rows
        end = row + n  # the batch's rows, and the invalid ones among them, end here
        for index, _ in invalid:
            if index >= end:
                break
            end += 1
        if end <= skip:
            while invalid and invalid[0][0] < end:
                invalid.popleft()
            row = end
            continue
        for record in batch.to_pylist():
            while invalid and invalid[0][0] <= row:
                index, why = invalid.popleft()
                if index >= skip:
                    yield index, None, why
                row = max(row, index + 1)
            if row >= skip:
                yield row, record, None
            row += 1
    while invalid:
        index, why = invalid.popleft()
        if index >= skip:
            yield index, None, why


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

    A glob matches regular files only. The first block of every CSV file is parsed here, so a
    CSV file that Arrow cannot read at all is refused before anything is sent.

    Args:
        spec: the job's `[input]`.
        limit: read at most this many rows (the first ones, every time).
        source: the job file, named in messages.

    Raises:
        InputError: the file is missing, the glob matches nothing, the path is a directory or
            not a regular file (a FIFO, a device, a socket), a file cannot be opened, or it is
            not a readable Parquet, gzip or CSV file.
    """
    pattern = spec.path
    fmt = spec.input_format
    if "\0" in pattern:
        raise InputError(f"{source}: [input] path {pattern!r} contains a NUL byte")
    is_glob = any(c in _GLOB_CHARS for c in pattern)
    if is_glob:
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"{source}: [input] path {pattern!r} matches no files")
        root = _glob_root(pattern)
    else:
        path = Path(pattern)
        _check_regular(path, pattern, fmt, source)
        files = [path]
        root = path.parent
    for f in files:
        _check_readable(f, fmt)
    return InputReader(
        files=files, root=root, is_glob=is_glob, fmt=fmt, id_field=spec.id_field, limit=limit
    )


def _check_regular(path: Path, pattern: str, fmt: InputFormat, source: str) -> None:
    """Refuse what is not a regular file before opening it: opening a FIFO blocks, a device
    such as /dev/zero reads forever."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{source}: [input] path {pattern!r}: input file not found") from None
    except OSError as e:
        raise InputError(f"{source}: [input] path {pattern!r}: {e.strerror}") from e
    if stat.S_ISDIR(mode):
        raise InputError(
            f"{source}: [input] path {pattern!r} is a directory; use a glob such as "
            f"'{pattern.rstrip('/')}/*.{'jsonl' if fmt == 'jsonl' else fmt}'"
        )
    if not stat.S_ISREG(mode):
        raise InputError(
            f"{source}: [input] path {pattern!r} is {_kind(mode)}, not a regular file; "
            "batchrun reads its input from files"
        )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _check_readable(path: Path, fmt: InputFormat) -> None:
    try:
        with open(path, "rb") as f:
            f.read(4)
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
        except (OSError, *_GZIP_DAMAGE) as e:
            raise InputError(f"{path}: not a readable gzip file: {e}") from e
    elif fmt == "csv":
        _check_csv(path)


def _check_csv(path: Path) -> None:
    """Parse the header and the first block of a CSV file (Arrow reads it to start anyway)."""
    import pyarrow as pa

    columns = _csv_header(path)
    if columns is None:
        return
    try:
        reader = _open_csv(path, columns, deque(), _CSV_CHECK_BLOCK)
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: not a readable CSV file: {' '.join(str(e).split())}") from e
    try:
        reader.read_next_batch()
    except StopIteration:
        pass
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: not a readable CSV file: {' '.join(str(e).split())}") from e
    finally:
        reader.close()


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_binary(path: Path) -> IO[bytes]:
    if _is_gzip(path):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb", buffering=1 << 20)


_COUNT_CHUNK = 1 << 20
_BLANK_START = re.compile(rb"\n[\n \t\r\x0b\x0c]")
"""A newline then a newline or `bytes.strip()`'s whitespace: maybe a blank line (one search
finds it; six `bytes.find` calls cost twice as much, as newlines are frequent)."""


def _count_jsonl_rows(path: Path, stop_at: int | None) -> int | None:
    """Non-blank lines of a JSONL file (the reader's rows), or None for a damaged gzip stream.

    A chunk in which no newline is followed by whitespace or another newline has only
    non-blank lines after its first newline and is counted with `bytes.count`; any other chunk
    (rare) is split into lines. Stops once `stop_at` rows are seen.
    """
    count = 0
    open_blank = True  # the line not yet ended is empty or whitespace so far
    try:
        with _open_binary(path) as f:
            while chunk := f.read(_COUNT_CHUNK):
                first = chunk.find(b"\n")
                if first < 0:
                    open_blank = open_blank and not chunk.strip()
                    continue
                if open_blank and not chunk[:first].strip():
                    count -= 1  # the line ending at `first` is blank
                if _BLANK_START.search(chunk) is None:
                    count += chunk.count(b"\n")
                    open_blank = chunk.endswith(b"\n")
                else:
                    lines = chunk[first + 1 :].split(b"\n")
                    count += 1 + sum(1 for line in lines[:-1] if line.strip())
                    open_blank = not lines[-1].strip()
                if stop_at is not None and count >= stop_at:
                    return count
    except _GZIP_DAMAGE:
        return None
    return count + (0 if open_blank else 1)


def _count_csv_rows(path: Path, stop_at: int | None) -> int | None:
    """Rows of a CSV file as the reader yields them (Arrow's parser in the reader's settings,
    one column converted), or None when the file cannot be parsed to its end. Stops once
    `stop_at` are seen."""
    import pyarrow as pa

    invalid: deque[tuple[int, str]] = deque()
    count = 0
    try:
        columns = _csv_header(path)
        if columns is None:
            return 0
        reader = _open_csv(path, columns, invalid, _CSV_BLOCK, include=columns[:1])
    except (pa.ArrowException, InputError):
        return None
    try:
        for batch in reader:
            rows: int = batch.num_rows
            count += rows + len(invalid)
            invalid.clear()
            if stop_at is not None and count >= stop_at:
                return count
    except (pa.ArrowException, OSError, *_GZIP_DAMAGE):
        return None
    finally:
        reader.close()
    return count + len(invalid)


def _csv_header(path: Path) -> list[str] | None:
    """The header row's column names, or None for an empty file.

    Raises:
        InputError: the header is not UTF-8 text or cannot be parsed.
    """
    import csv

    try:
        with _open_binary(path) as f:
            line = f.readline()
        header = next(csv.reader([line.decode("utf-8-sig")]), None)  # Arrow drops a BOM too
    except (UnicodeDecodeError, csv.Error, OSError, *_GZIP_DAMAGE) as e:
        raise InputError(f"{path}: cannot read the CSV header: {e}") from e
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


def _batched(rows: Iterator[Row]) -> Iterator[list[Row]]:
    """`rows` in lists of at most `CHUNK_ROWS`."""
    while chunk := list(islice(rows, CHUNK_ROWS)):
        yield chunk
