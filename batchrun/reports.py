"""Read-only views: `batchrun plan` (what a job would cost), `batchrun status` (where a run
stands, and which leases are live).

Nothing here resumes, creates or sends anything: `plan_job` counts the input cheaply (Parquet
metadata, a line count), subtracts what the run state says is committed, reads the endpoint's
state and price when the API answers (or the job's `[budget] price_per_hour`), and estimates
duration and cost at a given rate or the rate the last run measured (`RunState.last_run`).
`run_status` reads a run state without taking its lock (`RunState.peek`); `lease_statuses`
reads the lease registry. The layout of the run state is `RunState`'s alone.
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
from batchrun.errors import APIConnectionError, BatchrunError, NotFoundError
from batchrun.io.readers import open_input
from batchrun.io.state import RunState
from batchrun.job import Job
from batchrun.lifecycle.registry import LeaseRecord, LeaseRegistry

__all__ = [
    "Plan",
    "RunStatus",
    "lease_lines",
    "lease_statuses",
    "plan_job",
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
        if limits:
            verdict = {True: "fits", False: "does NOT fit", None: "cannot tell whether it fits"}
            out.append(f"budget: {', '.join(limits)}: {verdict[self.fits]}")
        out.extend(f"note: {n}" for n in self.notes)
        return out


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        if not self.has_state:
            return [f"{self.output}: no run state (never run, or started over)"]
        out = [f"{self.output}: {self.results:,} results, {self.errors:,} errors committed"]
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


def run_status(output: str, registry: LeaseRegistry | None = None) -> RunStatus:
    """What the run state of `output` says, its live run, and the leases it holds."""
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
    )


def lease_lines(leases: list[dict[str, Any]]) -> list[str]:
    """`batchrun status` with no output: one line per lease."""
    if not leases:
        return ["no leases: no run holds an endpoint"]
    return [_lease_line(lease) for lease in leases]
