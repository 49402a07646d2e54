"""`[output] order = "input"`: the results and the errors file rewritten in input order.

Rows finish out of order. With `order = "input"` the ledger sorts each commit's rows by their
sequence number before it writes them, and notes the results' sequence numbers, in output
order, in a side file of the run state (`SeqLog`, 8 bytes a row). The outputs are then a series
of ascending runs (at most one per commit; a run left sorted by an earlier rewrite is one run),
and a rewrite is a k-way merge of those runs, one pass, in flat memory: a window of input
rows at a time, to which each run contributes one contiguous slice (found by bisection in the
side file, mapped), sorted together in C (JSONL) or by Arrow (Parquet), so no Python work is
done per row. Memory: one window (8192 rows) plus a small read buffer per run (never more
than the run's own bytes, so a thousand short runs of errors hold ~1 MB), and the
mapped side file's pages are dropped as the merge goes.
Parquet parts are first copied to a spill file of 64-row Arrow batches, so a run's cursor
holds one small batch instead of a decoded row group.

The errors file needs no side file: each of its rows names its `row`.

The functions here only write temporary files (fsynced); swapping them in, and recording that
in the run state so a crash at any step is finished by the next open, is the ledger's part.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import mmap
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from batchrun.io.writers import _MERGED_KEY, _conform, write_all, write_temp

__all__ = [
    "Rewritten",
    "SeqLog",
    "error_seq",
    "merge_errors",
    "merge_jsonl_results",
    "merge_parquet_results",
    "spill_path",
]

_SEQ = 8  # bytes per sequence number in the side file
_BUFFER_BUDGET = 4 * 1024 * 1024  # read buffers of all runs together (~3x that as split lines)
_OUT_CHUNK = 1 << 20  # bytes (JSONL) gathered before a write
_ROW_GROUP = 8192  # rows per Parquet row group of the rewritten part


class SeqLog:
    """The results' sequence numbers in output order (int64, native order), append-only.

    Opened with the run state's committed result count, it is cut back to it, like the writers.
    It is `usable` only when it holds exactly one number per committed result (a run state made
    before `order = "input"` was set has fewer).

    Args:
        path: the side file, in the run state directory.
        committed_rows: the committed results.
    """

    def __init__(self, path: Path, *, committed_rows: int) -> None:
        self.path = path
        self._f = open(path, "ab", buffering=0)  # noqa: SIM115 - held open for the run
        size = self._f.seek(0, os.SEEK_END)
        if size > committed_rows * _SEQ:
            self._f.truncate(committed_rows * _SEQ)
            os.fsync(self._f.fileno())
        self.rows = self._f.seek(0, os.SEEK_END) // _SEQ
        self.usable = self.rows == committed_rows
        self._buf = array("q")

    def write(self, seqs: Sequence[int]) -> None:
        """Buffer the sequence numbers of rows written to the results, in their order."""
        self._buf.extend(seqs)

    def commit(self) -> None:
        """Write the buffer and fsync (before the run state records the commit).

        Raises:
            OSError: the write or the fsync failed (the file is cut back).
        """
        if not self._buf:
            return
        try:
            write_all(self._f.fileno(), self._buf.tobytes())
        except OSError:
            self.rollback(self.rows)
            raise
        self.rows += len(self._buf)
        self._buf = array("q")

    def rollback(self, rows: int) -> None:
        """Cut back to `rows` numbers (best effort: else the next open does)."""
        self._buf = array("q")
        try:
            os.ftruncate(self._f.fileno(), rows * _SEQ)
        except OSError:
            return
        self.rows = min(self.rows, rows)

    def close(self) -> None:
        """Close the file; buffered numbers are dropped."""
        self._buf = array("q")
        self._f.close()


def error_seq(row: Any) -> int:
    """The input row an errors-file row stands for (`row`, or `batchrun.row`).

    Raises:
        ValueError: the row names none.
    """
    if isinstance(row, dict):
        seq = row.get("row")
        if not isinstance(seq, int):
            inner = row.get("batchrun")
            seq = inner.get("row") if isinstance(inner, dict) else None
        if isinstance(seq, int) and not isinstance(seq, bool):
            return seq
    raise ValueError("an errors-file row without its input row number")


# -- reading runs ------------------------------------------------------------------------------
def _lines(fd: int, start: int, count: int, chunk: int, end: int) -> Iterator[bytes]:
    """`count` lines of a file from byte `start`, read `chunk` bytes at a time, never past
    byte `end` (the run's end: a short run then holds only its own bytes, not a whole chunk)."""
    pos = start
    rest = b""
    left = count
    while left:
        data = os.pread(fd, max(1, min(chunk, end - pos)), pos)
        if not data:
            raise OSError(f"the output ends early (at byte {pos}, {left} line(s) missing)")
        pos += len(data)
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines[:left]:
            yield line + b"\n"
        left -= min(left, len(lines))


def _drop_pages(mapped: mmap.mmap) -> None:
    """Let the kernel drop the mapped side file's pages from the process (they are read again
    from the page cache when touched): a scan of it then costs no resident memory."""
    if hasattr(mmap, "MADV_DONTNEED") and len(mapped):
        mapped.madvise(mmap.MADV_DONTNEED)


_DROP_EVERY = 64  # windows merged between two `_drop_pages`


def _run_starts(seqs: Iterator[int]) -> list[int]:
    """The index of the first row of each ascending run."""
    starts = [0]
    last = -1
    for i, seq in enumerate(seqs):
        if seq < last:
            starts.append(i)
        last = seq
    return starts


def _line_offsets(fd: int, rows: list[int], size: int) -> list[int]:
    """The byte offset of each line number in `rows` (ascending), by counting newlines."""
    offsets: list[int] = []
    want = iter(rows)
    target = next(want, None)
    line = 0
    pos = 0
    while target is not None and pos <= size:
        if target == line:
            offsets.append(pos)
            target = next(want, None)
            continue
        data = os.pread(fd, min(_OUT_CHUNK, size - pos), pos)
        if not data:
            break
        newlines = data.count(b"\n")
        if line + newlines < target:
            line += newlines
            pos += len(data)
            continue
        at = -1
        while line < target:
            at = data.index(b"\n", at + 1)
            line += 1
        pos += at + 1
    if len(offsets) != len(rows):
        raise OSError("the output holds fewer lines than the run state says")
    return offsets


@dataclass(slots=True, frozen=True, kw_only=True)
class Rewritten:
    """A temporary file written by a merge: its size, and how many rows it holds."""

    size: int
    rows: int


class _SeqOut:
    """The merged side file, written as the merge goes (64 Ki numbers at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb")  # noqa: SIM115 - closed by finish / discard
        self._buf = array("q")

    def append(self, seq: int) -> None:
        buf = self._buf
        buf.append(seq)
        if len(buf) >= 65536:
            self._f.write(buf.tobytes())
            self._buf = array("q")

    def write(self, data: bytes) -> None:
        """Append numbers already packed (int64, native order)."""
        self._f.write(self._buf.tobytes() + data)
        self._buf = array("q")

    def finish(self) -> int:
        """Write the rest, fsync, close; the file's size."""
        self._f.write(self._buf.tobytes())
        self._f.flush()
        os.fsync(self._f.fileno())
        size = self._f.tell()
        self._f.close()
        return size

    def discard(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def merge_jsonl_results(
    src: Path, seqlog: Path, *, rows: int, size: int, tmp: Path, seqs_tmp: Path
) -> tuple[Rewritten, Rewritten]:
    """Merge the first `rows` lines (`size` bytes) of a JSONL results file into input order.

    Returns:
        the temporary results file and the temporary side file, both fsynced.

    Raises:
        OSError: a file cannot be read or written (the temporary files are gone).
    """
    with (
        open(seqlog, "rb") as s,
        open(src, "rb") as r,
        mmap.mmap(s.fileno(), rows * _SEQ, access=mmap.ACCESS_READ) as mapped,
        memoryview(mapped) as view,
        view.cast("q") as seqs,
    ):
        rfd = r.fileno()
        starts = _run_starts(iter(seqs))
        _drop_pages(mapped)
        bounds = [*starts, rows]
        offsets = _line_offsets(rfd, starts, size)
        k = max(1, len(starts))
        line_chunk = max(4096, _BUFFER_BUDGET // k)
        ends = [*offsets[1:], size]
        lines = [
            _lines(rfd, offsets[i], bounds[i + 1] - bounds[i], line_chunk, ends[i])
            for i in range(len(starts))
        ]
        at = {i: bounds[i] for i in range(len(starts))}  # the next row of each unfinished run
        order = _SeqOut(seqs_tmp)

        def write(f: BinaryIO) -> None:
            # a window of input rows at a time: each run's rows in it are a contiguous slice
            # (bisection in the mapped side file), sorted together in C
            for n in itertools.count(1):
                if not at:
                    break
                if n % _DROP_EVERY == 0:
                    _drop_pages(mapped)
                low = min(seqs[j] for j in at.values())
                high = low + _ROW_GROUP
                window: list[bytes] = []
                keys = array("q")
                for i, j in list(at.items()):
                    end = bisect.bisect_left(seqs, high, j, bounds[i + 1])
                    if end > j:
                        window.extend(itertools.islice(lines[i], end - j))
                        keys.frombytes(seqs[j:end].tobytes())
                        if end == bounds[i + 1]:
                            del at[i]
                        else:
                            at[i] = end
                perm = sorted(range(len(keys)), key=keys.__getitem__)
                f.write(b"".join(map(window.__getitem__, perm)))
                order.write(array("q", map(keys.__getitem__, perm)).tobytes())

        try:
            written = write_temp(tmp, write, tmp=tmp)
            if written != size:
                tmp.unlink(missing_ok=True)
                raise OSError(f"{src}: the rewrite came to {written} bytes, not {size}")
            seqs_size = order.finish()
        except BaseException:
            tmp.unlink(missing_ok=True)
            order.discard()
            raise
    return Rewritten(size=written, rows=rows), Rewritten(size=seqs_size, rows=rows)


def merge_errors(src: Path, *, size: int, tmp: Path) -> Rewritten:
    """Merge the first `size` bytes of an errors file into input order (by each row's `row`).

    Raises:
        OSError: it cannot be read or written.
        ValueError: a row names no input row.
    """
    with open(src, "rb") as r:
        fd = r.fileno()
        starts: list[int] = []  # byte offsets
        counts: list[int] = []
        last = -1
        pos = 0
        for line in _lines(fd, 0, _count_lines(fd, size), _OUT_CHUNK, size):
            seq = error_seq(orjson.loads(line))
            if not starts or seq < last:
                starts.append(pos)
                counts.append(0)
            counts[-1] += 1
            last = seq
            pos += len(line)
        k = max(1, len(starts))
        chunk = max(4096, _BUFFER_BUDGET // k)
        ends = [*starts[1:], pos]

        def run(i: int) -> Iterator[tuple[int, bytes]]:
            for line in _lines(fd, starts[i], counts[i], chunk, ends[i]):
                yield error_seq(orjson.loads(line)), line

        def write(f: BinaryIO) -> None:
            out: list[bytes] = []
            held = 0
            for _, line in heapq.merge(*(run(i) for i in range(len(starts)))):
                out.append(line)
                held += len(line)
                if held >= _OUT_CHUNK:
                    f.write(b"".join(out))
                    out.clear()
                    held = 0
            f.write(b"".join(out))

        written = write_temp(tmp, write, tmp=tmp)
    return Rewritten(size=written, rows=sum(counts))


def _count_lines(fd: int, size: int) -> int:
    count = 0
    pos = 0
    while pos < size:
        data = os.pread(fd, min(_OUT_CHUNK, size - pos), pos)
        if not data:
            break
        count += data.count(b"\n")
        pos += len(data)
    return count


# -- Parquet -----------------------------------------------------------------------------------
_SPILL_ROWS = 64  # rows per batch of the spill file: what one run's cursor holds


class _SpillRun:
    """The rows of one run, read from the spill file one small batch at a time."""

    def __init__(self, spill: Any, starts: array[int], start: int) -> None:
        self._spill = spill
        self._starts = starts
        self._i = bisect.bisect_right(starts, start) - 1
        self._batch: Any = None
        self._at = start - starts[self._i]

    def take(self, n: int) -> list[Any]:
        """The next `n` rows, as record batch slices."""
        out = []
        while n:
            if self._batch is None:
                self._batch = self._spill.get_batch(self._i)
            m = min(n, self._batch.num_rows - self._at)
            out.append(self._batch.slice(self._at, m))
            self._at += m
            n -= m
            if self._at >= self._batch.num_rows:
                self._batch, self._at, self._i = None, 0, self._i + 1
        return out


def _spill(parts: Sequence[Path], schema: Any, path: Path) -> array[int]:
    """Copy the parts, in order and cast to `schema`, into an Arrow IPC file of small batches
    (readable one batch at a time); the first row of each batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    starts = array("q")
    row = 0
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as w:
        for p in parts:
            with pq.ParquetFile(p) as part:
                for batch in part.iter_batches(batch_size=4096, use_threads=False):
                    table = _conform(pa.Table.from_batches([batch]), schema)
                    for small in table.to_batches(max_chunksize=_SPILL_ROWS):
                        starts.append(row)
                        w.write_batch(small)
                        row += small.num_rows
    return starts


def merge_parquet_results(
    parts: Sequence[Path], seqlog: Path, *, rows: int, part: Path, seqs_tmp: Path
) -> tuple[Rewritten, Rewritten]:
    """Merge the live parts (in order, `rows` rows) into one new part `part` in input order.

    The part is written atomically under its own name (a number the run state does not list
    yet, so an open before the state lists it deletes it).

    Raises:
        OSError: a file cannot be read or written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if sum(pq.read_metadata(p).num_rows for p in parts) != rows:
        raise OSError(f"{part.parent}: the parts hold other than the {rows} rows committed")
    try:
        schema = pa.unify_schemas(
            [pq.read_schema(p) for p in parts], promote_options="permissive"
        ).with_metadata({_MERGED_KEY: b"1"})
    except (pa.ArrowException, ValueError) as e:
        raise OSError(f"{part.parent}: the parts' columns cannot be unified: {e}") from e
    try:
        return _merge_parquet(parts, seqlog, rows=rows, part=part, seqs_tmp=seqs_tmp, schema=schema)
    except (pa.ArrowException, ValueError) as e:  # pyarrow's IOError is an OSError too
        if isinstance(e, OSError):
            raise
        raise OSError(f"{part}: cannot merge the parts: {e}") from e


def spill_path(seqs_tmp: Path) -> Path:
    """The spill file of a Parquet rewrite whose side file is written to `seqs_tmp`."""
    return seqs_tmp.with_name(seqs_tmp.name + ".spill")


def _merge_parquet(
    parts: Sequence[Path], seqlog: Path, *, rows: int, part: Path, seqs_tmp: Path, schema: Any
) -> tuple[Rewritten, Rewritten]:
    """The merge, a window of input rows at a time: each run's rows in the window are a
    contiguous slice (found by bisection in the side file, mapped), their union is sorted by
    Arrow and written as one row group. No Python work per row."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from batchrun.io.writers import write_atomic

    spill_file = spill_path(seqs_tmp)
    with open(seqlog, "rb") as s, contextlib.ExitStack() as stack:
        stack.callback(spill_file.unlink, missing_ok=True)
        spill_starts = _spill(parts, schema, spill_file)
        spill = stack.enter_context(pa.OSFile(str(spill_file)))
        reader = pa.ipc.open_file(spill)
        mapped = stack.enter_context(mmap.mmap(s.fileno(), rows * _SEQ, access=mmap.ACCESS_READ))
        view = memoryview(mapped)
        stack.callback(view.release)
        seqs = view.cast("q")
        stack.callback(seqs.release)
        starts = _run_starts(iter(seqs)) if rows else []
        _drop_pages(mapped)
        bounds = [*starts, rows]
        sources = [_SpillRun(reader, spill_starts, bounds[i]) for i in range(len(starts))]
        at = {i: bounds[i] for i in range(len(starts))}  # the next row of each unfinished run
        order = _SeqOut(seqs_tmp)

        def write(f: BinaryIO) -> None:
            with pq.ParquetWriter(f, schema, compression="zstd") as out:
                for n in itertools.count(1):
                    if not at:
                        break
                    if n % _DROP_EVERY == 0:
                        _drop_pages(mapped)
                    low = min(seqs[j] for j in at.values())
                    high = low + _ROW_GROUP
                    batches: list[Any] = []
                    window: list[bytes] = []
                    for i, j in list(at.items()):
                        end = bisect.bisect_left(seqs, high, j, bounds[i + 1])
                        if end > j:
                            batches.extend(sources[i].take(end - j))
                            window.append(seqs[j:end].tobytes())
                            if end == bounds[i + 1]:
                                del at[i]
                            else:
                                at[i] = end
                    data = b"".join(window)
                    keys = pa.Array.from_buffers(
                        pa.int64(), len(data) // _SEQ, [None, pa.py_buffer(data)]
                    )
                    perm = pc.sort_indices(keys)
                    out.write_table(pa.Table.from_batches(batches, schema=schema).take(perm))
                    packed = keys.take(perm).buffers()[1]
                    order.write(packed.to_pybytes()[: len(data)])

        try:
            size = write_atomic(part, write)
            seqs_size = order.finish()
        except BaseException:
            part.unlink(missing_ok=True)
            order.discard()
            raise
    return Rewritten(size=size, rows=rows), Rewritten(size=seqs_size, rows=rows)
