"""run_job: the input, the ledger, the pool, the target and the progress, put together.

```
open_input ──> rows ──> (skip committed, id index, render) ──> Pool ──> on_outcome ──> Ledger
                                                                 │                  (commit)
open_target(job) ──> url + headers + stop event ─────────────────┘
```

The target (`batchrun.targets.Target`) gives the URL, the headers and a way to say "stop
dispatching"; the runner enters it once the input and the run state were checked and leaves it
(puts the endpoint to rest) however the run ends; when every input row is already committed,
it is never entered (nothing to do costs nothing: no resume, no create, no wake). The bar and
the log lines are `batchrun.progress`.

A `RunControl` stops a run from outside: the CLI's signal handlers call `stop("sigint")`, a
second Ctrl-C `stop("sigint", grace=0)`; budget and lease stops arrive through the target's
event. Dispatch stops, in-flight requests get `[run] grace_period`, what finished is
committed, and the summary carries the exit code. Only the CLI installs signal handlers; a
library caller can cancel the task (what completed is still committed).

Rows are dispatched in input order but finish out of order; the reader never runs more than a
window of rows ahead of the committed watermark, so memory stays bounded by the concurrency and
the commit size, never by the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchrun.adaptive import for_run
from batchrun.codecs import RequestCodec, codec_for
from batchrun.errors import (
    BatchrunError,
    EndpointFailedError,
    EndpointUnusableError,
    JobError,
    OutputWriteError,
    RowInputError,
    RunningLoopError,
    RunStalledError,
)
from batchrun.io.errors_file import NOT_RETRIED, tally_errors
from batchrun.io.ledger import Ledger
from batchrun.io.preflight import check_output_location
from batchrun.io.readers import InputReader, Row, open_input
from batchrun.io.runs import RunEntry, RunIndex
from batchrun.io.state import RunState
from batchrun.job import Job
from batchrun.pool import Outcome, Pool, Request
from batchrun.progress import Counts, Progress
from batchrun.summary import RunSummary, exit_code_for, one_line
from batchrun.targets import StopReason, Target, open_target

__all__ = ["RunControl", "RunSummary", "arun_job", "exit_code_for", "run_job"]

log = logging.getLogger(__name__)


class RunControl:
    """Stops a run from outside: signal handlers, a budget watcher, a caller.

    Call `stop` from the event loop's thread. The first call sets the reason; a later call
    with a shorter `grace` cuts the grace short (a second Ctrl-C).
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason: StopReason | None = None
        self.grace: float | None = None
        self._listeners: list[Callable[[], None]] = []
        self.on_hold: Callable[[float], None] | None = None
        """Called with the seconds of each Retry-After hold the run's pools begin (a shard
        worker tells its driver)."""
        self._pools: list[Pool] = []

    def attach(self, pool: Pool) -> None:
        """The runner's pool, which `hold` reaches and whose holds go to `on_hold`."""
        pool.on_hold = self.on_hold
        self._pools.append(pool)

    def hold(self, seconds: float) -> None:
        """Hold the run's dispatch for `seconds` (another shard's Retry-After)."""
        for pool in self._pools:
            pool.hold(seconds)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` on every later `stop` (the runner shortens the grace with it)."""
        self._listeners.append(listener)

    def stop(self, reason: StopReason | str, *, grace: float | None = None) -> None:
        """Stop dispatching, with `reason` (a `StopReason` or its value: "sigint", ...).

        Args:
            reason: why; decides the exit code.
            grace: seconds in-flight requests get (None: the job's `grace_period`; 0: none).
        """
        if self.reason is None:
            self.reason = StopReason.of(reason)
        if grace is not None and (self.grace is None or grace < self.grace):
            self.grace = grace
        self.event.set()
        for listener in list(self._listeners):
            listener()


def run_job(
    job: Job,
    *,
    restart: bool = False,
    retry_errors: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run a job to the end (or to a stop) and return its summary. See `arun_job`.

    Raises:
        RunningLoopError: called where an event loop is already running (a notebook, an
            async app): `await batchrun.arun_job(job)` there instead.
        BatchrunError: as `arun_job`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop running: the usual case
    else:  # checked before the coroutine exists, so none is left un-awaited
        raise RunningLoopError(
            "run_job() was called inside a running event loop (Jupyter, an async app): "
            "use `await batchrun.arun_job(job)` there instead; nothing was started"
        )
    return asyncio.run(
        arun_job(job, restart=restart, retry_errors=retry_errors, limit=limit, progress=progress)
    )


async def arun_job(
    job: Job,
    *,
    restart: bool = False,
    retry_errors: bool = False,
    limit: int | None = None,
    progress: bool = True,
    control: RunControl | None = None,
    target: Target | None = None,
    reader: InputReader | None = None,
) -> RunSummary:
    """Send every uncommitted row of the job's input once, committing results as they come.

    Args:
        job: the job.
        restart: discard the output, errors and run state, and start over.
        retry_errors: first send the errors file's rows again (not `bad_input` or
            `duplicate_id`), moving each success to the results.
        limit: only the first `limit` rows of the input (the same ones on every resume).
        progress: a tqdm bar on stderr when it is a terminal, else an INFO line every 30 s.
        control: lets the caller stop the run (the CLI's signal handlers use it).
        target: where requests go; default `open_target(job)`. It is entered after the input
            and the run state were checked, and left (put to rest) however the run ends.
        reader: the rows to send; default `open_input(job.input)` (a shard worker passes a
            `batchrun.shards.ShardReader`).

    Returns:
        the summary, for exit codes 0, 3, 4, 130 and 143. When every input row is already
        committed (and `retry_errors` finds nothing to send again), the target is not entered
        at all: no endpoint is resumed or created, the cost is 0, and the exit code is 0 (3
        with rows in the errors file).

    Raises:
        JobError: a bad job, option or input, found before anything is sent (exit 2);
            `RunStateError` for a changed input.
        RunLockedError: another live run holds this output (exit 8).
        EndpointError: the endpoint failed or never became ready (exit 5).
        APIConnectionError: the endpoints API could not be reached (exit 5).
        EndpointUnusableError: requests failed endpoint-wide (a refused token, a wrong URL or
            route, undecodable answers, an outage past `[run] outage_timeout`; exit 5): what
            succeeded is committed, the failed rows stay pending, the target was left
            normally. Its `.summary` is the run's summary (with `pending`).
        RunStalledError: rows were pending with nothing in flight (a bug; exit 1); what
            settled is committed. Its `.summary` is the run's summary.
        EndpointRestError: the endpoint could not be put in its on_exit state (exit 6).
        OutputWriteError: an output or the run state could not be written (disk full, I/O
            error; exit 7): dispatching stopped, the target was exited normally, and the
            state is at the last good commit.
        Every batchrun error raised here carries `.summary`: the run's summary as far as it
        got, with `error` (the one-line message) and `exit_code` set.
    """
    started = _Started()
    try:
        return await _arun(
            job,
            started,
            restart=restart,
            retry_errors=retry_errors,
            limit=limit,
            progress=progress,
            control=control,
            target=target,
            reader=reader,
        )
    except BatchrunError as e:
        started.annotate(e, job)
        raise
    finally:
        if started.run is not None:  # for `batchrun status` / `plan`
            RunState.remember_run(Path(job.output.state_dir), started.run.summary.to_json())


@dataclass(slots=True)
class _Started:
    """How far `arun_job` got: the summary of a run that raises says what is known."""

    target: Target | None = None
    entering: bool = False
    run: _Run | None = None

    def annotate(self, error: BatchrunError, job: Job) -> None:
        """Give `error` its `.summary` (if it has none yet), with `error` and `exit_code`."""
        summary = error.summary
        if summary is None:
            if self.run is not None:
                summary = self.run.summary
            else:  # failed before the run state was opened: what is known
                summary = RunSummary.of_error(
                    error, output=job.output.path, errors_path=job.output.errors_path
                )
            if self.target is not None:
                # after trying to enter, the lifecycle fields say what it did (and cost);
                # before, the target was never touched
                fields = (
                    self.target.summary_fields()
                    if self.entering
                    else self.target.untouched_fields()
                )
                for key, value in fields.items():
                    setattr(summary, key, value)
            error.summary = summary
        if not isinstance(summary, RunSummary):
            return
        summary.error = summary.error or one_line(error)
        summary.exit_code = error.exit_code
        summary.resumable = summary.resumable or error.exit_code in (5, 7)


async def _arun(
    job: Job,
    started: _Started,
    *,
    restart: bool,
    retry_errors: bool,
    limit: int | None,
    progress: bool,
    control: RunControl | None,
    target: Target | None,
    reader: InputReader | None = None,
) -> RunSummary:
    if limit is not None:
        job = dataclasses.replace(job, run=dataclasses.replace(job.run, limit=limit))
        job.validate()  # a caller's limit has the range a job file's has
    control = control or RunControl()
    if reader is None:
        if job.run.workers > 1 or _has_shard_plan(job):
            raise JobError(  # a shard plan owns this output: its shards' states are the truth
                f"{job.output.path}: a sharded run ([run] workers > 1, or a shard plan next to "
                "the output): run it with `batchrun run` or batchrun.shards.driver.arun_sharded"
            )
        reader = open_input(job.input, limit=job.run.limit, source=job.source)
    codec = codec_for(job)
    first = reader.first_fields()
    if first is not None:
        codec.check_first_row(first)
    check_output_location(job)  # before the Ledger creates anything next to the output
    target = target if target is not None else open_target(job, progress=progress)
    started.target = target
    ledger = Ledger(job, reader, restart=restart)
    run = _Run(job, reader, codec, ledger, control, progress)
    noted = RunIndex().note(_run_entry(job))  # under the output's lock: `batchrun status` lists it
    try:
        started.run = run
        if not restart and _nothing_to_do(reader, ledger, retry_errors=retry_errors):
            run.nothing_to_do(target)
            run.reorder()  # finishes a rewrite that a kill interrupted
            return run.summary
        started.entering = True
        if not await _enter(target, control):  # stopped while the endpoint was made ready
            run.summary.stop_reason = control.reason
            run.finish_summary()
        else:
            try:
                if target.stop_event.is_set():  # budget or deadline ran out while getting ready
                    log.warning("stopping (%s) before the first request", target.stop_reason)
                    run.summary.stop_reason = target.stop_reason or StopReason.STOPPED
                    run.finish_summary()
                elif run.begin():  # --restart discards only now, with the endpoint ready
                    await run.execute(target, retry_errors=retry_errors)
                else:
                    run.finish_summary()
            except BaseException as e:
                await target.leave(e)
                raise
            await target.leave(None)
        # A lease stopped while getting ready has put its endpoint to rest too: report it.
        for key, value in target.summary_fields().items():
            setattr(run.summary, key, value)
        run.reorder()
    except BatchrunError:
        run.finish_summary()  # committed totals and pending as of the error (ledger still open)
        raise
    finally:
        RunIndex.forget(noted)  # before the lock goes with the ledger
        run.close()
    if run.write_error is not None:
        raise run.write_error
    if run.pool_error is not None:  # endpoint-wide failure (exit 5) or a stall (exit 1)
        run.pool_error.summary = run.summary
        raise run.pool_error
    if run.summary.stop_reason == StopReason.ENDPOINT_FAILED:
        reason = target.stop_message or "the endpoint failed mid-run"
        raise EndpointFailedError(
            f"{reason}; {run.summary.results_total} result(s) are committed and a rerun resumes"
        )
    return run.summary


def _has_shard_plan(job: Job) -> bool:
    """Whether a shard plan (batchrun.shards) owns the job's output."""
    return Path(job.output.state_dir, "shards.json").exists()


def _run_entry(job: Job) -> RunEntry:
    spec = job.endpoint
    if spec.provider == "url":  # no userinfo or query on disk: they may carry a secret
        parts = urlsplit(spec.url or "")
        netloc = parts.netloc.rpartition("@")[2]
        name = parts._replace(netloc=netloc, query="", fragment="").geturl()
    else:
        name = f"{spec.namespace}/{spec.name}" if spec.namespace else spec.name or ""
    return RunEntry(
        output=str(Path(job.output.path).resolve()),
        job=str(Path(job.source).resolve()) if Path(job.source).is_file() else job.source,
        provider=spec.provider,
        endpoint=name,
    )


async def _enter(target: Target, control: RunControl) -> bool:
    """Enter the target (it may wait a long time for an endpoint), unless a stop comes first;
    whether it was entered."""
    entering = asyncio.ensure_future(target.enter())
    stopped = asyncio.ensure_future(control.event.wait())
    try:
        await asyncio.wait({entering, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        entering.cancel()
        raise
    finally:
        stopped.cancel()
    if entering.done():
        entering.result()
        return True
    log.warning("stopping (%s) before the endpoint was ready", control.reason)
    entering.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await entering
    return False


def _nothing_to_do(reader: InputReader, ledger: Ledger, *, retry_errors: bool) -> bool:
    """Whether every input row (up to the limit) is committed and `retry_errors` has nothing
    to send again: then the run needs no endpoint.

    Reads the input from the ledger's anchor (when every row is committed: the last one) to
    the first row that is not committed, so a finished input costs a row or two, and a fresh
    one its first row; nothing is sent.
    """
    committed = ledger.committed
    seq, pos = ledger.anchor
    for row in reader.rows(start_seq=seq, start=pos):
        if not committed.is_done(row.seq):
            return False
    if retry_errors:
        return not any(
            e.get("status") not in NOT_RETRIED and isinstance(e.get("row"), int)
            for e in ledger.errors_to_retry()
        )
    return True


_Chunk = tuple[list[Row], list[int | None] | None]
"""Rows read, and for each the earlier row holding its id (a duplicate), or None: no duplicate."""


def _describe_rows(key: Any) -> str:
    """A request's rows for a log line: ``row id 'a'`` or ``rows id 'a', 'b' (+3)``."""
    rows: list[Row] = key
    if len(rows) == 1:
        return f"row id {rows[0].id!r}"
    shown = ", ".join(repr(row.id) for row in rows[:3])
    more = f" (+{len(rows) - 3})" if len(rows) > 3 else ""
    return f"rows id {shown}{more}"


class _Run:
    """One run's moving parts; `arun_job` is its only user."""

    def __init__(
        self,
        job: Job,
        reader: InputReader,
        codec: RequestCodec,
        ledger: Ledger,
        control: RunControl,
        progress: bool,
    ) -> None:
        self.job = job
        self.reader = reader
        self.codec = codec
        self.ledger = ledger
        self.control = control
        self.keep = list(job.output.keep_fields)
        self.check_ids = job.input.id_field is not None
        self.reshape = codec.reshapes  # rows written in the codec's own shape (OpenAI batch)
        per_request = for_run(job.run.concurrency, job.run.max_concurrency)[0] * job.run.batch_size
        self.window = max(4 * ledger.commit_rows, 16 * per_request)
        self.moved = asyncio.Event()
        self.stopping = False
        self.start = time.monotonic()
        self.summary = RunSummary(
            output=job.output.path,
            errors_path=job.output.errors_path,
            skipped_done=ledger.committed_at_start,
            discarded=ledger.discarded,
        )
        self.progress = progress
        self.total = reader.count_rows()  # cheap (no row decoded): the bar and input_rows
        self.shown: Progress | None = None
        self._bar_tick: Callable[[int], None] | None = None  # shown.tick, when there is a bar
        self._pools: list[Pool] = []
        self.write_error: OutputWriteError | None = None
        self.pool_error: EndpointUnusableError | RunStalledError | None = None
        self.read_all = False  # every input row was read and settled: nothing is pending
        self._counted: tuple[int | None] | None = None  # see _input_rows

    # -- the run -----------------------------------------------------------------------------
    def nothing_to_do(self, target: Target) -> None:
        """Every row is already committed: the summary of a run that never entered `target`."""
        done = self.ledger.results_count + self.ledger.errors_count
        log.warning("nothing to do: %s row%s already done", f"{done:,}", "" if done == 1 else "s")
        for key, value in target.untouched_fields().items():
            setattr(self.summary, key, value)
        self.read_all = True
        self.finish_summary()

    def begin(self) -> bool:
        """Start the ledger (`--restart` discards now); False if that could not be written."""
        if not self._write(self.ledger.begin):
            return False
        self.summary.discarded = self.ledger.discarded
        self.summary.skipped_done = self.ledger.committed_at_start
        return True

    async def execute(self, target: Target, *, retry_errors: bool) -> None:
        tasks = [
            asyncio.create_task(self._watch_stop(target)),
            asyncio.create_task(self._commit_timer()),
        ]
        self.shown = Progress(
            enabled=self.progress,
            total=self.total,
            initial=self.ledger.committed_at_start,
            counts=self._counts,
            cost_text=target.cost_text,
        )  # the rate (and ETA) from now on: not the wait for the endpoint
        if self.shown.bar is not None:
            self._bar_tick = self.shown.tick
        target.watch_progress(self._settled_and_left)
        try:
            if retry_errors:
                seqs = sorted(
                    int(e["row"])
                    for e in self.ledger.errors_to_retry()
                    if e.get("status") not in NOT_RETRIED and isinstance(e.get("row"), int)
                )
                self.summary.retried_errors = len(seqs)
                self.summary.skipped_done -= len(seqs)  # they are sent again, not skipped
                self.shown.resend(len(seqs))
                if seqs and self._write(self.ledger.start_retry):
                    try:
                        await self._dispatch(target, self._retry_rows(seqs), track=False)
                    finally:
                        self._write(self.ledger.finish_retry)
            if not self.stopping:
                seq, pos = self.ledger.anchor
                chunks = self.reader.chunks(start_seq=seq, start=pos)
                await self._dispatch(target, self._new_rows(chunks), track=True)
            target.mark_idle()  # from the last result on, billed time is idle
            if self.write_error is None:
                self._write(self.ledger.commit)
            # the input was read to its end, and every row read is settled and committed
            self.read_all = (
                not self.stopping
                and self.write_error is None
                and self.summary.stop_reason is None
                and self.ledger.window == 0
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.finish_summary()

    async def _dispatch(self, target: Target, rows: Iterable[_Chunk], *, track: bool) -> None:
        run = self.job.run
        workers, adaptive = for_run(run.concurrency, run.max_concurrency)
        pool = Pool(
            url=target.url,
            codec=self.codec,
            concurrency=workers,
            adaptive=adaptive,
            request_timeout=run.request_timeout,
            max_attempts=run.max_attempts,
            headers=target.headers,
            max_requests_per_minute=run.max_requests_per_minute,
            max_tokens_per_minute=run.max_tokens_per_minute,
            token_bucket=next((p.tokens for p in self._pools if p.tokens is not None), None),
            max_response_bytes=run.max_response_bytes,
            backoff_max=run.backoff_max,
            retry_after_max=run.retry_after_max,
            scale_up_timeout=run.scale_up_timeout,
            breaker_window=run.breaker_window,
            outage_timeout=run.outage_timeout,
            describe=_describe_rows,
        )
        self._pools.append(pool)
        self.control.attach(pool)
        source = self._requests(rows, track=track)
        try:
            if self.stopping:
                return
            await pool.run(source, self._on_outcome, paused=self._window_moved)
            if pool.verdict is not None:
                self._pool_stopped(pool)
        finally:
            self.summary.retries += pool.stats.retries
            source.close()

    def _new_rows(self, chunks: Iterable[list[Row]]) -> Iterable[_Chunk]:
        """The rows of `chunks` (the reader's) not yet committed, each chunk with the earlier
        rows holding its rows' ids (duplicates); see `_Chunk`.

        With `id_field`, each chunk goes through the on-disk id index at once.
        """
        earlier = self.ledger.committed  # what earlier runs committed: read once
        watermark, done = earlier.watermark, earlier.done_above
        for chunk in chunks:
            if self.stopping:
                return
            if chunk[0].seq < watermark or done:  # a resume's first chunks: drop what is done
                chunk = [r for r in chunk if r.seq >= watermark and r.seq not in done]
                if not chunk:
                    continue
            yield self._with_firsts(chunk)

    def _with_firsts(self, rows: list[Row]) -> _Chunk:
        if not self.check_ids:
            return rows, None
        usable = [row for row in rows if row.record is not None]  # bad rows have no id
        try:
            found = self.ledger.first_seqs([(row.id, row.seq) for row in usable])
        except OutputWriteError as e:
            self._write_failed(e)
            return [], None
        if found.count(None) == len(found):  # no duplicate: the usual case
            return rows, None
        firsts = dict(zip((row.seq for row in usable), found, strict=True))
        return rows, [firsts.get(row.seq) for row in rows]

    def _retry_rows(self, seqs: list[int]) -> Iterable[_Chunk]:
        """The input rows at `seqs` (sorted), for `--retry-errors`."""
        if not seqs:
            return
        last = seqs[-1]
        for row in self.reader.rows():
            i = bisect_left(seqs, row.seq)
            if i < len(seqs) and seqs[i] == row.seq:
                yield [row], None
            if row.seq >= last:
                return

    def _requests(
        self, chunks: Iterable[_Chunk], *, track: bool
    ) -> Generator[Request | None, None, None]:
        """Requests for the rows of `chunks`; bad rows and duplicates settle here unsent.

        With `track`, each chunk is noted in the ledger (for the watermark) before its rows are
        sent, and while the window of rows above the watermark is full this yields None: the
        pool's worker then waits (`_window_moved`) before it pulls again. A request's key is
        its list of rows.
        """
        ledger = self.ledger
        codec = self.codec
        render = codec.render
        encode = codec.encode_rendered
        route = codec.route_of
        # one call a row for the usual request; not for a format whose rows pick their route
        single = self.job.run.batch_size == 1 and type(codec).route_of is RequestCodec.route_of
        encode_one = codec.encode_row if single else None
        batch_size = self.job.run.batch_size
        limit = self.window
        batch: list[Row] = []
        items: list[Any] = []
        for chunk, chunk_firsts in chunks:
            start = 0
            while start < len(chunk) and not self.stopping:
                rows, firsts = chunk, chunk_firsts
                if track:
                    room = limit - ledger.window
                    if room <= 0:
                        if batch:
                            yield Request(batch, encode(items), len(batch), route(items))
                            batch, items = [], []
                        while ledger.window >= limit and not self.stopping:
                            yield None
                        continue
                    if start or room < len(chunk):  # the window has room for part of it
                        rows = chunk[start : start + room]
                        firsts = chunk_firsts[start : start + room] if chunk_firsts else None
                    ledger.track_rows(rows)
                start += len(rows)
                for row, first in zip(
                    rows, firsts if firsts is not None else repeat(None), strict=False
                ):
                    if self.stopping:
                        break
                    record = row.record
                    if record is None:
                        self._bad_row(row, "bad_input", row.error or "unusable row")
                        continue
                    if first is not None:
                        self._bad_row(
                            row,
                            "duplicate_id",
                            f"id {row.id!r} already at row {first} (the first one wins)",
                        )
                        continue
                    try:
                        if encode_one is not None:  # the usual case: one call a row
                            yield Request([row], encode_one(record), 1)
                            continue
                        item = render(record)
                    except RowInputError as e:
                        self._bad_row(row, "bad_input", str(e))
                        continue
                    batch.append(row)
                    items.append(item)
                    if len(batch) >= batch_size:
                        yield Request(batch, encode(items), len(batch), route(items))
                        batch, items = [], []
        if batch and not self.stopping:
            yield Request(batch, encode(items), len(batch), route(items))

    async def _window_moved(self) -> None:
        """Wait until a commit moves the watermark (or the run stops)."""
        self.moved.clear()
        await self.moved.wait()

    def reorder(self) -> None:
        """`[output] order = "input"`: rewrite the outputs in input order if the run ended
        with nothing pending (exit 0 or 3); after the endpoint was put to rest.

        Raises:
            OutputWriteError: the rewrite could not be written (the outputs stay as they were).
        """
        s = self.summary
        if self.job.output.order != "input" or s.exit_code not in (0, 3) or s.pending != 0:
            return
        if self.write_error is None and self.pool_error is None:
            self.ledger.reorder()

    def _bad_row(self, row: Row, status: str, message: str) -> None:
        error = {
            "id": row.id,
            "status": status,
            "error": message,
            "attempts": 0,
            "source": self.reader.where(row.pos),
            "row": row.seq,
        }
        self.ledger.add_error(row.seq, self.codec.error_row(error) if self.reshape else error)
        self.summary.failed += 1
        self._tick(1)
        self._maybe_commit()

    def _on_outcome(self, outcome: Outcome) -> None:
        ledger = self.ledger
        rows: list[Row] = outcome.request.key
        attempts = outcome.attempts
        due = False
        if outcome.results is not None:
            latency = int(outcome.latency_ms * 10.0 + 0.5) / 10.0  # round(, 1), for x >= 0
            add = ledger.add_result
            keep = self.keep
            if self.reshape:  # an output of its own shape (an OpenAI batch output file)
                add = self._add_reshaped
            for row, fields in zip(rows, outcome.results, strict=True):
                if keep:
                    record = row.record or {}
                    kept = {k: record.get(k) for k in keep}
                    due = add(row.seq, {"id": row.id, **kept, **fields, "attempts": attempts,
                                        "latency_ms": latency})  # fmt: skip
                else:
                    due = add(
                        row.seq,
                        {"id": row.id, **fields, "attempts": attempts, "latency_ms": latency},
                    )
            self.summary.succeeded += len(rows)
        else:
            error = outcome.error
            status = error.status if error is not None else "error"
            message = str(error) if error is not None else "unknown error"
            for row in rows:
                fields = {
                    "id": row.id,
                    "status": status,
                    "error": message,
                    "attempts": attempts,
                    "source": self.reader.where(row.pos),
                    "row": row.seq,
                }
                ledger.add_error(row.seq, self.codec.error_row(fields) if self.reshape else fields)
            self.summary.failed += len(rows)
            due = ledger.due()
        if self._bar_tick is not None:
            self._bar_tick(len(rows))
        # A commit by row count here; one by time comes from `_commit_timer`.
        if due and self.write_error is None and self._write(ledger.commit):
            self.moved.set()

    def _add_reshaped(self, seq: int, row: dict[str, Any]) -> bool:
        return self.ledger.add_result(seq, self.codec.result_row(row))

    def _maybe_commit(self) -> None:
        if self.write_error is None and self.ledger.due() and self._write(self.ledger.commit):
            self.moved.set()

    def _write(self, step: Callable[[], bool | None]) -> bool:
        """Run a ledger write step; on `OutputWriteError`, stop the run. Whether it returned
        something true (a commit that moved the watermark), or None without failing."""
        try:
            result = step()
        except OutputWriteError as e:
            self._write_failed(e)
            return False
        return result is None or result

    def _write_failed(self, error: OutputWriteError) -> None:
        """Stop dispatching at once: nothing more can be committed, so no grace either."""
        if self.write_error is not None:
            return
        self.write_error = error
        log.info("stopping: an output cannot be written; requests in flight are dropped")
        self.summary.stop_reason = StopReason.OUTPUT_WRITE_FAILED
        self.summary.error = str(error)
        self.stopping = True
        self.moved.set()
        for pool in self._pools:
            pool.stop(grace=0)

    def _pool_stopped(self, pool: Pool) -> None:
        """The pool stopped on its own: the endpoint failed endpoint-wide (its rows stay
        pending; exit 5) or the run stalled (exit 1). What settled is committed as usual."""
        verdict = pool.verdict
        if verdict is None or self.pool_error is not None or self.write_error is not None:
            return
        if self.total is None:  # for the summary's pending count
            self.total = self.reader.count_rows()
        line = verdict.line()
        if verdict.stalled:
            self.pool_error = RunStalledError(
                f"the run stalled (a bug): {verdict.message}; what settled is committed and a "
                "rerun sends the rest"
            )
            self.summary.stop_reason = StopReason.STALLED
        else:
            self.pool_error = EndpointUnusableError(line, url=verdict.url, failure=verdict.failure)
            self.summary.stop_reason = StopReason.ENDPOINT_UNUSABLE
        self.summary.error = str(self.pool_error)
        self.stopping = True
        self.moved.set()

    async def _commit_timer(self) -> None:
        period = max(
            0.05, self.ledger.commit_seconds / 4
        )  # a commit by time is late by this at most
        while True:
            await asyncio.sleep(period)
            self._maybe_commit()
            if self.shown is not None:
                self.shown.heartbeat()

    async def _watch_stop(self, target: Target) -> None:
        control_wait = asyncio.ensure_future(self.control.event.wait())
        target_wait = asyncio.ensure_future(target.stop_event.wait())
        try:
            await asyncio.wait({control_wait, target_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            control_wait.cancel()
            target_wait.cancel()
        reason = self.control.reason if self.control.event.is_set() else target.stop_reason
        if self.write_error is None:
            self.summary.stop_reason = reason or StopReason.STOPPED
        self.stopping = True
        self.moved.set()
        grace = self._grace()
        log.warning("stopping (%s): no new requests; %.0f s for those in flight", reason, grace)
        self._stop_pools()
        self.control.add_listener(self._stop_pools)

    def _grace(self) -> float:
        if self.write_error is not None:
            return 0.0
        return self.control.grace if self.control.grace is not None else self.job.run.grace_period

    def _stop_pools(self) -> None:
        grace = self._grace()
        for pool in self._pools:
            pool.stop(grace=grace)

    # -- progress and summary ----------------------------------------------------------------
    def _tick(self, settled: int) -> None:
        if self._bar_tick is not None:
            self._bar_tick(settled)

    def _settled_and_left(self) -> tuple[int, int | None]:
        """(rows settled by this run, rows left to settle or None): for `Target.watch_progress`."""
        settled = self.summary.succeeded + self.summary.failed
        if self.total is None:
            return settled, None
        return settled, max(self.total - self.ledger.committed_at_start - settled, 0)

    def _counts(self) -> Counts:
        s = self.summary
        return Counts(
            succeeded=s.succeeded,
            failed=s.failed,
            retries=sum(p.stats.retries for p in self._pools),
            skipped_done=s.skipped_done,
            concurrency=self._concurrency(),
        )

    def _concurrency(self) -> tuple[int, float] | None:
        """``concurrency = "auto"``: the last pool's limit now and its mean, else None."""
        control = self._pools[-1].adaptive if self._pools else None
        return None if control is None else (control.limit, round(control.mean(), 1))

    def finish_summary(self) -> None:
        s = self.summary
        # what this run committed, not what it completed: nothing uncommitted is counted
        s.succeeded = self.ledger.run_results
        s.failed = self.ledger.run_errors
        s.rows = s.succeeded + s.failed
        s.elapsed_s = round(time.monotonic() - self.start, 3)
        s.rows_per_s = round(s.rows / s.elapsed_s, 1) if s.elapsed_s > 0 else 0.0
        if (concurrency := self._concurrency()) is not None:
            s.concurrency, s.mean_concurrency = concurrency
        s.results_total = self.ledger.results_count
        s.errors_total = self.ledger.errors_count
        s.input_rows = self.total
        total = self.total if self.total is not None or self.read_all else self._input_rows()
        if total is not None:
            s.pending = max(0, total - s.results_total - s.errors_total)
        elif self.read_all and self.write_error is None:
            s.pending = 0
        s.resumable = s.stop_reason is not None
        # over the whole errors file, committed part only; nothing to read without errors
        s.errors_by_status = {}
        if s.errors_total:
            end = self.ledger.committed.errors_offset
            with contextlib.suppress(OSError):  # the counts above stand without it
                s.errors_by_status = tally_errors(self.job.output.errors_path, end=end).counts()
        s.exit_code = (
            7 if self.write_error is not None else exit_code_for(s.stop_reason, s.errors_total)
        )
        if self.pool_error is not None and self.write_error is None:
            s.exit_code = self.pool_error.exit_code

    def _input_rows(self) -> int | None:
        """The input's rows (when cheap to know), counted once, for `pending` after a stop
        or an error: a run that read its whole input has none pending without counting."""
        if self._counted is None:
            try:
                self._counted = (self.reader.count_rows(),)
            except OSError:  # the input went away: then it is not known
                self._counted = (None,)
        return self._counted[0]

    def close(self) -> None:
        """Commit what completed (a cancelled run keeps it) unless a write failed, then close
        the ledger; a failure of this last commit is the run's write error too."""
        if self.shown is not None:
            self.shown.close()
        try:
            if self.write_error is None and self.ledger.pending:
                self._write(self.ledger.commit)
                self.finish_summary()
        finally:
            self.ledger.close()
