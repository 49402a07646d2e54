"""RunSummary: what a run did, as `batchrun run` prints it; and the exit code of a run that returns.

A summary also reads what the run wrote: `read_results()` / `read_errors()` give a
`pyarrow.Table`, `iter_results()` / `iter_errors()` stream dicts in flat memory; all of them
read only the committed part of the outputs (what the run state records), so a live run's
uncommitted tail is never seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.errors import BatchrunError
from batchrun.targets import StopReason

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["RunSummary", "exit_code_for", "one_line"]

_RETURNED_STOPS = frozenset(
    {StopReason.BUDGET, StopReason.DEADLINE, StopReason.SIGINT, StopReason.SIGTERM}
)
"""Stops after which `run_job` returns (the others raise, or leave the code to the rows)."""


@dataclass(slots=True, kw_only=True)
class RunSummary:
    """What a run did; `to_json()` is what `batchrun run` prints.

    Attributes:
        rows: rows settled in this run (succeeded + failed).
        succeeded / failed: rows of this run written to the results / the errors file.
        skipped_done: rows committed by earlier runs, not sent again.
        retries: HTTP retries in this run.
        elapsed_s / rows_per_s: wall time and settled rows per second.
        exit_code: the `batchrun run` exit code (DESIGN.md, "Exit codes"): 0, 3, 4, 130 or
            143 when `run_job` returns; on an error's `.summary`, that error's code.
        stop_reason: None, "budget", "deadline", "sigint", "sigterm", "endpoint_failed" or
            "output_write_failed".
        output / errors_path: where results and errors are.
        resumable: whether rows are left for a later run (stopped early).
        results_total / errors_total: committed rows in each file, over all runs.
        input_rows: rows in the input (after `limit`) when cheap to know, else None.
        discarded: what `--restart` discarded, if anything.
        endpoint, on_exit, endpoint_state_at_exit, cost_usd, billed_s, idle_billed_s: set by
            a lifecycle target (`Target.summary_fields`), None for `provider = "url"`.
        rows_per_s_per_replica, replicas_asked, cold_start_s: with `[run] scale =
            "deadline"`, the rate one ready replica served (measured after warm-up), the
            replica counts the run asked for, in order, and a new replica's measured cold
            start; `batchrun plan` reads the first and the last back from `last_run.json`.
        error: why the run did not finish, as one line (the message `batchrun run` prints
            after "batchrun: error: "), else None.
        pending: input rows neither in the results nor in the errors file, which a rerun
            sends (input_rows - results_total - errors_total), or None when the input's size
            is not known.
        concurrency / mean_concurrency: with ``concurrency = "auto"``, the limit the
            controller had at the end and its time-weighted mean; None with a fixed one.
        errors_by_status: the errors file over all runs, by status, most rows first:
            `{"http_400": {"count": 24, "first_error": "..."}, ...}` (`batchrun errors` says more).
    """

    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped_done: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    exit_code: int = 0
    stop_reason: StopReason | None = None
    output: str = ""
    errors_path: str = ""
    resumable: bool = False
    results_total: int = 0
    errors_total: int = 0
    input_rows: int | None = None
    retried_errors: int = 0
    discarded: str | None = None
    endpoint: str | None = None
    on_exit: str | None = None
    endpoint_state_at_exit: str | None = None
    cost_usd: float | None = None
    billed_s: float | None = None
    idle_billed_s: float | None = None
    rows_per_s_per_replica: float | None = None
    replicas_asked: list[int] | None = None
    cold_start_s: float | None = None
    error: str | None = None
    pending: int | None = None
    concurrency: int | None = None
    mean_concurrency: float | None = None
    errors_by_status: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @classmethod
    def of_error(
        cls, error: BatchrunError, *, output: str = "", errors_path: str = ""
    ) -> RunSummary:
        """The summary of a run that failed before it had one (a job file that cannot be
        loaded, say): what is known, with `error` and `exit_code`; `pending` is unknown."""
        return cls(
            output=output,
            errors_path=errors_path,
            error=one_line(error),
            exit_code=error.exit_code,
        )

    @property
    def ok(self) -> bool:
        """Whether every row succeeded (exit code 0)."""
        return self.exit_code == 0

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def __repr__(self) -> str:
        return (
            f"RunSummary(exit_code={self.exit_code}, succeeded={self.succeeded}, "
            f"failed={self.failed}, pending={self.pending}, output={self.output!r})"
        )

    def status_counts(self) -> str:
        """`errors_by_status` in one line, most rows first: ``http_400 24, bad_response 3``."""
        return ", ".join(f"{k} {v['count']:,}" for k, v in self.errors_by_status.items())

    def __str__(self) -> str:
        lines = [f"batchrun run: {self._outcome()} (exit {self.exit_code})"]
        if self.error:
            lines.append(f"  error:    {self.error}")
        this_run = f"{self.rows:,} this run ({self.succeeded:,} ok, {self.failed:,} failed"
        if self.skipped_done:
            this_run += f", {self.skipped_done:,} already done"
        lines.append(f"  rows:     {this_run})")
        if self.errors_by_status:
            lines.append(f"  failed:   {self.status_counts()}")
        if self.pending is not None:
            lines.append(
                f"  pending:  {self.pending:,}" + (" (a rerun sends them)" if self.pending else "")
            )
        if self.output:
            lines.append(f"  results:  {self.output} ({self.results_total:,} rows)")
        if self.errors_path and (self.errors_total or self.output):
            lines.append(f"  errors:   {self.errors_path} ({self.errors_total:,} rows)")
        if self.endpoint is not None:
            cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:.4f}"
            state = self.endpoint_state_at_exit or "left as it was"
            lines.append(
                f"  endpoint: {self.endpoint}: {state} (on_exit {self.on_exit}), cost {cost}"
            )
        lines.append(f"  time:     {self.elapsed_s:.1f} s, {self.rows_per_s:,.1f} rows/s")
        if self.concurrency is not None:
            lines.append(
                f"  concurrency: auto, {self.concurrency} at the end, mean {self.mean_concurrency:g}"
            )
        return "\n".join(lines)

    def _outcome(self) -> str:
        if self.error is not None:
            return "failed"
        if self.stop_reason is not None:
            return f"stopped ({self.stop_reason})"
        return "finished" if not self.errors_total else "finished, with rows in the errors file"

    # -- what the run wrote ------------------------------------------------------------------
    def read_results(self) -> pa.Table:
        """The committed results as one table (JSONL or Parquet output); empty (no columns)
        when nothing was written. Holds the whole table in memory: see `iter_results`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = Path(self.output) if self.output else None
        if out is not None and out.is_dir():
            tables = [pq.read_table(part) for part in self._parts(out)]
            if not tables:
                return pa.table({})
            return pa.concat_tables(tables, promote_options="default")
        return _read_jsonl(out, self._committed("results_offset"))

    def read_errors(self) -> pa.Table:
        """The committed rows of the errors file as one table; empty when there are none."""
        path = Path(self.errors_path) if self.errors_path else None
        return _read_jsonl(path, self._committed("errors_offset"))

    def iter_results(self, *, batch_rows: int = 4096) -> Iterator[dict[str, Any]]:
        """The committed results, one dict per row, read `batch_rows` at a time (flat memory)."""
        out = Path(self.output) if self.output else None
        if out is not None and out.is_dir():
            import pyarrow.parquet as pq

            for part in self._parts(out):
                for batch in pq.ParquetFile(part).iter_batches(batch_size=batch_rows):
                    yield from batch.to_pylist()
            return
        yield from _iter_jsonl(out, self._committed("results_offset"))

    def iter_errors(self) -> Iterator[dict[str, Any]]:
        """The committed rows of the errors file, one dict each (flat memory)."""
        path = Path(self.errors_path) if self.errors_path else None
        yield from _iter_jsonl(path, self._committed("errors_offset"))

    def _state(self) -> Any:
        from batchrun.io.state import RunState

        if not self.output:
            return None
        view = RunState.peek(RunState.directory_for(self.output))
        return view.committed if view is not None else None

    def _committed(self, offset: str) -> int | None:
        """A committed byte offset from the run state; None: no state, read the whole file."""
        committed = self._state()
        return None if committed is None else int(getattr(committed, offset))

    def _parts(self, directory: Path) -> list[Path]:
        committed = self._state()
        if committed is None:
            return sorted(directory.glob("part-*.parquet"))
        live = committed.live_parts or range(1, committed.parts + 1)
        return [directory / f"part-{n:06d}.parquet" for n in sorted(live)]


