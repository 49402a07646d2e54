"""What a run shows: a tqdm bar on a terminal, else an INFO line every 30 s; and at the end,
on a terminal, a few lines for people (`show_summary`).

The bar counts settled rows (from those committed by earlier runs on) out of the input's rows
(`InputReader.count_rows`, after `limit`) and shows ok / errors / retries and, for a metered
target, the cost so far; the log line says the same with the rate and an ETA. Nothing here
changes the run: `Progress` only reads the counts it is given.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from batchrun.summary import RunSummary

__all__ = ["Counts", "Progress", "WaitingLine", "show_summary", "summary_lines"]

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
_SHOW_EVERY = 256
"""Rows between two updates of the bar's counts (a postfix costs more than a tick)."""


@dataclass(slots=True, kw_only=True)
class Counts:
    """The counts shown: this run's settled rows, retries, and rows done by earlier runs."""

    succeeded: int
    failed: int
    retries: int
    skipped_done: int
    concurrency: tuple[int, float] | None = None  # concurrency = "auto": (now, mean)


class Progress:
    """The bar or the log line of one run.

    Args:
        enabled: show progress at all (`run_job(progress=...)`).
        total: rows in the input, if known.
        initial: rows committed by earlier runs (where the bar starts).
        counts: the current counts.
        cost_text: the cost so far ("$0.0123"), or None when nothing is metered.
        start: when sending started (`time.monotonic()`; default now), for the rate and the
            ETA: a run that waited minutes for its endpoint must not count that wait.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        total: int | None,
        initial: int,
        counts: Callable[[], Counts],
        cost_text: Callable[[], str | None],
        start: float | None = None,
    ) -> None:
        self.enabled = enabled
        self.total = total
        self._counts = counts
        self._cost_text = cost_text
        self._start = time.monotonic() if start is None else start
        self._last_log = time.monotonic()
        self._unshown = 0
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                # rows committed beyond the input (a lowered --limit) must not overrun the bar
                total=None if total is None else max(total, initial),
                initial=initial,
                unit="row",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    def tick(self, settled: int) -> None:
        """`settled` more rows are done (results or errors)."""
        bar = self.bar
        if bar is not None:
            bar.update(settled)
            if bar.total is not None and bar.n > bar.total:
                bar.total = bar.n  # an estimate fell short: never show more than 100 %
            self._unshown += settled
            if self._unshown >= _SHOW_EVERY:
                self._show_counts()

    def resend(self, rows: int) -> None:
        """`rows` counted as done by earlier runs are sent again (`--retry-errors`): the bar
        starts that much lower, so it ends at its total."""
        bar = self.bar
        if bar is not None and rows:
            bar.n -= rows
            bar.last_print_n -= rows
            bar.initial -= rows
            bar.refresh()

    def heartbeat(self) -> None:
        """Called now and then: the log line every `LOG_EVERY_S` when there is no bar."""
        if self.bar is None and self.enabled and time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.monotonic()
            self.log_line()

    def log_line(self) -> None:
        """Log where the run stands at INFO."""
        c = self._counts()
        done = c.succeeded + c.failed
        elapsed = time.monotonic() - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        total = f"/{self.total}" if self.total is not None else ""
        eta = ""
        if self.total is not None and rate > 0:
            eta = f", ETA {max(0.0, (self.total - done - c.skipped_done) / rate):.0f} s"
        cost = self._cost_text()
        if cost is not None:
            eta += f", cost {cost}"
        if c.concurrency is not None:
            eta += f", concurrency {c.concurrency[0]} (mean {c.concurrency[1]:g})"
        log.info(
            "progress: %d%s rows (ok %d, errors %d, retries %d, already done %d), %.0f rows/s%s",
            done + c.skipped_done,
            total,
            c.succeeded,
            c.failed,
            c.retries,
            c.skipped_done,
            rate,
            eta,
        )

    def close(self) -> None:
        """Show the final counts and close the bar."""
        if self.bar is not None:
            self._show_counts()
            self.bar.close()
            self.bar = None

    def _show_counts(self) -> None:
        self._unshown = 0
        c = self._counts()
        shown: dict[str, Any] = {"ok": c.succeeded, "errors": c.failed, "retries": c.retries}
        cost = self._cost_text()
        if cost is not None:
            shown["cost"] = cost
        if c.concurrency is not None:
            shown["conc"] = c.concurrency[0]
        self.bar.set_postfix(shown, refresh=False)


def summary_lines(summary: RunSummary) -> list[str]:
    """The end of a run for people: what happened to the rows, the cost, where the files are."""
    s = summary
    if s.stop_reason is None and s.error is None:
        head = "finished"
    else:
        head = f"stopped ({s.stop_reason or 'error'})"
    lines = [
        f"batchrun: {head} after {_hms(s.elapsed_s)}: {s.rows:,} row(s) this run "
        f"({s.rows_per_s:,.1f}/s), {s.succeeded:,} ok, {s.failed:,} failed"
        + (f", {s.retries:,} retries" if s.retries else "")
    ]
    if s.errors_by_status:
        lines.append(f"  failed by status (all runs): {s.status_counts()}")
    rows = []
    if s.input_rows is not None:
        rows.append(f"{s.input_rows:,} in the input")
    if s.skipped_done:
        rows.append(f"{s.skipped_done:,} done by earlier runs")
    if s.pending:
        rows.append(f"{s.pending:,} pending (a rerun sends them)")
    if rows:
        lines.append("  rows: " + ", ".join(rows))
    if s.concurrency is not None:
        lines.append(
            f"  concurrency: auto, {s.concurrency} at the end, mean {s.mean_concurrency:g}"
        )
    if s.cost_usd is not None:
        billed = ""
        if s.billed_s is not None:
            idle = f", {s.idle_billed_s:,.0f} s idle" if s.idle_billed_s else ""
            billed = f" ({s.billed_s:,.0f} s billed{idle})"
        lines.append(f"  cost: ${s.cost_usd:.4f}{billed}")
    if s.endpoint is not None:
        state = s.endpoint_state_at_exit or "unknown"
        lines.append(f"  endpoint: {s.endpoint}, {state} at exit (on_exit = {s.on_exit})")
    lines.append(f"  results: {s.output} ({s.results_total:,} row(s))")
    if s.errors_total:
        lines.append(f"  errors: {s.errors_path} ({s.errors_total:,} row(s))")
    return lines


def show_summary(summary: RunSummary, *, stream: TextIO | None = None) -> None:
    """Write `summary_lines` to `stream` (default stderr) when it is a terminal; else nothing
    (the JSON summary on stdout is for programs)."""
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        return
    out.write("\n".join(summary_lines(summary)) + "\n")
    out.flush()


def _hms(seconds: float) -> str:
    h, rest = divmod(max(round(seconds), 0), 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class WaitingLine:
    """The wait for an endpoint, on stderr: `waiting for local/echo: initializing 0:06`.

    On a terminal, one line updated in place (cleared when the wait is over, before the bar);
    elsewhere, an INFO line each time the state changes, never one a poll. The lease calls
    `show` about twice a second and `done` once (`batchrun.lifecycle.watchers.WaitingView`).

    Args:
        stream: where the line goes (default `sys.stderr`).
        tty: whether it is a terminal (default: `stream.isatty()`).
    """

    def __init__(self, stream: Any = None, *, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._shown = ""
        self._state: str | None = None

    def __repr__(self) -> str:
        return f"WaitingLine(tty={self.tty}, state={self._state!r})"

    def show(self, where: str, state: str, elapsed_s: float) -> None:
        """`where` is `state`, `elapsed_s` into the wait."""
        text = f"waiting for {where}: {state} {_clock(elapsed_s)}"
        if self.tty:
            if text != self._shown:
                self._write("\r\x1b[K" + text)
                self._shown = text
        elif state != self._state:
            log.info("%s", text)
        self._state = state

    def done(self) -> None:
        """The wait is over: clear the line on a terminal."""
        if self.tty and self._shown:
            self._write("\r\x1b[K")
            self._shown = ""

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not stop the run
            self.tty = False


def _clock(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
