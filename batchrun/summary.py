"""RunSummary: what a run did, as `batchrun run` prints it; and the exit code of a run that returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from batchrun.targets import StopReason

__all__ = ["RunSummary", "exit_code_for"]

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
        exit_code: 0, 3, 4, 7, 130 or 143 (DESIGN.md, "Exit codes").
        stop_reason: None, "budget", "deadline", "sigint", "sigterm", "endpoint_failed" or
            "output_write_failed".
        output / errors_path: where results and errors are.
        resumable: whether rows are left for a later run (stopped early).
        results_total / errors_total: committed rows in each file, over all runs.
        input_rows: rows in the input (after `limit`) when cheap to know, else None.
        discarded: what `--restart` discarded, if anything.
        endpoint, on_exit, endpoint_state_at_exit, cost_usd, billed_s, idle_billed_s: set by
            a lifecycle target (`Target.summary_fields`), None for `provider = "url"`.
        error: why the run did not finish (an output that could not be written), else None.
        pending: input rows neither in the results nor in the errors file, which a rerun
            sends (input_rows - results_total - errors_total), or None when the input's size
            is not known.
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
    error: str | None = None
    pending: int | None = None
    errors_by_status: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return dataclasses.asdict(self)


def exit_code_for(stop_reason: StopReason | str | None, errors_total: int) -> int:
    """The exit code of a run that returns (DESIGN.md order: 4, 130/143, 3, 0)."""
    reason = StopReason.of(stop_reason)
    if reason in _RETURNED_STOPS and reason.exit_code is not None:
        return reason.exit_code
    return 3 if errors_total else 0
