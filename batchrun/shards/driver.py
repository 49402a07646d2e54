"""The driver of a sharded run: one lease, W worker processes, the outputs merged in shard order.

```
plan (once, kept) ──> lock <output>.batchrun ──> enter the target (lease, watchdog, meter)
   ──> W workers (python -m batchrun.shards.worker), each given C/W and rpm/W ──> shards
   ──> all done: merge the shards' results and errors in shard order ──> leave the target
```

The driver alone holds the endpoint: its target's stop (budget, deadline, endpoint failure)
and the caller's `RunControl` (signals) reach every worker as a stop with the same grace. A
worker that dies (kill -9) leaves its shard not done: the driver hands it to a new worker,
which resumes it from that shard's own watermark. A driver that dies closes the workers'
stdin: they stop at once and exit, and the lease's watchdog puts the endpoint to rest. A later
run, with or without `--workers`, runs only the shards not done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import (
    BatchrunError,
    EndpointError,
    JobError,
    OutputWriteError,
    RunLockedError,
    RunStalledError,
)
from batchrun.io.errors_file import tally_errors
from batchrun.io.preflight import check_output_location
from batchrun.io.readers import open_input
from batchrun.io.runs import RunIndex
from batchrun.io.state import RunState, clear, lock, unlock
from batchrun.io.writers import write_atomic
from batchrun.job import Job
from batchrun.progress import Counts, Progress
from batchrun.runner import RunControl, _run_entry  # the same entry an unsharded run notes
from batchrun.shards.plan import Shard, ShardPlan, check_plan, make_plan
from batchrun.shards.worker import encode_job, shard_job
from batchrun.summary import RunSummary, exit_code_for, one_line
from batchrun.targets import StopReason, Target, open_target

__all__ = ["arun_sharded", "has_plan"]

log = logging.getLogger(__name__)

_RESPAWNS_PER_WORKER = 3
"""Workers that die are replaced up to this many times each before the run gives up."""
_PROGRESS_EVERY_S = 1.0
"""How often the bar reads the running shards' committed counts."""
_ERRORS_BY_CODE: dict[int, type[BatchrunError]] = {
    2: JobError,
    5: EndpointError,
    7: OutputWriteError,
    8: RunLockedError,
}


def has_plan(job: Job) -> bool:
    """Whether the job's output carries a shard plan (then every run of it is sharded)."""
    return ShardPlan.path_for(Path(job.output.state_dir)).exists()


async def arun_sharded(
    job: Job,
    *,
    workers: int,
    restart: bool = False,
    limit: int | None = None,
    progress: bool = True,
    control: RunControl | None = None,
) -> RunSummary:
    """Run the job's input as shards in `workers` processes against one lease.

    Args:
        job: the job.
        workers: worker processes (the job's concurrency and rate are split among them).
        restart: discard the output, the errors file, the plan and every shard's run state.
        limit: only the first `limit` rows (fixed in the plan when it is made).
        progress: a line on stderr as shards finish.
        control: stops the run from outside (the CLI's signal handlers).

    Returns:
        the summary across all shards, for exit codes 0, 3, 4, 130 and 143.

    Raises:
        JobError: a bad job or input, or an output that has an unsharded run state (exit 2).
        RunLockedError: another run holds this output (exit 8).
        EndpointError: the endpoint failed, or a shard failed endpoint-wide (exit 5).
        OutputWriteError: an output could not be written (exit 7).
    """
    if limit is not None:
        job = dataclasses.replace(job, run=dataclasses.replace(job.run, limit=limit))
        job.validate()
    control = control or RunControl()
    state_dir = Path(job.output.state_dir)
    plan, fd = _open_plan(job, state_dir, workers, restart=restart)
    noted = None
    try:
        noted = RunIndex().note(_run_entry(job))
        driver = _Driver(job, plan, state_dir, workers, control, progress)
        summary = await driver.run()
    finally:
        if noted is not None:
            RunIndex.forget(noted)
        unlock(fd)
    RunState.remember_run(state_dir, summary.to_json())
    if driver.failure is not None:
        code, message = driver.failure
        error = _ERRORS_BY_CODE.get(code, RunStalledError)(message)
        summary.error = message
        summary.exit_code = code
        error.summary = summary
        raise error
    return summary


