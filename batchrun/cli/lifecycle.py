"""`batchrun plan`, `batchrun status` and `batchrun reap`: cost before, state during, cleanup after.

- `plan JOB.toml`: rows, duration and cost before anything is spent (no resume, no create).
- `status [OUTPUT_OR_JOB]`: what a run's state says (errors by status too), whether its run
  and lease are live, the cost so far; with no argument, every live run under batchrun's home
  (any provider, `url` included) and every lease.
- `reap`: for every lease whose runner died (and no watchdog settled it), apply its `on_exit`.
  Exit 0 when every such endpoint is at rest, 6 when one could not be put to rest.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from batchrun.job import load_job, parse_overrides
from batchrun.lifecycle.reaper import reap_dead_leases
from batchrun.reports import live_runs, plan_job, resolve_output, run_status

__all__ = ["plan", "reap", "status"]


def _emit(data: object, lines: list[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, sort_keys=True, default=str))
    else:
        for line in lines:
            click.echo(line)


@click.command("plan")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--rows-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Rate to assume (default: the rate the last run measured).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a job key, as for `batchrun run` (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
def plan(
    job_file: Path, rows_per_second: float | None, assignments: tuple[str, ...], as_json: bool
) -> None:
    """Estimate rows, duration and cost of JOB_FILE, and whether it fits its budget.

    Counts the input cheaply, subtracts what is already committed, reads the endpoint's state
    and price when the API answers. Spends nothing: no endpoint is resumed or created.
    """
    job = load_job(job_file, **parse_overrides(list(assignments)))
    result = asyncio.run(plan_job(job, rows_per_second=rows_per_second))
    _emit(result.to_json(), result.lines(), as_json)


@click.command("status")
@click.argument("target", metavar="[OUTPUT_OR_JOB]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(target: str | None, as_json: bool) -> None:
    """Where the run on an output (or a job file's output) stands; with no argument, every
    live run under this home and every lease, live or dead.

    \b
    Examples:
      batchrun status
      batchrun status jobs/nightly.toml
      batchrun status out/results.jsonl --json
    """
    if target is None:
        runs = live_runs()
        _emit(runs.to_json(), runs.lines(), as_json)
        return
    output, job = resolve_output(target)
    result = run_status(output, job=job)
    _emit(result.to_json(), result.lines(), as_json)


@click.command("reap")
@click.option("--dry-run", is_flag=True, help="Only say what would be done.")
@click.pass_context
def reap(ctx: click.Context, dry_run: bool) -> None:
    """Put to rest the endpoints of runs that died without doing it (exit 6 if one cannot be)."""
    results = asyncio.run(reap_dead_leases(dry_run=dry_run))
    if not results:
        click.echo("nothing to reap: no lease of a dead run")
    for r in results:
        click.echo(r.message, err=not r.ok)
    if any(not r.ok for r in results):
        ctx.exit(6)