def one_line(error: BaseException | str) -> str:
    """An error's message on one line (what the summary's `error` holds)."""
    text = " ".join(str(error).split())
    return text or (type(error).__name__ if isinstance(error, BaseException) else "error")


def _read_jsonl(path: Path | None, limit: int | None) -> pa.Table:
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    if path is None or not path.is_file() or limit == 0:
        return pa.table({})
    size = path.stat().st_size
    if limit is None or limit >= size:
        if size == 0:
            return pa.table({})
        return pj.read_json(path)
    with open(path, "rb") as f:
        return pj.read_json(io.BytesIO(f.read(limit)))


def _iter_jsonl(path: Path | None, limit: int | None) -> Iterator[dict[str, Any]]:
    if path is None or not path.is_file():
        return
    read = 0
    with open(path, "rb") as f:
        for line in f:
            read += len(line)
            if limit is not None and read > limit:
                return
            if line.strip():
                yield orjson.loads(line)


def exit_code_for(stop_reason: StopReason | str | None, errors_total: int) -> int:
    """The exit code of a run that returns (DESIGN.md order: 4, 130/143, 3, 0)."""
    reason = StopReason.of(stop_reason)
    if reason in _RETURNED_STOPS and reason.exit_code is not None:
        return reason.exit_code
    return 3 if errors_total else 0
