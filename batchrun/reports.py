"""Read-only views: `batchrun plan` (what a job would cost), `batchrun status` (where a run
stands, which runs and leases are live), `batchrun errors` (why rows failed).

Nothing here resumes, creates or sends anything: `plan_job` counts the input cheaply (Parquet
metadata, a line count), subtracts what the run state says is committed, reads the endpoint's
state and price when the API answers (or the job's `[budget] price_per_hour`), and estimates
duration and cost at a given rate or the rate the last run measured (`RunState.last_run`).
`run_status` reads a run state without taking its lock (`RunState.peek`); `lease_statuses`
reads the lease registry; `live_runs` the run index (`RunIndex`). `errors_report` reads the
committed part of an errors file (`tally_errors`). The layout of the run state is `RunState`'s
alone. A report names an output or a job file (`resolve_output`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchrun.endpoints.client import EndpointsClient
from batchrun.endpoints.connect import HOME_SERVICE, api_url_for, control_plane, local_price_list
from batchrun.endpoints.http import ControlRetryPolicy
from batchrun.endpoints.models import Hardware
from batchrun.errors import APIConnectionError, BatchrunError, InputError, NotFoundError
from batchrun.io.errors_file import NOT_RETRIED, Tally, tally_errors
from batchrun.io.readers import open_input
from batchrun.io.runs import RunIndex
from batchrun.io.state import RunState
from batchrun.job import Job, OutputSpec, load_job
from batchrun.lifecycle.registry import LeaseRecord, LeaseRegistry
from batchrun.lifecycle.scaling import deadline_decision, last_rates

__all__ = [
    "ErrorsReport",
    "LiveRuns",
    "Plan",
    "RunStatus",
    "errors_report",
    "lease_lines",
    "lease_statuses",
    "live_runs",
    "plan_job",
    "resolve_output",
    "run_status",
]


@dataclass(slots=True, kw_only=True)
class Plan:
    """An estimate made before anything is spent. Unknown figures are None."""

    job: str
    endpoint: str | None
    endpoint_state: str | None
    input_rows: int | None
    committed: int
    remaining: int | None
    rows_per_second: float | None
    rate_source: str | None
    duration_s: float | None
    price_per_hour: float | None
    price_source: str | None
    replicas: int
    billing_quantum_s: float
    cost_usd: float | None
    max_cost_usd: float | None
    max_duration_s: float | None
    deadline: str | None
    fits: bool | None
    notes: list[str] = field(default_factory=list)
    scale: str = "fixed"
    deadline_replicas: int | None = None
    deadline_cost_usd: float | None = None
    deadline_feasible: bool | None = None
    rows_per_s_per_replica: float | None = None
    deadline_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return asdict(self)

    def lines(self) -> list[str]:
        """The plan for people, one fact a line."""
        out = [f"job: {self.job}"]
        if self.endpoint:
            state = f" ({self.endpoint_state})" if self.endpoint_state else ""
            out.append(f"endpoint: {self.endpoint}{state}")
        total = "unknown" if self.input_rows is None else f"{self.input_rows:,}"
        out.append(f"rows: {total} in the input, {self.committed:,} already committed")
        if self.remaining is not None:
            out.append(f"to send: {self.remaining:,} rows")
        if self.rows_per_second:
            out.append(f"rate: {self.rows_per_second:,.1f} rows/s ({self.rate_source})")
        if self.duration_s is not None:
            out.append(
                f"duration: {_hms(self.duration_s)} (plus the wait until the endpoint is ready)"
            )
        if self.price_per_hour is not None:
            out.append(
                f"price: ${self.price_per_hour:g}/h per replica × {self.replicas} ({self.price_source}); "
                f"billed per started {self.billing_quantum_s:g}s"
            )
        if self.cost_usd is not None:
            out.append(f"cost: ${self.cost_usd:.4f}")
        limits = []
        if self.max_cost_usd is not None:
            limits.append(f"max_cost_usd ${self.max_cost_usd:g}")
        if self.max_duration_s is not None:
            limits.append(f"max_duration {_hms(self.max_duration_s)}")
        if self.deadline is not None:
            limits.append(f"deadline {self.deadline}")
        if self.scale == "deadline":
            out.append(self._deadline_line())
        if limits:
            verdict = {True: "fits", False: "does NOT fit", None: "cannot tell whether it fits"}
            out.append(f"budget: {', '.join(limits)}: {verdict[self.fits]}")
        out.extend(f"note: {n}" for n in self.notes)
        return out

    def _deadline_line(self) -> str:
        if self.deadline_replicas is None or self.rows_per_s_per_replica is None:
            return (
                "scale = deadline: rate unknown (no run measured it yet); the run goes ahead "
                "and scales from what it measures"
            )
        cost = "" if self.deadline_cost_usd is None else f", cost ${self.deadline_cost_usd:.4f}"
        head = (
            f"scale = deadline: {self.deadline_replicas} replica(s) at "
            f"{self.rows_per_s_per_replica:,.3g} rows/s per replica{cost}"
        )
        if self.deadline_feasible:
            return head
        return (
            f"{head}: the deadline cannot be met: {self.deadline_reason}; the run exits 2 "
            "unless --best-effort"
        )


def _hms(seconds: float) -> str:
    whole = max(round(seconds), 0)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _committed_counts(output: str) -> tuple[int, int] | None:
    """(results, errors) committed according to the run state, or None without one."""
    view = RunState.peek(RunState.directory_for(output))
    if view is None:
        return None
    return view.committed.results_count, view.committed.errors_count


async def plan_job(job: Job, *, rows_per_second: float | None = None) -> Plan:
    """Estimate rows, duration and cost of running `job` now; spend nothing.

    Args:
        job: the job.
        rows_per_second: the rate to assume; default the last run's measured rate.

    Raises:
        InputError: the input is missing or unreadable.
    """
    notes: list[str] = []
    reader = open_input(job.input, limit=job.run.limit, source=job.source)
    rows = reader.count_rows()
    if rows is None:  # gzipped JSONL, CSV: count by reading (no request is sent)
        rows = sum(1 for _ in reader.rows())
    counts = _committed_counts(job.output.path)
    committed = sum(counts) if counts else 0
    remaining = max(rows - committed, 0)
    rate_source: str | None = "given" if rows_per_second else None
    if not rows_per_second:
        last = RunState.last_run(RunState.directory_for(job.output.path))
        if last and last.get("rows_per_s"):
            rows_per_second = float(last["rows_per_s"])
            rate_source = f"measured by the last run, {last.get('finished', '?')}"
        else:
            notes.append(
                "no rate known: pass --rows-per-second, or run once (plan then uses its rate)"
            )
    duration = remaining / rows_per_second if rows_per_second else None

    spec = job.endpoint
    price = job.budget.price_per_hour
    price_source: str | None = "job [budget] price_per_hour" if price is not None else None
    replicas = max(spec.min_replica, 1)
    max_replica: int | None = spec.max_replica
    endpoint_name = spec.url if spec.provider == "url" else f"{spec.namespace or '?'}/{spec.name}"
    state: str | None = None
    if spec.provider in ("hf", "local") and spec.name:
        try:
            # provider "local": this home's service, started when none runs, and its token
            api_url, token = await control_plane(spec.provider, api_url_for(spec))
            async with EndpointsClient(
                api_url=api_url,
                token=token,
                namespace=spec.namespace,
                timeout=10.0,
                retry=ControlRetryPolicy(attempts=1),  # a plan does not wait for a missing service
            ) as client:
                namespace = await client.namespace()
                endpoint_name = f"{namespace}/{spec.name}"
                hw_filter = {"vendor": spec.vendor, "region": spec.region}
                try:
                    endpoint = await client.get(spec.name)
                    state = endpoint.state_text
                    replicas = max(endpoint.target_replica or 0, endpoint.min_replica or 0, 1)
                    max_replica = endpoint.max_replica
                    hw_filter = {
                        "vendor": endpoint.vendor or spec.vendor,
                        "region": endpoint.region or spec.region,
                    }
                    want = (
                        endpoint.instance_type or spec.instance_type,
                        endpoint.instance_size or spec.instance_size,
                    )
                except NotFoundError:
                    state = "missing: a run creates it" if spec.repository else "missing"
                    want = (spec.instance_type, spec.instance_size)
                if price is None:
                    options = await client.hardware(**hw_filter)
                    price, simulated = _match(options, want)
                    if price is not None:
                        price_source = "list price (simulated)" if simulated else "list price"
        except APIConnectionError as e:
            notes.append(f"the endpoints API did not answer ({e}); the endpoint's state is unknown")
            if spec.provider == "local" and price is None:
                options = local_price_list()
                price, _ = _match(options, (spec.instance_type, spec.instance_size))
                if price is not None:
                    price_source = "list price (simulated)"
        except BatchrunError as e:
            notes.append(f"the endpoints API refused: {e}")
    if spec.provider == "url":
        notes.append(
            'provider "url": no endpoint lifecycle; cost only with [budget] price_per_hour'
        )

    quantum = job.budget.billing_quantum_s
    cost = None
    if price is not None and duration is not None:
        cost = math.ceil(max(duration, 1e-9) / quantum) * quantum * replicas * price / 3600.0
    b = job.budget
    checks: list[bool | None] = []
    if b.max_cost_usd is not None:
        checks.append(None if cost is None else cost <= b.max_cost_usd)
    if b.max_duration is not None:
        checks.append(None if duration is None else duration <= b.max_duration)
    if b.deadline is not None:
        left = (b.deadline - dt.datetime.now().astimezone()).total_seconds()
        checks.append(None if duration is None else duration <= left)
    decision = None
    rate_per_replica: float | None = None
    if job.run.scale == "deadline":
        rate_per_replica, cold = last_rates(job)
        if rate_per_replica is None and rows_per_second:
            rate_per_replica = rows_per_second / replicas
        decision = deadline_decision(
            job,
            rows_left=remaining,
            rate_per_replica=rate_per_replica,
            cold_start_s=cold,
            price_per_hour=price,
            endpoint_max_replica=max_replica,
        )
        if decision is not None:
            checks = [decision.feasible]  # the replicas are chosen for the deadline and budget
    fits = False if False in checks else None if None in checks else True
    return Plan(
        job=job.source,
        endpoint=endpoint_name,
        endpoint_state=state,
        input_rows=rows,
        committed=committed,
        remaining=remaining,
        rows_per_second=rows_per_second,
        rate_source=rate_source,
        duration_s=None if duration is None else round(duration, 1),
        price_per_hour=price,
        price_source=price_source,
        replicas=replicas,
        billing_quantum_s=quantum,
        cost_usd=None if cost is None else round(cost, 6),
        max_cost_usd=b.max_cost_usd,
        max_duration_s=b.max_duration,
        deadline=b.deadline.isoformat(timespec="minutes") if b.deadline else None,
        fits=fits,
        notes=notes,
        scale=job.run.scale,
        deadline_replicas=decision.replicas if decision else None,
        deadline_cost_usd=None
        if decision is None or decision.cost_usd is None
        else round(decision.cost_usd, 6),
        deadline_feasible=decision.feasible if decision else None,
        rows_per_s_per_replica=rate_per_replica,
        deadline_reason=decision.reason if decision else None,
    )


def _match(options: list[Hardware], want: tuple[str, str]) -> tuple[float | None, bool]:
    for hw in options:
        if (hw.instance_type, hw.instance_size) == want:
            return hw.price_per_hour, bool(hw.raw.get("simulated"))
    return None, False


@dataclass(slots=True, kw_only=True)
class RunStatus:
    """Where one run stands, from its run state and the lease registry."""

    output: str
    has_state: bool
    results: int
    errors: int
    live_pid: int | None
    leases: list[dict[str, Any]]
    last_run: dict[str, Any] | None
    job: str | None = None
    errors_by_status: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        if not self.has_state:
            return [f"{self.output}: no run state (never run, or started over)"]
        out = [f"{self.output}: {self.results:,} results, {self.errors:,} errors committed"]
        if self.job:
            out.append(f"job: {self.job}")
        out.extend(_by_status_lines(self.errors_by_status))
        out.append(f"run: live, pid {self.live_pid}" if self.live_pid else "run: not running")
        for lease in self.leases:
            out.append(_lease_line(lease))
        if self.last_run:
            lr = self.last_run
            cost = lr.get("cost_usd")
            cost_text = f", cost ${cost:.4f}" if isinstance(cost, int | float) else ""
            out.append(
                f"last run: exit {lr.get('exit_code')}, stop {lr.get('stop_reason') or 'none'}, "
                f"{lr.get('rows', 0)} rows at {lr.get('rows_per_s', 0)} rows/s{cost_text}, "
                f"endpoint {lr.get('endpoint_state_at_exit') or 'n/a'} at exit"
            )
        return out


def _lease_line(lease: dict[str, Any]) -> str:
    meter = lease.get("meter") or {}
    cost = meter.get("cost_usd")
    cost_text = f", ${cost:.4f} so far" if isinstance(cost, int | float) else ""
    live = "live" if lease.get("live") else "DEAD (run `batchrun reap`)"
    api = lease["api_url"]
    where = "this home's local service" if api == HOME_SERVICE else api
    return (
        f"lease {lease['id']}: {lease['namespace']}/{lease['endpoint']} on {where}, "
        f"pid {lease['pid']} {live}, on_exit {lease['on_exit']}, since {lease['started']}{cost_text}"
    )


def lease_statuses(registry: LeaseRegistry | None = None) -> list[dict[str, Any]]:
    """Every lease with a `live` flag, oldest first."""
    registry = registry or LeaseRegistry()
    return [_lease_json(registry, r) for r in registry.records()]


def _lease_json(registry: LeaseRegistry, record: LeaseRecord) -> dict[str, Any]:
    data = record.to_json()
    data["live"] = registry.is_live(record.id)
    return data


def _by_status_lines(by_status: dict[str, dict[str, Any]]) -> list[str]:
    """`  http_400: 24 (first: input rejected ...)`, one status a line."""
    if not by_status:
        return []
    return ["errors by status:"] + [
        f"  {name}: {entry['count']:,} (first: {_short(entry['first_error'])})"
        for name, entry in by_status.items()
    ]


def _short(message: str, limit: int = 160) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def resolve_output(target: str) -> tuple[str, str | None]:
    """The output a report is about, and the job file that names it (or None).

    `target` is a job file (`*.toml`), an output path (`.jsonl` file or `.parquet` directory),
    or an errors file (`*.errors.jsonl`, whose output is found by its run state).

    Raises:
        JobError: a job file that is missing or invalid.
    """
    target = target.rstrip("/") or target  # `out.parquet/` is the directory `out.parquet`
    if target.endswith(".toml"):
        job = load_job(target)
        return job.output.path, job.source
    if target.endswith(".errors.jsonl"):
        stem = target.removesuffix(".errors.jsonl")
        for candidate in (stem + ".jsonl", stem + ".parquet"):
            if RunState.exists(RunState.directory_for(candidate)) or Path(candidate).exists():
                return candidate, None
    return target, None


def _committed_errors_end(output: str) -> int | None:
    """The committed byte size of the errors file, per the run state (None: read it all)."""
    view = RunState.peek(RunState.directory_for(output))
    if view is None:
        return None
    c = view.committed
    if c.swap_size is not None:  # a --retry-errors rewrite being swapped in: old or new file
        return None
    return c.errors_offset


def _tally(output: str, *, head: int = 0, status: str | None = None) -> Tally:
    path = OutputSpec(path=output).errors_path
    try:
        return tally_errors(path, end=_committed_errors_end(output), head=head, status=status)
    except OSError as e:
        raise InputError(f"{path}: cannot read the errors file: {e.strerror or e}") from e


def run_status(
    output: str, registry: LeaseRegistry | None = None, *, job: str | None = None
) -> RunStatus:
    """What the run state of `output` says, its live run, the leases it holds, and its errors
    by status. `job`: the job file that named `output`, if one did."""
    counts = _committed_counts(output)
    directory = RunState.directory_for(output)
    resolved = str(Path(output).resolve())
    leases = [
        lease
        for lease in lease_statuses(registry)
        if lease.get("output") and str(Path(lease["output"]).resolve()) == resolved
    ]
    return RunStatus(
        output=output,
        has_state=counts is not None,
        results=counts[0] if counts else 0,
        errors=counts[1] if counts else 0,
        live_pid=RunState.live_pid(directory),
        leases=leases,
        last_run=RunState.last_run(directory),
        job=job,
        errors_by_status=_tally(output).counts() if counts and counts[1] else {},
    )


def lease_lines(leases: list[dict[str, Any]]) -> list[str]:
    """`batchrun status` with no output: one line per lease."""
    if not leases:
        return ["no leases: no run holds an endpoint"]
    return [_lease_line(lease) for lease in leases]


@dataclass(slots=True, kw_only=True)
class LiveRuns:
    """`batchrun status` with no argument: every live run under this home, and every lease."""

    runs: list[dict[str, Any]]
    leases: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        if not self.runs:
            out = ["no live runs"]
        else:
            out = [f"{len(self.runs)} live run(s):"]
            for run in self.runs:
                where = run["endpoint"] or "?"
                leased = f", lease {', '.join(run['leases'])}" if run["leases"] else ""
                out.append(
                    f"run pid {run['pid']}: {run['output']} ({run['results']:,} results, "
                    f"{run['errors']:,} errors committed), job {run['job'] or '?'}, "
                    f"{run['provider']} {where}{leased}, since {run['started']}"
                )
        return out + lease_lines(self.leases)


def live_runs(index: RunIndex | None = None, registry: LeaseRegistry | None = None) -> LiveRuns:
    """Every run under this home whose output is locked by a live process (any provider),
    with what it has committed; and every lease, live or dead."""
    leases = lease_statuses(registry)
    runs: list[dict[str, Any]] = []
    for entry, pid in (index or RunIndex()).live():
        counts = _committed_counts(entry.output) or (0, 0)
        data = entry.to_json()
        held = [
            lease
            for lease in leases
            if lease.get("output") and str(Path(lease["output"]).resolve()) == entry.output
        ]
        if held:  # the lease knows the namespace the run resolved
            data["endpoint"] = f"{held[-1]['namespace']}/{held[-1]['endpoint']}"
        data.update(pid=pid, results=counts[0], errors=counts[1], leases=[h["id"] for h in held])
        runs.append(data)
    return LiveRuns(runs=runs, leases=leases)


@dataclass(slots=True, kw_only=True)
class ErrorsReport:
    """`batchrun errors`: why the rows of one output failed, over all its runs."""

    output: str
    errors_path: str
    job: str | None
    total: int
    by_status: dict[str, dict[str, Any]]
    retry: dict[str, Any]
    status_filter: str | None = None
    unreadable: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        which = f" with status {self.status_filter}" if self.status_filter else ""
        if not self.total:
            return [f"{self.errors_path}: no failed rows{which}"]
        out = [f"{self.errors_path}: {self.total:,} failed row(s){which}, over all runs"]
        width = max(len(name) for name in self.by_status)
        for name, entry in self.by_status.items():
            first = entry["first_error"]
            kept = "  [not retried]" if name in NOT_RETRIED else ""
            out.append(f"  {name:<{width}} {entry['count']:>7,}  {_short(first)}{kept}")
            for row in entry["rows"]:
                where = row.get("source") or f"row {row.get('row')}"
                error = str(row.get("error") or "")
                said = "" if error == first else f": {_short(error)}"
                out.append(
                    f"      {where}  id {row.get('id')!r}, "
                    f"{row.get('attempts', '?')} attempt(s){said}"
                )
            hidden = entry["count"] - len(entry["rows"])
            if hidden > 0 and entry["rows"]:
                out.append(f"      … and {hidden:,} more")
        r = self.retry
        if r["rows"]:
            out.append(
                f"--retry-errors would send {r['rows']:,} row(s) again "
                f"({', '.join(r['statuses'])}); it leaves {', '.join(sorted(NOT_RETRIED))} alone"
            )
        else:
            out.append("--retry-errors would send nothing again")
        if self.unreadable:
            out.append(f"note: {self.unreadable} line(s) of the errors file are not JSON rows")
        return out


def errors_report(target: str, *, head: int = 3, status: str | None = None) -> ErrorsReport:
    """Counts by status of an output's errors file (its committed part), the first `head`
    rows of each status, and what `--retry-errors` would send again.

    Args:
        target: an output path, a job file or an errors file (`resolve_output`).
        head: rows shown per status.
        status: only this status.

    Raises:
        InputError: there is no such output: no results, no errors file, no run state.
        JobError: a job file that is missing or invalid.
    """
    output, job = resolve_output(target)
    errors_path = OutputSpec(path=output).errors_path
    if not any(
        (
            Path(output).exists(),
            Path(errors_path).exists(),
            RunState.exists(RunState.directory_for(output)),
        )
    ):
        raise InputError(f"{target}: no such output (no results, errors file or run state)")
    tally = _tally(output, head=head, status=status)
    by_status = {
        name: {"count": t.count, "first_error": t.first_error, "rows": t.rows}
        for name, t in tally.by_status.items()
    }
    return ErrorsReport(
        output=output,
        errors_path=errors_path,
        job=job,
        total=tally.total,
        by_status=by_status,
        retry={"rows": tally.retryable, "statuses": tally.retryable_statuses},
        status_filter=status,
        unreadable=tally.unreadable,
    )
