"""`batchrun errors OUTPUT_OR_JOB`: why rows failed, without opening the errors file.

Counts by status over every run, the first messages and the input lines they came from, and
what `--retry-errors` would send again. Read-only (`batchrun.reports.errors_report`); exit 0,
or 2 when there is no such output or job.
"""

from __future__ import annotations

import json

import click

from batchrun.reports import errors_report

__all__ = ["errors"]


@click.command("errors")
@click.argument("target", metavar="OUTPUT_OR_JOB")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--status", "status", metavar="S", help="Only rows of this status (e.g. http_400).")
@click.option(
    "--head",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    metavar="N",
    help="Rows shown per status.",
)
def errors(target: str, as_json: bool, status: str | None, head: int) -> None:
    """Why rows of OUTPUT_OR_JOB failed: counts by status, first rows, what a retry resends.

    OUTPUT_OR_JOB is a job file (.toml), its output (.jsonl file or .parquet directory) or the
    errors file itself. Only the committed part of the errors file is read, so it is safe
    while a run is live.

    \b
    Examples:
      batchrun errors jobs/nightly.toml
      batchrun errors out/results.parquet --status http_400 --head 10
      batchrun errors out/results.jsonl --json | jq '.by_status | map_values(.count)'
    """
    report = errors_report(target, head=head, status=status)
    if as_json:
        click.echo(json.dumps(report.to_json(), default=str))
    else:
        for line in report.lines():
            click.echo(line)
