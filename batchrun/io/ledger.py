"""The ledger: which rows are committed, and the commit that makes outputs and state agree.

Rows are read in input order and finish out of order. The ledger keeps, in memory, only the
rows read but not yet passed by the low watermark (bounded by the runner's dispatch window) and
the rows completed since the last commit. A commit:

1. flushes and fsyncs the results and the errors file (or writes and renames a Parquet part);
2. advances the watermark past every committed row;
3. records offsets, watermark and the committed rows above it in one SQLite transaction.

Opening a ledger locks the run state, checks the fingerprint, finishes an interrupted
`--retry-errors`, and cuts the outputs back to the last commit.

`--retry-errors` runs in its own mode: failures go to a side file (`<errors>.retry`), successes
to the results, and the settled rows to the state. `finish_retry` rewrites the errors file
without the settled rows plus the new failures, atomically (temp file, fsync, rename), in a
two-step state change that a crash at any point can complete on the next open.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import RunLockedError, RunStateError
from batchrun.io.readers import InputReader, Position
from batchrun.io.state import Committed, RunState, discard, fingerprint_files
from batchrun.io.writers import JsonlWriter, ParquetWriter, ResultWriter, fsync_dir
from batchrun.job import Job

__all__ = ["Ledger", "job_fingerprint"]

log = logging.getLogger(__name__)

PARQUET_COMMIT_FACTOR = 5
"""Parquet commits this many times fewer (bigger part files); JSONL commits are cheap appends."""


def job_fingerprint(job: Job, reader: InputReader) -> dict[str, Any]:
    """The run fingerprint: input files (path, size, mtime, head+tail hash) and job fields."""
    return {
        "input": job.input.path,
        "files": fingerprint_files(reader.files, reader.relpaths),
        "job": job.fingerprint_fields(),
        "output_format": job.output.output_format,
    }


class Ledger:
    """Committed rows, output writers and the run state of one output.

    Args:
        job: the job (its `[output]` says where results, errors and state live).
        reader: the job's input (its files are fingerprinted).
        restart: discard the output, the errors file and the run state first.

    Raises:
        RunLockedError: another live run holds this output.
        RunStateError: the state was made for another input or job, or an output exists
            without a run state.
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
        factor = PARQUET_COMMIT_FACTOR if self.format == "parquet" else 1
        self.commit_rows = out.commit_rows * factor
        self.commit_seconds = out.commit_seconds * factor
        if restart:
            self.discarded = self._discard()
        else:
            self.discarded = None
            self._refuse_orphan_output()
        self.state = RunState.open(
            self.state_dir, fingerprint=job_fingerprint(job, reader), output=out.path
        )
        try:
            self._recover()
        except BaseException:
            self.state.close()
            raise
        c = self.state.committed
        self.results: ResultWriter = (
            ParquetWriter(self.output, committed_parts=c.parts, live_parts=c.live_parts)
            if self.format == "parquet"
            else JsonlWriter(self.output, committed_offset=c.results_offset)
        )
        self.errors = JsonlWriter(self.errors_path, committed_offset=c.errors_offset)
        self._retry: JsonlWriter | None = None
        self._retry_settled: list[tuple[int, bool]] = []
        self.watermark = c.watermark
        self._anchor: tuple[int, Position | None] = (c.anchor_seq, c.anchor_pos)
        self.done_above: set[int] = set(c.done_above)
        self._tracked: deque[tuple[int, Position]] = deque()
        self._completed: list[int] = []
        self._last_commit = time.monotonic()
        self.committed_at_start = c.results_count + c.errors_count

    # -- what is done ------------------------------------------------------------------------
    @property
    def anchor(self) -> tuple[int, Position | None]:
        """(seq, position) a reader can start from; rows below the watermark are then skipped."""
        return self._anchor

    @property
    def results_count(self) -> int:
        """Committed result rows."""
        return self.state.committed.results_count

    @property
    def errors_count(self) -> int:
        """Committed rows in the errors file."""
        return self.state.committed.errors_count

    def is_done(self, seq: int) -> bool:
        """Whether row `seq` is committed (in results or errors)."""
        return seq < self.watermark or seq in self.done_above

    def first_seqs(self, rows: Sequence[tuple[Any, int]]) -> list[int | None]:
        """For each (id value, seq), the earlier row with the same id if it is a duplicate
        (on-disk index), else None."""
        return self.state.first_seqs(rows)

    # -- completing rows ---------------------------------------------------------------------
    def track(self, seq: int, pos: Position) -> None:
        """Note a row read from the input that will complete later (call in seq order)."""
        self._tracked.append((seq, pos))

    @property
    def window(self) -> int:
        """Rows read but not yet passed by the watermark (what the dispatch window bounds)."""
        return len(self._tracked)

    def add_result(self, seq: int, row: dict[str, Any]) -> None:
        """Buffer a result row for `seq`."""
        self.results.write(row)
        self._complete(seq, True)

    def add_error(self, seq: int, row: dict[str, Any]) -> None:
        """Buffer an errors-file row for `seq`."""
        if self._retry is not None:
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

        Returns:
            whether the watermark moved.
        """
        self._last_commit = time.monotonic()
        if not self._completed and not self._retry_settled:
            return False
        n_results = self.results.pending
        n_errors = self.errors.pending
        c = self.state.committed
        new = Committed(
            watermark=c.watermark,
            anchor_seq=c.anchor_seq,
            anchor_pos=c.anchor_pos,
            done_above=set(),
            parts=c.parts,
            live_parts=c.live_parts,
            results_offset=c.results_offset,
            errors_offset=c.errors_offset,
            results_count=c.results_count + n_results,
            errors_count=c.errors_count + n_errors,
            retry_offset=c.retry_offset,
            swap_size=None,
        )
        results = self.results
        if isinstance(results, ParquetWriter):
            new.parts = results.commit()
            new.live_parts = results.live
        else:
            new.results_offset = self.results.commit()
        new.errors_offset = self.errors.commit()
        if self._retry is not None:
            new.retry_offset = self._retry.commit()
        moved = False
        done = self.done_above
        completed = self._completed
        done.update(completed)
        tracked = self._tracked
        last: tuple[int, Position] | None = None
        while tracked and tracked[0][0] in done:
            last = tracked.popleft()
            done.discard(last[0])
        if tracked:
            watermark, anchor = tracked[0][0], tracked[0]
        elif last is not None:
            watermark, anchor = last[0] + 1, last
        else:
            watermark, anchor = self.watermark, (c.anchor_seq, c.anchor_pos)  # type: ignore[assignment]
        if watermark != self.watermark:
            moved = True
            self.done_above = done = {s for s in done if s >= watermark}
        new.watermark = watermark
        new.anchor_seq, new.anchor_pos = anchor[0], anchor[1]
        settled = self._retry_settled
        self.state.commit(
            new, new_done=[s for s in completed if s >= watermark], retry_settled=settled
        )
        self.watermark = watermark
        self._anchor = (new.anchor_seq, new.anchor_pos)
        self._completed = []
        self._retry_settled = []
        if isinstance(results, ParquetWriter):
            self._compact(results)
        return moved

    def _compact(self, results: ParquetWriter) -> None:
        """Merge small Parquet parts: new part, then the state lists it, then old ones go."""
        compaction = results.compact_begin()
        if compaction is None:
            return
        c = self.state.committed
        c.parts = compaction.number
        c.live_parts = results.live
        self.state.commit(c)
        results.compact_end(compaction)

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
                yield orjson.loads(line)

    def start_retry(self) -> None:
        """Switch to retry mode: failures go to the side file until `finish_retry`.

        Raises:
            RunStateError: rows are still uncommitted (commit first).
        """
        if self.pending:
            raise RunStateError("internal: commit before starting --retry-errors")
        c = self.state.committed
        self._retry = JsonlWriter(self.retry_path, committed_offset=0)
        c.retry_offset = 0
        self.state.commit(c)

    def finish_retry(self) -> None:
        """Commit, then rewrite the errors file without the settled rows, plus new failures."""
        self.commit()
        if self._retry is not None:
            self._retry.close()
            self._retry = None
        self.errors.close()
        self._finalize_retry()
        self.errors = JsonlWriter(
            self.errors_path, committed_offset=self.state.committed.errors_offset
        )

    def _finalize_retry(self) -> None:
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
                    seq = orjson.loads(line).get("row")
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
        tmp = self.errors_path.with_name(self.errors_path.name + ".tmp")
        size = _write_file(tmp, kept)
        c.swap_size = size
        c.errors_count = count
        self.state.commit(c)
        os.replace(tmp, self.errors_path)
        fsync_dir(self.errors_path.parent)
        self._finish_swap()

    def _finish_swap(self) -> None:
        c = self.state.committed
        assert c.swap_size is not None
        c.errors_offset = c.swap_size
        c.swap_size = None
        c.retry_offset = None
        self.state.clear_retry(c)
        self.retry_path.unlink(missing_ok=True)

    # -- opening -----------------------------------------------------------------------------
    def _recover(self) -> None:
        c = self.state.committed
        if c.swap_size is not None:
            tmp = self.errors_path.with_name(self.errors_path.name + ".tmp")
            if tmp.exists() and tmp.stat().st_size == c.swap_size:
                os.replace(tmp, self.errors_path)
                fsync_dir(self.errors_path.parent)
            log.info("finishing an interrupted --retry-errors rewrite of %s", self.errors_path)
            self._finish_swap()
        elif c.retry_offset is not None:
            log.info("settling an interrupted --retry-errors in %s", self.errors_path)
            self._finalize_retry()
        tmp = self.errors_path.with_name(self.errors_path.name + ".tmp")
        tmp.unlink(missing_ok=True)

    def _refuse_orphan_output(self) -> None:
        if (self.state_dir / "state.sqlite").exists():
            return
        present = [p for p in (self.output, self.errors_path) if _nonempty(p)]
        if present:
            raise RunStateError(
                f"{present[0]} exists but has no run state ({self.state_dir.name}); "
                "run with --restart to overwrite it, or choose another [output] path"
            )

    def _discard(self) -> str | None:
        what = []
        db = self.state_dir / "state.sqlite"
        if db.exists():
            try:
                st = RunState.open(self.state_dir, fingerprint=None, output=str(self.output))
            except RunLockedError:
                raise
            except RunStateError:
                st = None
            if st is not None:
                c = st.committed
                what.append(
                    f"{c.results_count} result(s), {c.errors_count} error row(s) and the run "
                    f"state from {st.created_at or 'an earlier run'}"
                )
                st.close()
        for p in (self.output, self.errors_path):
            if _nonempty(p) and not what:
                what.append(str(p))
        discard(self.state_dir, output=str(self.output))
        if self.output.is_dir():
            shutil.rmtree(self.output)
        else:
            self.output.unlink(missing_ok=True)
        for p in (self.errors_path, self.retry_path):
            p.unlink(missing_ok=True)
        if what:
            message = f"--restart: discarding {'; '.join(what)} in {self.output}"
            log.warning("%s", message)
            return message
        return None

    def close(self) -> None:
        """Close the writers (dropping uncommitted rows) and release the run state."""
        try:
            self.results.close()
            self.errors.close()
            if self._retry is not None:
                self._retry.close()
        finally:
            self.state.close()


def _nonempty(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists() and path.stat().st_size > 0


def _write_file(path: Path, chunks: list[bytes]) -> int:
    with open(path, "wb") as f:
        f.write(b"".join(chunks))
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size
