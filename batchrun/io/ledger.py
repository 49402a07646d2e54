"""The ledger: which rows are committed, and the commit that makes outputs and state agree.

Rows are read in input order and finish out of order. The ledger keeps, in memory, only the
rows read but not yet passed by the low watermark (bounded by the runner's dispatch window) and
the rows completed since the last commit. A commit:

1. flushes and fsyncs the results and the errors file (or writes and renames a Parquet part);
2. advances the watermark past every committed row;
3. records offsets, watermark and the committed rows above it in one SQLite transaction.

Opening a ledger locks the run state, checks the fingerprint (the job fields that change
results), checks that the committed part of the input is unchanged on content
(`batchrun.io.coverage`; appended rows, new files after the committed ones and a raised
`limit` extend the run), finishes an interrupted `--retry-errors`, and cuts the outputs back to
the last commit. With `restart`, it only takes the lock and measures what it will discard;
`begin` discards it, still under that lock, once the caller knows the run can start (the
endpoint is ready). Each commit also advances the input's covers (what the next open checks)
in its own transaction.

A commit that cannot be written (disk full, I/O error at any step) is rolled back whole: the
state stays at the last good commit, the outputs are cut back to it, and `OutputWriteError`
names the file; the ledger then refuses further commits.

`--retry-errors` runs in its own mode: failures go to a side file (`<errors>.retry`), successes
to the results, and the settled rows to the state. `finish_retry` rewrites the errors file
without the settled rows plus the new failures, atomically (temp file, fsync, rename), in a
two-step state change that a crash at any point can complete on the next open.

With `[output] order = "input"`, each commit's rows are written sorted by input row, the
results' row numbers go to a side file (`batchrun.io.reorder.SeqLog`), and `reorder` (called
when a run ends with nothing pending) merges the outputs into input order: temporary files
first, then the state records their sizes, then they are renamed in, then the state marks the
outputs ordered. A crash before the second step leaves strays the next open deletes (the
outputs are as they were); after it, the next open finishes the renames.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import signal
import sqlite3
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import OutputWriteError, RunStateError
from batchrun.io.coverage import Coverage
from batchrun.io.errors_file import own_fields
from batchrun.io.readers import InputReader, Position, Row
from batchrun.io.reorder import (
    SeqLog,
    merge_errors,
    merge_jsonl_results,
    merge_parquet_results,
    spill_path,
)
from batchrun.io.state import (
    Committed,
    CoverUpdate,
    FileCover,
    RunState,
    clear,
    describe_changes,
    fingerprint_files,
    lock,
    unlock,
)
from batchrun.io.writers import (
    JsonlWriter,
    ParquetWriter,
    ResultWriter,
    move_temp,
    temp_path,
    write_temp,
)
from batchrun.job import Job

__all__ = ["Ledger", "job_fingerprint"]

log = logging.getLogger(__name__)

_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""Errors of a disk that cannot take more (exit 7), not of a wrong output location (exit 2)."""

_NOTHING = Committed()

PARQUET_COMPACT_AFTER = 32
"""Parquet commits as often as JSONL (a kill re-sends at most one commit's rows), one small part
each; this many small parts are merged into one of up to PARQUET_COMPACT_AFTER × commit_rows
rows (a merge of smaller, timed commits is merged again until it holds half that)."""


def job_fingerprint(job: Job, reader: InputReader) -> dict[str, Any]:
    """The run fingerprint: the input path and the job fields that change results.

    The input files are checked on content instead (`batchrun.io.coverage`), and `limit` is
    left out: a raised or removed limit extends the run, a lowered one is checked against what
    is committed. `reader` is unused; it stays for callers.
    """
    fields = job.fingerprint_fields()
    fields.pop("limit", None)
    return {"input": job.input.path, "job": fields, "output_format": job.output.output_format}


def _seq_of(entry: tuple[int, Position]) -> int:
    return entry[0]


def _first(entry: tuple[int, dict[str, Any]]) -> int:
    return entry[0]