def _open_plan(job: Job, state_dir: Path, workers: int, *, restart: bool) -> tuple[ShardPlan, int]:
    """Lock the output, then load its plan or make one; the plan and the lock's fd."""
    reader = open_input(job.input, limit=job.run.limit, source=job.source)
    check_output_location(job)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = lock(state_dir, job.output.path)
    try:
        if restart:
            _discard(job, state_dir)
        plan = ShardPlan.load(state_dir)
        if plan is None:
            _refuse_unsharded(job, state_dir)
            plan = make_plan(reader, workers, input_path=job.input.path)
            plan.save(state_dir)
        else:
            check_plan(plan, reader, input_path=job.input.path, source=job.source)
    except BaseException:
        unlock(fd)
        raise
    return plan, fd


def _discard(job: Job, state_dir: Path) -> None:
    """`--restart`: the plan, every shard's state and outputs, and the job's outputs."""
    clear(state_dir)  # keeps the lock, which the caller holds
    out = Path(job.output.path)
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink(missing_ok=True)
    Path(job.output.errors_path).unlink(missing_ok=True)


def _refuse_unsharded(job: Job, state_dir: Path) -> None:
    if RunState.exists(state_dir):
        raise JobError(
            f"{job.output.path}: this output has an unsharded run state; run it without "
            "--workers to finish, or --restart to start over sharded"
        )
    if Path(job.output.path).exists():
        raise JobError(
            f"{job.output.path}: the output exists without a run state; move it away or --restart"
        )


@dataclasses.dataclass(slots=True)
class _Proc:
    proc: asyncio.subprocess.Process
    shard: Shard | None = None


