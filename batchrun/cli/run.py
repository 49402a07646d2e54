"""`batchrun run JOB.toml`: parse options, install signal handlers, call `arun_job`, print JSON.

SIGINT and SIGTERM stop dispatching and give in-flight requests the job's grace period; a
second signal skips the grace. The summary goes to stdout as one JSON object and the process
exits with its code (DESIGN.md, "Exit codes"); errors are handled by the `batchrun` group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from batchrun.errors import BatchrunError, JobError
from batchrun.io.state import RunState
from batchrun.job import RANGES, Job, load_job, parse_overrides
from batchrun.progress import show_summary
from batchrun.runner import RunControl, RunSummary, arun_job
from batchrun.shards.driver import arun_sharded, has_plan
from batchrun.summary import one_line

__all__ = ["run"]

log = logging.getLogger(__name__)


def _summary_on_every_exit(command: Callable[..., None]) -> Callable[..., None]:
    """Print the JSON summary for an error that has none (the job file could not be loaded,
    say): a scheduler parses stdout on every exit. `arun_job`'s errors carry their own."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except BatchrunError as e:
            if not isinstance(getattr(e, "summary", None), RunSummary):
                _print_summary(RunSummary.of_error(e))
            raise
        except Exception as e:  # a bug: the group prints it as "internal error" (exit 1)
            _print_summary(
                RunSummary(error=one_line(f"internal error: {type(e).__name__}: {e}"), exit_code=1)
            )
            raise

    return wrapper


class _Concurrency(click.ParamType[int | str]):
    """``--concurrency``: an integer in its range, or "auto"."""

    name = "N|auto"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | str:
        if value == "auto" or isinstance(value, int):
            return value  # type: ignore[no-any-return]
        high = int(RANGES["run"]["concurrency"].high)
        return click.IntRange(1, high).convert(value, param, ctx)