class Ledger:
    """Committed rows, output writers and the run state of one output.

    Args:
        job: the job (its `[output]` says where results, errors and state live).
        reader: the job's input (its files are fingerprinted).
        restart: discard the output, the errors file and the run state in `begin`.

    Raises:
        RunLockedError: another live run holds this output.
        RunStateError: the state was made for another input or job, or an output exists
            without a run state.
        OutputWriteError: the run state cannot be written (disk full, I/O error).
    """

    def __init__(self, job: Job, reader: InputReader, *, restart: bool = False) -> None:
        out = job.output
        self.output = Path(out.path)
        self.errors_path = Path(out.errors_path)
        self.retry_path = Path(out.errors_path + ".retry")
        self.state_dir = Path(out.state_dir)
        self.format = out.output_format
        if self.format == "jsonl" and self.output.is_dir():
            raise RunStateError(f"{out.path}: JSONL output must be a file, found a directory")
        self.commit_rows = out.commit_rows
        self.commit_seconds = out.commit_seconds
        self.order = out.order
        self._seqlog: SeqLog | None = None
        self._held: list[tuple[int, dict[str, Any]]] = []
        self._held_errors: list[tuple[int, dict[str, Any]]] = []
        """With `order = "input"`: rows held until the commit, which writes them sorted."""
        self._fingerprint = job_fingerprint(job, reader)
        self._reader = reader
        self._coverage: Coverage | None = None
        self._top = -1
        """The highest committed row (-1: none)."""
        self.discarded: str | None = None
        """What `--restart` discarded (set by `begin`)."""
        self.failed: OutputWriteError | None = None
        """The write failure that stopped this ledger's commits, if any."""
        self.run_results = 0
        self.run_errors = 0
        """Rows committed by this ledger to the results / the errors (or retry) file."""
        self._retry: JsonlWriter | None = None
        self._retry_settled: list[tuple[int, bool]] = []
        self._tracked: deque[tuple[int, Position]] = deque()
        self._completed: list[int] = []
        self._last_commit = time.monotonic()
        self._restart_lock: int | None = None
        self._to_discard: str | None = None
        self._old_counts = (0, 0)
        if restart:
            self.committed_at_start = 0
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                self._restart_lock = lock(self.state_dir, out.path)
            except OSError as e:
                failure = self._open_failure(e)
                if failure is None:
                    raise
                raise failure from e
            try:
                self._to_discard = self._measure_discard()
            except BaseException:
                self._release_restart_lock()
                raise
        else:
            self._refuse_orphan_output()
            self._open(None)

    def _open(self, lock_fd: int | None) -> None:
        """Open the state and the writers; a full disk or an I/O error is `OutputWriteError`."""
        try:
            self._open_state(lock_fd)
        except OSError as e:
            failure = self._open_failure(e)
            if failure is None:
                raise
            raise failure from e

    def _open_failure(self, e: OSError) -> OutputWriteError | None:
        """`e` while opening as exit 7 if it is a full disk or an I/O error, else None."""
        if e.errno not in _WRITE_ERRNOS:
            return None
        path = e.filename or self.output
        return OutputWriteError(
            f"{path}: cannot open the output for writing: [Errno {e.errno}] {e.strerror}; "
            "free space and run again",
            path=str(path),
        )

    def _open_state(self, lock_fd: int | None) -> None:
        self.state = RunState.open(
            self.state_dir, fingerprint=self._fingerprint, output=str(self.output), lock_fd=lock_fd
        )
        try:
            self._check_input()
            self._recover()
            c = self.state.committed
            self.results: ResultWriter = (
                ParquetWriter(
                    self.output,
                    committed_parts=c.parts,
                    live_parts=c.live_parts,
                    compact_after=PARQUET_COMPACT_AFTER,
                    merge_rows=PARQUET_COMPACT_AFTER * self.commit_rows // 2,
                )
                if self.format == "parquet"
                else JsonlWriter(self.output, committed_offset=c.results_offset)
            )
            self.errors = JsonlWriter(self.errors_path, committed_offset=c.errors_offset)
            if self.order == "input":
                self._seqlog = SeqLog(self._seqlog_path, committed_rows=c.results_count)
        except BaseException:
            self.state.close()
            raise
        self.committed_at_start = c.results_count + c.errors_count

    def begin(self) -> None:
        """Start the run: for `--restart`, discard the old outputs and run state now.

        Call it once the run can really start (the endpoint is ready): a run that fails
        before that discards nothing. The lock taken when the ledger opened is held
        throughout, so no other run can start on the output in between. Without `restart`
        this does nothing.

        Raises:
            OutputWriteError: the old outputs cannot be deleted, or the new state written.
        """
        fd = self._restart_lock
        if fd is None:
            return
        self._restart_lock = None
        try:
            if self._to_discard:
                log.warning("%s", self._to_discard)
            clear(self.state_dir)
            if self.output.is_dir():
                shutil.rmtree(self.output)
            else:
                self.output.unlink(missing_ok=True)
            for p in (self.errors_path, self.retry_path):
                p.unlink(missing_ok=True)
        except OSError as e:
            unlock(fd)
            raise OutputWriteError(
                f"{self.output}: --restart cannot discard the old output: {e}",
                path=str(self.output),
            ) from e
        except BaseException:
            unlock(fd)
            raise
        self.discarded = self._to_discard
        self._open(fd)

    # -- what is done ------------------------------------------------------------------------
    @property
    def committed(self) -> Committed:
        """The last good commit (before `begin` of a `--restart`: nothing)."""
        if self._restart_lock is not None:
            return _NOTHING
        return self.state.committed

    @property
    def watermark(self) -> int:
        """Every row below it is committed."""
        return self.committed.watermark

    @property
    def done_above(self) -> frozenset[int]:
        """The committed rows at or above the watermark."""
        return self.committed.done_above

    @property
    def anchor(self) -> tuple[int, Position | None]:
        """(seq, position) a reader can start from; rows below the watermark are then skipped."""
        c = self.committed
        pos = c.anchor_pos
        covered = self._coverage.count if self._coverage is not None else 0
        if pos is not None and pos[0] >= covered:
            # No committed row in that file: files after the covered ones may have come or
            # gone since, so start at the first file after them (the watermark's row).
            pos = (covered, 0, 0, 1) if covered < len(self._reader.files) else pos
        return c.anchor_seq, pos

    @property
    def results_count(self) -> int:
        """Committed result rows (before `begin` of a `--restart`: those it would discard)."""
        if self._restart_lock is not None:
            return self._old_counts[0]
        return self.state.committed.results_count

    @property
    def errors_count(self) -> int:
        """Committed rows in the errors file."""
        if self._restart_lock is not None:
            return self._old_counts[1]
        return self.state.committed.errors_count

    def is_done(self, seq: int) -> bool:
        """Whether row `seq` is committed (in results or errors)."""
        return self.committed.is_done(seq)

    def first_seqs(self, rows: Sequence[tuple[Any, int]]) -> list[int | None]:
        """For each (id value, seq), the earlier row with the same id if it is a duplicate
        (on-disk index), else None.

        Raises:
            OutputWriteError: the index cannot be written.
        """
        try:
            return self.state.first_seqs(rows)
        except sqlite3.Error as e:
            raise self._fail("cannot write the id index", self._db_path, e) from e

    # -- completing rows ---------------------------------------------------------------------
    def track(self, seq: int, pos: Position) -> int:
        """Note a row read from the input that will complete later (call in seq order); the
        window after it (see `window`)."""
        tracked = self._tracked
        tracked.append((seq, pos))
        return len(tracked)

    def track_rows(self, rows: Iterable[Row]) -> int:
        """`track` for rows read in seq order, at once (the runner tracks a chunk at a time)."""
        tracked = self._tracked
        tracked.extend([(row.seq, row.pos) for row in rows])
        return len(tracked)

    @property
    def window(self) -> int:
        """Rows read but not yet passed by the watermark (what the dispatch window bounds)."""
        return len(self._tracked)

    def add_result(self, seq: int, row: dict[str, Any]) -> bool:
        """Buffer a result row for `seq`; whether enough rows gathered for a commit (`due`
        without its clock: the caller's timer commits by time)."""
        if self._seqlog is not None:
            self._held.append((seq, row))
        else:
            self.results.write(row)
        if self._retry is None:
            completed = self._completed
            completed.append(seq)
            return len(completed) >= self.commit_rows
        self._retry_settled.append((seq, True))
        return len(self._retry_settled) >= self.commit_rows

    def add_error(self, seq: int, row: dict[str, Any]) -> None:
        """Buffer an errors-file row for `seq`."""
        if self._seqlog is not None:
            self._held_errors.append((seq, row))
        elif self._retry is not None:
            self._retry.write(row)
        else:
            self.errors.write(row)
        self._complete(seq, False)

    def _complete(self, seq: int, ok: bool) -> None:
        if self._retry is not None:
            self._retry_settled.append((seq, ok))
        else:
            self._completed.append(seq)

    def due(self) -> bool:
        """Whether enough rows or time have gathered for a commit."""
        pending = len(self._completed) + len(self._retry_settled)
        if not pending:
            return False
        return (
            pending >= self.commit_rows
            or time.monotonic() - self._last_commit >= self.commit_seconds
        )

    @property
    def pending(self) -> int:
        """Completed rows not yet committed."""
        return len(self._completed) + len(self._retry_settled)

    def commit(self) -> bool:
        """Make every completed row durable and advance the watermark.

        The outputs are written and fsynced first, then the state records them in one
        transaction; the ledger's own bookkeeping moves only after that.

        Returns:
            whether the watermark moved.

        Raises:
            OutputWriteError: an output or the state could not be written; the commit was
                rolled back whole and this ledger commits nothing more.
        """
        self._last_commit = time.monotonic()
        if self.failed is not None:
            raise self.failed
        if not self._completed and not self._retry_settled:
            return False
        if self._seqlog is not None:
            self._write_held(self._seqlog)
        n_results = self.results.pending
        n_errors = self.errors.pending
        n_retry = self._retry.pending if self._retry is not None else 0
        c = self.state.committed
        offsets: dict[str, Any] = {}
        results = self.results
        failing = (self.output, "cannot write results")
        try:
            if isinstance(results, ParquetWriter):
                offsets["parts"] = results.commit()
                offsets["live_parts"] = tuple(results.live)
            else:
                offsets["results_offset"] = results.commit()
            if self._seqlog is not None:
                failing = (self._seqlog_path, "cannot write the order side file")
                self._seqlog.commit()
            failing = (self.errors_path, "cannot write the errors file")
            offsets["errors_offset"] = self.errors.commit()
            if self._retry is not None:
                failing = (self.retry_path, "cannot write the --retry-errors file")
                offsets["retry_offset"] = self._retry.commit()
        except OSError as e:
            raise self._fail(failing[1], failing[0], e) from e
        done = c.done_above.union(self._completed)
        tracked = self._tracked
        passed = 0
        anchor_pos: Position | None
        for seq, _ in tracked:
            if seq not in done:
                break
            passed += 1
        if passed < len(tracked):
            anchor_seq, anchor_pos = tracked[passed]
            watermark = anchor_seq
        elif passed:
            anchor_seq, anchor_pos = tracked[passed - 1]
            watermark = anchor_seq + 1
        else:
            watermark, anchor_seq, anchor_pos = c.watermark, c.anchor_seq, c.anchor_pos
        new = dataclasses.replace(
            c,
            watermark=watermark,
            anchor_seq=anchor_seq,
            anchor_pos=anchor_pos,
            done_above=frozenset(s for s in done if s >= watermark),
            results_count=c.results_count + n_results,
            errors_count=c.errors_count + n_errors,
            swap_size=None,
            ordered=c.ordered and not (n_results or n_errors or n_retry),
            **offsets,
        )
        top = max(self._completed) if self._completed else -1
        covers = self._advance_covers(top) if top > self._top else []
        try:
            self.state.commit(new, retry_settled=self._retry_settled, covers=covers)
        except sqlite3.Error as e:
            raise self._fail("cannot record the commit in the run state", self._db_path, e) from e
        if top > self._top:
            self._top = top
            if self._coverage is not None:
                self._coverage.apply(covers)
        for _ in range(passed):
            tracked.popleft()
        self._completed = []
        self._retry_settled = []
        self.run_results += n_results
        self.run_errors += n_errors + n_retry
        if isinstance(results, ParquetWriter):
            self._compact(results)
        return watermark != c.watermark

    def _advance_covers(self, top: int) -> list[CoverUpdate]:
        """The input covers once row `top` (tracked, the highest completed) is committed."""
        coverage = self._coverage
        tracked = self._tracked
        if coverage is None:
            return []
        i = bisect_left(tracked, top, key=_seq_of)
        if i >= len(tracked) or tracked[i][0] != top:
            return []
        after = tracked[i + 1][1] if i + 1 < len(tracked) else None
        return coverage.advance(tracked[i][1], after)

    def _compact(self, results: ParquetWriter) -> None:
        """Merge small Parquet parts: new part, then the state lists it, then old ones go."""
        try:
            compaction = results.compact_begin()
        except OSError as e:
            raise self._fail("cannot merge part files", self.output, e) from e
        if compaction is None:
            return
        new = dataclasses.replace(
            self.state.committed, parts=compaction.number, live_parts=tuple(results.live)
        )
        try:
            self.state.commit(new)
        except sqlite3.Error as e:
            raise self._fail("cannot record merged parts in the run state", self._db_path, e) from e
        try:
            results.compact_end(compaction)
        except OSError as e:  # only stray files are left: the next open deletes them
            log.warning("%s: merged parts not deleted yet: %s", self.output, e)

    @property
    def _db_path(self) -> Path:
        return RunState.database(self.state_dir)

    def _fail(
        self, what: str, path: Path, error: BaseException, *, rollback: bool = True
    ) -> OutputWriteError:
        """Stop committing, cut the outputs back to the state, and say what failed."""
        failure = OutputWriteError(
            f"{path}: {what}: {error}; the run state is at the last good commit, "
            "free space and run again to resume",
            path=str(path),
        )
        self.failed = failure
        if rollback:
            self._rollback()
        return failure

    def _rollback(self) -> None:
        """Cut the outputs back to what the state (read again) says is committed.

        If the state cannot be read back, the outputs stay as they are: being ahead of the
        state is safe (the next open cuts them back), being behind it would lose rows.
        """
        try:
            c = self.state.reload()
        except sqlite3.Error as e:
            log.warning("%s: cannot read the run state back (%s)", self.state_dir, e)
            return
        results = self.results
        if isinstance(results, ParquetWriter):
            results.rollback(c.parts, c.live_parts)
        elif isinstance(results, JsonlWriter):
            results.rollback(c.results_offset)
        self.errors.rollback(c.errors_offset)
        if self._seqlog is not None:
            self._seqlog.rollback(c.results_count)
        if self._retry is not None and c.retry_offset is not None:
            self._retry.rollback(c.retry_offset)

    # -- [output] order = "input" -------------------------------------------------------------
    @property
    def _seqlog_path(self) -> Path:
        return RunState.order_log(self.state_dir)

    @property
    def _reorder_temps(self) -> tuple[Path, Path, Path]:
        """The rewrite's temporary results (JSONL), errors and side files."""
        return (
            self.output.with_name(self.output.name + ".reorder.tmp"),
            self.errors_path.with_name(self.errors_path.name + ".reorder.tmp"),
            temp_path(self._seqlog_path),
        )

    def _write_held(self, seqlog: SeqLog) -> None:
        """Write the held rows to the outputs sorted by input row; note the results' rows."""
        if self._held:
            self._held.sort(key=_first)
            write = self.results.write
            for _, row in self._held:
                write(row)
            seqlog.write([seq for seq, _ in self._held])
            self._held = []
        if self._held_errors:
            self._held_errors.sort(key=_first)
            write = self._retry.write if self._retry is not None else self.errors.write
            for _, row in self._held_errors:
                write(row)
            self._held_errors = []

    def reorder(self) -> bool:
        """Rewrite the results and the errors file in input order (see the module docstring).

        Call it when the run ends with nothing pending. Does nothing unless `order = "input"`
        and rows were added since the last rewrite.

        Returns:
            whether the outputs were rewritten.

        Raises:
            OutputWriteError: a file or the state cannot be written; the outputs stay as they
                were (in completion order), and the next run rewrites them.
        """
        seqlog = self._seqlog
        c = self.state.committed
        if seqlog is None or self.failed is not None or c.ordered:
            return False
        if self.pending:
            raise RunStateError("internal: commit before rewriting in input order")
        if not seqlog.usable:
            log.warning(
                '%s: not rewritten in input order: rows were committed before order = "input" '
                "was set; run with --restart to start over in input order",
                self.output,
            )
            return False
        results_tmp, errors_tmp, seqs_tmp = self._reorder_temps
        new = dataclasses.replace(c, reorder_sizes=None)
        sizes = [-1, -1, -1]
        results = self.results
        path = self.output
        try:
            if c.results_count:
                if isinstance(results, ParquetWriter):
                    number = c.parts + 1
                    parts = [results.part_path(n) for n in results.live]
                    _, seqs = merge_parquet_results(
                        parts,
                        self._seqlog_path,
                        rows=c.results_count,
                        part=results.part_path(number),
                        seqs_tmp=seqs_tmp,
                    )
                    new = dataclasses.replace(new, parts=number, live_parts=(number,))
                else:
                    out, seqs = merge_jsonl_results(
                        self.output,
                        self._seqlog_path,
                        rows=c.results_count,
                        size=c.results_offset,
                        tmp=results_tmp,
                        seqs_tmp=seqs_tmp,
                    )
                    sizes[0] = out.size
                sizes[2] = seqs.size
            if c.errors_count:
                path = self.errors_path
                sizes[1] = merge_errors(self.errors_path, size=c.errors_offset, tmp=errors_tmp).size
        except (OSError, ValueError) as e:
            for tmp in self._reorder_temps:
                tmp.unlink(missing_ok=True)
            if isinstance(results, ParquetWriter):
                results.rollback(c.parts, c.live_parts)
            if isinstance(e, ValueError):
                log.warning("%s: not rewritten in input order: %s", path, e)
                return False
            raise self._fail("cannot rewrite in input order", path, e, rollback=False) from e
        _test_stop("temps")
        try:
            self.state.commit(
                dataclasses.replace(new, reorder_sizes=(sizes[0], sizes[1], sizes[2]))
            )
            _test_stop("state")
            self._finish_reorder()
        except sqlite3.Error as e:
            raise self._fail("cannot record the rewrite", self._db_path, e, rollback=False) from e
        except OSError as e:
            raise self._fail("cannot swap in the rewrite", path, e, rollback=False) from e
        # the writers held the old files (and parts): open them on the rewritten ones
        c = self.state.committed
        if isinstance(results, ParquetWriter):
            results.rollback(c.parts, c.live_parts)
        else:
            results.close()
            self.results = JsonlWriter(self.output, committed_offset=c.results_offset)
        self.errors.close()
        self.errors = JsonlWriter(self.errors_path, committed_offset=c.errors_offset)
        seqlog.close()
        self._seqlog = SeqLog(self._seqlog_path, committed_rows=c.results_count)
        return True

    def _finish_reorder(self) -> None:
        """Rename in the temporary files the state lists, then mark the outputs ordered.

        Raises:
            OSError: a rename failed.
            sqlite3.Error: the state cannot be written.
        """
        c = self.state.committed
        assert c.reorder_sizes is not None
        finals = (self.output, self.errors_path, self._seqlog_path)
        for final, tmp, size in zip(finals, self._reorder_temps, c.reorder_sizes, strict=True):
            if size >= 0 and tmp.exists() and tmp.stat().st_size == size:
                move_temp(final, tmp=tmp)
        self.state.commit(dataclasses.replace(c, reorder_sizes=None, ordered=True))

    # -- --retry-errors ----------------------------------------------------------------------
    def errors_to_retry(self) -> Iterator[dict[str, Any]]:
        """The committed rows of the errors file (parsed), for `--retry-errors`."""
        limit = self.state.committed.errors_offset
        if limit == 0 or not self.errors_path.exists():
            return
        read = 0
        with open(self.errors_path, "rb") as f:
            for line in f:
                read += len(line)
                if read > limit:
                    break
                yield own_fields(orjson.loads(line))

    def start_retry(self) -> None:
        """Switch to retry mode: failures go to the side file until `finish_retry`.

        Raises:
            RunStateError: rows are still uncommitted (commit first).
            OutputWriteError: the side file or the state cannot be written.
        """
        if self.pending:
            raise RunStateError("internal: commit before starting --retry-errors")
        try:
            self._retry = JsonlWriter(self.retry_path, committed_offset=0)
        except OSError as e:
            raise self._fail("cannot write the --retry-errors file", self.retry_path, e) from e
        try:
            self.state.commit(dataclasses.replace(self.state.committed, retry_offset=0))
        except sqlite3.Error as e:
            raise self._fail(
                "cannot record --retry-errors in the run state", self._db_path, e
            ) from e

    def finish_retry(self) -> None:
        """Commit, then rewrite the errors file without the settled rows, plus new failures.

        After a write failure this only closes the side file: the next open settles the
        interrupted `--retry-errors` from what the state recorded.

        Raises:
            OutputWriteError: the commit or the rewrite could not be written.
        """
        if self.failed is not None:
            return
        self.commit()
        if self._retry is not None:
            self._retry.close()
            self._retry = None
        self.errors.close()
        try:
            self._finalize_retry()
        finally:
            self.errors = JsonlWriter(
                self.errors_path, committed_offset=self.state.committed.errors_offset
            )

    def _finalize_retry(self) -> None:
        """Rewrite the errors file (see the module docstring); a failure at any step is
        completed by the next open.

        Raises:
            OutputWriteError: the new errors file or the state cannot be written.
        """
        try:
            self._rewrite_errors()
        except OSError as e:
            raise self._fail(
                "cannot rewrite the errors file", self.errors_path, e, rollback=False
            ) from e
        except sqlite3.Error as e:
            raise self._fail(
                "cannot record the errors-file rewrite in the run state",
                self._db_path,
                e,
                rollback=False,
            ) from e

    def _rewrite_errors(self) -> None:
        c = self.state.committed
        if c.retry_offset is None:
            return
        settled = self.state.retry_settled()
        kept: list[bytes] = []
        count = 0
        read = 0
        if self.errors_path.exists():
            with open(self.errors_path, "rb") as f:
                for line in f:
                    read += len(line)
                    if read > c.errors_offset:
                        break
                    seq = own_fields(orjson.loads(line)).get("row")
                    if seq in settled:
                        continue
                    kept.append(line)
                    count += 1
        if self.retry_path.exists():
            with open(self.retry_path, "rb") as f:
                data = f.read(c.retry_offset)
            for line in data.splitlines(keepends=True):
                kept.append(line)
                count += 1
        size = write_temp(self.errors_path, kept)
        self.state.commit(dataclasses.replace(c, swap_size=size, errors_count=count, ordered=False))
        move_temp(self.errors_path)
        self._finish_swap()

    def _finish_swap(self) -> None:
        c = self.state.committed
        assert c.swap_size is not None
        self.state.clear_retry(
            dataclasses.replace(c, errors_offset=c.swap_size, swap_size=None, retry_offset=None)
        )
        self.retry_path.unlink(missing_ok=True)

    # -- opening -----------------------------------------------------------------------------
    def _check_input(self) -> None:
        """Refuse an input whose committed part changed, or a limit below what is committed;
        note the files found unchanged under a new mtime or size."""
        state = self.state
        c = state.committed
        self._top = max(c.watermark - 1, max(c.done_above, default=-1))
        covers = state.covers()
        if not covers and self._top >= 0:
            covers = self._adopt_legacy()
        coverage = Coverage(self._reader, covers)
        self._coverage = coverage
        output = str(self.output)
        limit = self._reader.limit
        if limit is not None and limit <= self._top:
            raise RunStateError(
                f"{output}: limit {limit} is below the {self._top + 1} rows already committed; "
                "raise or remove --limit, or run with --restart to start over (discards the "
                "results so far)"
            )
        refresh = coverage.check(state.block_hashes, output)
        try:
            state.update_covers(refresh)
        except sqlite3.Error as e:  # only the next resume's shortcut is lost
            log.info("%s: input file times not recorded (%s)", self.state_dir, e)
        coverage.apply(refresh)
        try:
            state.forget_ids_above(self._top)
        except sqlite3.Error as e:
            raise _write_failure(self._db_path, "cannot update the id index", e) from e

    def _adopt_legacy(self) -> list[FileCover]:
        """Covers for a state made before content checks: its fingerprint listed the files
        (size, head and tail hash); if they still match, cover them whole from now on."""
        stored = self.state.stored_fingerprint or {}
        files = stored.get("files")
        if not isinstance(files, list):
            return []
        reader = self._reader
        now = {"files": fingerprint_files(reader.files, reader.relpaths)}
        changes = describe_changes({"files": files}, now)
        if changes:
            raise RunStateError(
                f"{self.output}: the run state was made for a different input: "
                + "; ".join(changes)
                + ". Run again with --restart to start over (discards the results so far)."
            )
        coverage = Coverage(reader, [])
        count = min(len(files), len(reader.files))
        if count == 0:
            return []
        last = reader.files[count - 1]
        updates = coverage.advance((count - 1, 0, last.stat().st_size, 1), None)
        coverage.close()
        try:
            self.state.update_covers(updates)
        except sqlite3.Error as e:
            raise _write_failure(self._db_path, "cannot record the input's hashes", e) from e
        return [u.cover for u in updates]

    def _recover(self) -> None:
        c = self.state.committed
        if c.swap_size is not None:
            tmp = temp_path(self.errors_path)
            if tmp.exists() and tmp.stat().st_size == c.swap_size:
                move_temp(self.errors_path)
            log.info("finishing an interrupted --retry-errors rewrite of %s", self.errors_path)
            try:
                self._finish_swap()
            except sqlite3.Error as e:
                raise self._fail(
                    "cannot record the errors-file rewrite in the run state",
                    self._db_path,
                    e,
                    rollback=False,
                ) from e
        elif c.retry_offset is not None:
            log.info("settling an interrupted --retry-errors in %s", self.errors_path)
            self._finalize_retry()
        temp_path(self.errors_path).unlink(missing_ok=True)
        if self.state.committed.reorder_sizes is not None:
            log.info("finishing an interrupted rewrite of %s in input order", self.output)
            try:
                self._finish_reorder()
            except sqlite3.Error as e:
                raise _write_failure(self._db_path, "cannot record the rewrite", e) from e
        for tmp in (*self._reorder_temps, spill_path(self._reorder_temps[2])):
            tmp.unlink(missing_ok=True)

    def _refuse_orphan_output(self) -> None:
        if RunState.exists(self.state_dir):
            return
        present = [p for p in (self.output, self.errors_path) if _nonempty(p)]
        if present:
            raise RunStateError(
                f"{present[0]} exists but has no run state ({self.state_dir.name}); "
                "run with --restart to overwrite it, or choose another [output] path"
            )

    def _measure_discard(self) -> str | None:
        """What `begin` will discard (the lock is held: it cannot change meanwhile)."""
        what = []
        seen = RunState.peek(self.state_dir)
        if seen is not None:
            c, created_at = seen.committed, seen.created_at
            self._old_counts = (c.results_count, c.errors_count)
            what.append(
                f"{c.results_count} result(s), {c.errors_count} error row(s) and the run "
                f"state from {created_at or 'an earlier run'}"
            )
        for p in (self.output, self.errors_path):
            if _nonempty(p) and not what:
                what.append(str(p))
        if what:
            return f"--restart: discarding {'; '.join(what)} in {self.output}"
        return None

    def _release_restart_lock(self) -> None:
        if self._restart_lock is not None:
            fd, self._restart_lock = self._restart_lock, None
            unlock(fd)

    def close(self) -> None:
        """Close the writers (dropping uncommitted rows) and release the run state.

        A `--restart` ledger closed before `begin` discards nothing.
        """
        if self._restart_lock is not None:
            self._release_restart_lock()
            return
        try:
            self.results.close()
            self.errors.close()
            if self._retry is not None:
                self._retry.close()
            if self._seqlog is not None:
                self._seqlog.close()
        finally:
            if self._coverage is not None:
                self._coverage.close()
            self.state.close()


def _test_stop(point: str) -> None:
    """Die here (SIGKILL) when a test asks for it: how the tests stop a rewrite at a step."""
    if os.environ.get("_BATCHRUN_TEST_KILL_IN_REORDER") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _write_failure(path: Path, what: str, error: BaseException) -> OutputWriteError:
    return OutputWriteError(f"{path}: {what}: {error}; free space and run again", path=str(path))


def _nonempty(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists() and path.stat().st_size > 0