class _Driver:
    def __init__(
        self,
        job: Job,
        plan: ShardPlan,
        state_dir: Path,
        workers: int,
        control: RunControl,
        progress: bool,
    ) -> None:
        self.job = job
        self.plan = plan
        self.state_dir = state_dir
        self.workers = workers
        self.control = control
        self.progress = progress
        self.queue: deque[Shard] = deque(plan.remaining)
        self.summaries: dict[int, dict[str, Any]] = {}
        self.failure: tuple[int, str] | None = None
        self.stop: tuple[StopReason, float] | None = None
        self.procs: list[_Proc] = []
        self._on_stop: Callable[[], None] | None = None
        """Tells the Ray tasks' control actor of a stop (None: local workers)."""
        self.active: set[int] = set()
        """Shards handed out whose counts the progress bar still reads."""
        self.start = time.monotonic()

    async def run(self) -> RunSummary:
        job = self.job
        if not self.queue:
            self._merge()
            return self._summary(None)
        target = open_target(job, progress=self.progress)
        try:
            entered = await self._enter(target)
        except BaseException as e:
            await target.leave(e)
            raise
        if not entered:
            await target.leave(None)
            return self._summary(target)
        try:
            await self._dispatch(target)
            if self.stop is None and self.failure is None and not self.plan.remaining:
                target.mark_idle()
                self._merge()
        except BaseException as e:
            await self._kill_all()
            await target.leave(e)
            raise
        await target.leave(None)
        return self._summary(target)

    async def _enter(self, target: Target) -> bool:
        entering = asyncio.ensure_future(target.enter())
        stopped = asyncio.ensure_future(self.control.event.wait())
        try:
            await asyncio.wait({entering, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if entering.done():
            entering.result()
            if target.stop_event.is_set():
                self.stop = (target.stop_reason or StopReason.STOPPED, 0.0)
                return False
            return True
        entering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await entering
        self.stop = (self.control.reason or StopReason.STOPPED, 0.0)
        return False

    # -- workers ---------------------------------------------------------------------------
    @property
    def _concurrency(self) -> int:
        """The job's total concurrency (a number: `Job.validate` refuses "auto" with workers)."""
        c = self.job.run.concurrency
        if not isinstance(c, int):
            raise TypeError('concurrency = "auto" with workers > 1')
        return c

    def _shares(self, n: int) -> list[tuple[int, int]]:
        """(concurrency, rpm) of each of `n` workers: the job's totals split exactly."""
        c = self._concurrency
        rpm = self.job.run.max_requests_per_minute
        return [(c // n + (i < c % n), rpm // n + (i < rpm % n) if rpm else 0) for i in range(n)]

    async def _dispatch(self, target: Target) -> None:
        n = min(self.workers, len(self.queue), self._concurrency)
        rpm = self.job.run.max_requests_per_minute
        if rpm:
            n = min(n, rpm)
        shares = self._shares(n)
        watch = asyncio.ensure_future(self._watch_stop(target))
        shown = asyncio.ensure_future(self._show_progress(target))
        respawns = _RESPAWNS_PER_WORKER * n
        try:
            if self.job.run.executor == "ray":
                await self._dispatch_ray(target, shares)
                return
            running = {asyncio.ensure_future(self._serve(target, share)): share for share in shares}
            while running:
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    share = running.pop(task)
                    died = task.result()
                    more = self.queue and self.stop is None and self.failure is None
                    if died and more:
                        respawns -= 1
                        if respawns < 0:
                            self.failure = (1, "shard workers kept dying; a rerun resumes")
                            self._stop_all(StopReason.STOPPED, 0.0)
                            continue
                        log.warning("a shard worker died; starting another for its shard")
                        running[asyncio.ensure_future(self._serve(target, share))] = share
        finally:
            watch.cancel()
            shown.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shown

    async def _dispatch_ray(self, target: Target, shares: list[tuple[int, int]]) -> None:
        """The shards as Ray tasks, `len(shares)` at a time (batchrun.shards.ray_executor)."""
        from batchrun.shards.ray_executor import RayCluster

        ray_address = os.environ.get("RAY_ADDRESS") or None
        cluster = await asyncio.to_thread(RayCluster, len(shares), ray_address)
        self._on_stop = lambda: cluster.stop(str(self.stop[0]), self.stop[1]) if self.stop else None
        if self.stop is not None:
            self._on_stop()
        texts = [encode_job(self._share_job(share)) for share in shares]
        free = list(range(len(shares)))
        pending: dict[Any, tuple[Shard, int]] = {}
        lost = 0
        try:
            while True:
                while free and self.queue and self.stop is None and self.failure is None:
                    slot = free.pop()
                    shard = self.queue.popleft()
                    self.active.add(shard.index)
                    ref = cluster.submit(texts[slot], target.url, target.headers, shard)
                    pending[ref] = (shard, slot)
                if not pending:
                    return
                done, _ = await asyncio.to_thread(
                    cluster.ray.wait, list(pending), num_returns=1, timeout=0.25
                )
                for ref in done:
                    shard, slot = pending.pop(ref)
                    free.append(slot)
                    try:
                        message = await asyncio.to_thread(cluster.ray.get, ref)
                    except cluster.ray.exceptions.RayError as e:
                        lost += 1
                        log.warning("shard %d's task failed (%s)", shard.index, one_line(str(e)))
                        self.queue.appendleft(shard)
                        if lost > _RESPAWNS_PER_WORKER * len(shares):
                            self.failure = (1, "shard tasks kept failing; a rerun resumes")
                            self._stop_all(StopReason.STOPPED, 0.0)
                        continue
                    self._handle(message)
        finally:
            self._on_stop = None
            await asyncio.to_thread(cluster.close)

    def _share_job(self, share: tuple[int, int]) -> Job:
        """The job a worker runs: its share of the concurrency and the rate."""
        run = dataclasses.replace(
            self.job.run, concurrency=share[0], max_requests_per_minute=share[1]
        )
        return dataclasses.replace(self.job, run=run)

    def _handle(self, message: dict[str, Any]) -> None:
        """A shard's final message: done, stopped in it, or failed."""
        if "done" in message:
            self._finished(message["done"], message["summary"], done=True)
        elif "stopped" in message:
            self._finished(message["stopped"], message["summary"], done=False)
        elif "failed" in message:
            if message.get("summary"):
                self._finished(message["failed"], message["summary"], done=False)
            if self.failure is None:
                self.failure = (int(message["exit_code"]), str(message["error"]))
            self._stop_all(StopReason.STOPPED, 0.0)

    def _committed(self, index: int) -> tuple[int, int]:
        """(results, errors) committed in shard `index`'s own run state."""
        directory = Path(shard_job(self.job, index).output.state_dir)
        view = RunState.peek(directory)
        if view is None:
            return 0, 0
        return view.committed.results_count, view.committed.errors_count

    async def _show_progress(self, target: Target) -> None:
        """One bar (or log line) for the whole run, from the shards' committed counts."""
        rows = [s.rows for s in self.plan.shards]
        total = None if None in rows else sum(r or 0 for r in rows)
        counts = {s.index: self._committed(s.index) for s in self.plan.shards}
        initial = sum(r + e for r, e in counts.values())
        before = dict(counts)

        def now() -> Counts:
            ok = sum(counts[k][0] - before[k][0] for k in counts)
            failed = sum(counts[k][1] - before[k][1] for k in counts)
            return Counts(succeeded=ok, failed=failed, retries=0, skipped_done=initial)

        shown = Progress(
            enabled=self.progress,
            total=total,
            initial=initial,
            counts=now,
            cost_text=target.cost_text,
        )
        try:
            while True:
                await asyncio.sleep(_PROGRESS_EVERY_S)
                settled = 0
                for index in list(self.active):
                    old = counts[index]
                    counts[index] = self._committed(index)
                    settled += sum(counts[index]) - sum(old)
                    if self.plan.shards[index].done:
                        self.active.discard(index)
                if settled > 0:
                    shown.tick(settled)
                shown.heartbeat()
        finally:
            shown.close()

    async def _serve(self, target: Target, share: tuple[int, int]) -> bool:
        """Run one worker until it has no more shards; whether it died with a shard."""
        job = self._share_job(share)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchrun.shards.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C reaches the driver, which stops them itself
        )
        worker = _Proc(proc)
        self.procs.append(worker)
        assert proc.stdin is not None and proc.stdout is not None
        init = {"job": encode_job(job), "url": target.url, "headers": target.headers}
        try:
            self._send(worker, {"init": init})
            if self.stop is not None:
                self._send(worker, {"stop": str(self.stop[0]), "grace": self.stop[1]})
            self._next(worker)
            async for line in proc.stdout:
                message = orjson.loads(line)
                if "hold" in message:  # one shard's Retry-After holds every shard
                    for other in list(self.procs):
                        if other is not worker:
                            self._send(other, message)
                else:
                    self._handle(message)
                    worker.shard = None
                    if "done" in message:
                        self._next(worker)
            await proc.wait()
        finally:
            self.procs.remove(worker)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if worker.shard is not None:  # died in it: someone else resumes it
            self.queue.appendleft(worker.shard)
            return True
        return False

    def _next(self, worker: _Proc) -> None:
        if self.queue and self.stop is None and self.failure is None:
            worker.shard = self.queue.popleft()
            self.active.add(worker.shard.index)
            self._send(worker, {"shard": worker.shard.to_json()})
        else:
            self._send(worker, {"end": True})

    def _send(self, worker: _Proc, message: dict[str, Any]) -> None:
        stdin = worker.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            stdin.write(orjson.dumps(message) + b"\n")

    def _finished(self, index: int, summary: dict[str, Any], *, done: bool) -> None:
        self.summaries[index] = summary
        if done:
            self.plan.mark_done(index)
            self.plan.save(self.state_dir)
            if self.progress:
                left = len(self.plan.remaining)
                log.info("shard %d done; %d of %d left", index, left, len(self.plan.shards))

    async def _watch_stop(self, target: Target) -> None:
        control_wait = asyncio.ensure_future(self.control.event.wait())
        target_wait = asyncio.ensure_future(target.stop_event.wait())
        try:
            await asyncio.wait({control_wait, target_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            control_wait.cancel()
            target_wait.cancel()
        if self.control.event.is_set():
            reason = self.control.reason or StopReason.STOPPED
        else:
            reason = target.stop_reason or StopReason.STOPPED
        grace = self._grace()
        log.warning(
            "stopping (%s): every shard gets %.0f s for its requests in flight", reason, grace
        )
        self._stop_all(reason, grace)
        self.control.add_listener(lambda: self._stop_all(reason, self._grace()))

    def _grace(self) -> float:
        return self.control.grace if self.control.grace is not None else self.job.run.grace_period

    def _stop_all(self, reason: StopReason, grace: float) -> None:
        if self.stop is None or grace < self.stop[1]:
            self.stop = (self.stop[0] if self.stop else reason, grace)
        for worker in list(self.procs):
            self._send(worker, {"stop": str(self.stop[0]), "grace": self.stop[1]})
        if self._on_stop is not None:
            self._on_stop()

    async def _kill_all(self) -> None:
        for worker in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.proc.wait()

    # -- output ----------------------------------------------------------------------------
    def _merge(self) -> None:
        """The shards' outputs into the job's, in shard order; redone whole if interrupted."""
        if self.plan.merged:
            return
        job = self.job
        outs = [Path(shard_job(job, s.index).output.path) for s in self.plan.shards]
        errors = [Path(shard_job(job, s.index).output.errors_path) for s in self.plan.shards]
        try:
            if job.output.output_format == "parquet":
                _move_parts(outs, Path(job.output.path))
            else:
                _concat(outs, Path(job.output.path))
            _concat(errors, Path(job.output.errors_path), skip_empty=True)
            self.plan.merged = True
            self.plan.save(self.state_dir)
        except OSError as e:
            raise OutputWriteError(
                f"{e.filename or job.output.path}: cannot merge the shards' outputs: "
                f"{e.strerror or e}; a rerun merges again",
                path=str(e.filename or job.output.path),
            ) from e

    # -- summary ---------------------------------------------------------------------------
    def _summary(self, target: Target | None) -> RunSummary:
        job = self.job
        s = RunSummary(output=job.output.path, errors_path=job.output.errors_path)
        for part in self.summaries.values():
            s.succeeded += int(part.get("succeeded") or 0)
            s.failed += int(part.get("failed") or 0)
            s.retries += int(part.get("retries") or 0)
            s.skipped_done += int(part.get("skipped_done") or 0)
        s.rows = s.succeeded + s.failed
        results = errors = 0
        for shard in self.plan.shards:
            view = RunState.peek(Path(shard_job(job, shard.index).output.state_dir))
            if view is not None:
                results += view.committed.results_count
                errors += view.committed.errors_count
        s.results_total, s.errors_total = results, errors
        rows = [sh.rows for sh in self.plan.shards]
        s.input_rows = None if None in rows else sum(r or 0 for r in rows)
        if s.input_rows is not None:
            s.pending = max(0, s.input_rows - results - errors)
        s.elapsed_s = round(time.monotonic() - self.start, 3)
        s.rows_per_s = round(s.rows / s.elapsed_s, 1) if s.elapsed_s > 0 else 0.0
        s.stop_reason = self.stop[0] if self.stop is not None else None
        s.resumable = bool(self.plan.remaining) or not self.plan.merged
        if errors and self.plan.merged:
            with contextlib.suppress(OSError):
                s.errors_by_status = tally_errors(job.output.errors_path).counts()
        s.exit_code = exit_code_for(s.stop_reason, errors)
        if target is not None:
            for key, value in target.summary_fields().items():
                setattr(s, key, value)
        return s


def _concat(parts: list[Path], path: Path, *, skip_empty: bool = False) -> None:
    present = [p for p in parts if p.exists()]
    if skip_empty and not any(p.stat().st_size for p in present):
        path.unlink(missing_ok=True)
        return

    def write(out: Any) -> None:
        for part in present:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write, tmp=path.with_name(f".{path.name}.merging.{os.getpid()}"))


def _move_parts(parts: list[Path], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for k, part_dir in enumerate(parts):
        if not part_dir.is_dir():
            continue
        for part in sorted(part_dir.glob("*.parquet")):
            # part-<shard>-<its part>: sorted, they read in shard order
            os.replace(part, directory / f"part-{k:05d}-{part.name.removeprefix('part-')}")