class _RunCommand(click.Command):
    """`batchrun run`, whose bad options (a click usage error, exit 2) get a summary too."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _print_summary(RunSummary(error=one_line(e.format_message()), exit_code=e.exit_code))
            raise


@click.command("run", cls=_RunCommand)
@_summary_on_every_exit  # outside the options: they attach to the function it wraps
# Any path: `load_job` says itself what is wrong with a directory, a FIFO or a device.
@click.argument("job_file", type=click.Path(path_type=Path))
@click.option("--restart", is_flag=True, help="Discard the output and run state; start over.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before --restart discards results.")
@click.option("--retry-errors", is_flag=True, help="Send the errors file's rows again, then go on.")
@click.option(
    "--concurrency",
    type=_Concurrency(),
    help='Requests in flight, or "auto" (found by the controller, up to max_concurrency).',
)
@click.option(
    "--limit",
    type=click.IntRange(0, int(RANGES["run"]["limit"].high)),
    help="Only the first N input rows.",
)
@click.option("--output", "output", help="Results path (.jsonl file or .parquet directory).")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a job key, e.g. --set run.parameters.max_new_tokens=16 (repeatable).",
)
@click.option(
    "--update-endpoint",
    is_flag=True,
    help="An existing endpoint that differs from the job's creation keys: update it, then run.",
)
@click.option(
    "--openai-batch",
    "openai_batch",
    metavar="FILE.jsonl",
    help=(
        "Send an OpenAI batch input file: it becomes the job's [input] (path = FILE, custom_id "
        'as the id) with [run] request_format = "openai-batch", so the job needs only an '
        "[endpoint] and an [output] (or --output); the output is OpenAI's batch output file."
    ),
)
@click.option(
    "--best-effort",
    is_flag=True,
    help='scale = "deadline": run even when the plan says the deadline cannot be met.',
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or progress lines.")
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="Run the input as shards in W worker processes, one endpoint lease ([run] workers).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where shard workers run: local processes, or Ray tasks (RAY_ADDRESS joins a "
    "cluster; extra batchrun[ray]) ([run] executor).",
)
def run(
    job_file: Path,
    restart: bool,
    yes: bool,
    retry_errors: bool,
    concurrency: int | str | None,
    limit: int | None,
    output: str | None,
    assignments: tuple[str, ...],
    update_endpoint: bool,
    openai_batch: str | None,
    best_effort: bool,
    quiet: bool,
    workers: int | None,
    executor: str | None,
) -> None:
    """Run JOB_FILE: send every uncommitted input row once; resume by default.

    Prints a JSON summary on stdout on every exit. Exit codes: 0 all rows succeeded, 1 a bug
    or a stalled run, 2 bad job or input (or an endpoint that differs from the job: see
    --update-endpoint), 3 rows in the errors file, 4 budget or deadline, 5 endpoint failed,
    failed endpoint-wide (401/403/404, unreachable, undecodable: rows stay pending) or the API
    unreachable, 6 endpoint not put to rest, 7 output could not be written (disk full;
    resumable), 8 another run holds this output, 130/143 interrupted (resumable), 141 stdout
    was closed.
    """
    overrides = parse_overrides(list(assignments))
    if concurrency is not None:
        overrides.setdefault("run", {})["concurrency"] = concurrency
    if output is not None:
        overrides.setdefault("output", {})["path"] = output
    if update_endpoint:
        overrides.setdefault("endpoint", {})["update"] = True
    if openai_batch is not None:
        overrides.setdefault("input", {}).update(path=openai_batch, format="jsonl")
        overrides.setdefault("run", {})["request_format"] = "openai-batch"
    if best_effort:
        overrides.setdefault("run", {})["best_effort"] = True
    if workers is not None:
        overrides.setdefault("run", {})["workers"] = workers
    if executor is not None:
        overrides.setdefault("run", {})["executor"] = executor
    job = load_job(job_file, **overrides)
    if restart and not yes:
        _confirm_restart(job)
    try:
        with _log_levels(quiet):
            summary = asyncio.run(
                _run_with_signals(
                    job,
                    restart=restart,
                    retry_errors=retry_errors,
                    limit=limit,
                    quiet=quiet,
                )
            )
    except BatchrunError as e:
        partial: RunSummary | None = getattr(e, "summary", None)
        if partial is not None:  # the summary is printed on every exit; the group says why
            _print_summary(partial, quiet=quiet)
        raise
    _print_summary(summary, quiet=quiet)
    sys.exit(summary.exit_code)


@contextlib.contextmanager
def _log_levels(quiet: bool) -> Iterator[None]:
    """The run's logger levels, put back afterwards (a caller in the same process, such as a
    test or a notebook, keeps its own): -q means no per-retry lines either (errors that end
    the run are printed by the group); without -q, progress lines off a terminal."""
    names = ["batchrun.pool.retries"]
    if not quiet and logging.getLogger().getEffectiveLevel() > logging.INFO:
        names += ["batchrun.runner", "batchrun.progress"]
    before = {name: logging.getLogger(name).level for name in names}
    logging.getLogger("batchrun.pool.retries").setLevel(logging.ERROR if quiet else logging.NOTSET)
    for name in names[1:]:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def _confirm_restart(job: Job) -> None:
    """On a terminal, ask before `--restart` discards committed rows; without one, go on (the
    run logs one WARNING line saying what it discarded).

    Raises:
        JobError: the answer was no; nothing was discarded or started.
    """
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return
    view = RunState.peek(RunState.directory_for(job.output.path))
    if view is None:
        return
    c = view.committed
    if not (c.results_count or c.errors_count):
        return
    question = (
        f"--restart discards {c.results_count} result(s) and {c.errors_count} error row(s) "
        f"in {job.output.path}. Go on?"
    )
    if not click.confirm(question, default=False, err=True):
        raise JobError("--restart not confirmed: nothing was discarded (--yes skips the question)")


def _print_summary(summary: RunSummary, *, quiet: bool = False) -> None:
    if not quiet:
        show_summary(summary)  # a few lines for people, on a terminal only (stderr)
    sys.stdout.buffer.write(orjson.dumps(summary.to_json()) + b"\n")
    sys.stdout.flush()


async def _run_with_signals(
    job: Job,
    *,
    restart: bool,
    retry_errors: bool,
    limit: int | None,
    quiet: bool,
) -> RunSummary:
    loop = asyncio.get_running_loop()
    control = RunControl()

    def on_signal(name: str) -> None:
        if control.reason is None:
            log.warning("%s: finishing the requests in flight; again to stop now", name.upper())
            control.stop(name)
        else:
            log.warning("%s again: not waiting for requests in flight", name.upper())
            control.stop(name, grace=0)

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, "sigint" if sig == signal.SIGINT else "sigterm")
    try:
        if job.run.workers > 1 or has_plan(job):  # a plan stays sharded
            if retry_errors:
                raise JobError("--retry-errors does not work on a sharded run yet")
            return await arun_sharded(
                job,
                workers=job.run.workers,
                restart=restart,
                limit=limit,
                progress=not quiet,
                control=control,
            )
        return await arun_job(
            job,
            restart=restart,
            retry_errors=retry_errors,
            limit=limit,
            progress=not quiet,
            control=control,
        )
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
