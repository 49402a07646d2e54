"""The `batchrun` command line. Commands parse options and call plain functions; no work here.

Every error is caught once, in `BatchrunGroup.invoke` (the subcommand groups are inside it):
a `BatchrunError` is printed as one line on stderr and turned into its documented exit code,
anything else (a bug) is one line and exit 1. `BATCHRUN_DEBUG=1` shows the traceback instead.
A closed pipe (`batchrun endpoints list | head -1`) is no error: the rest of the output goes
nowhere, nothing is printed, and the exit code is 141 (128 + SIGPIPE), as for other commands
in a pipeline that were cut short.

`-v` is accepted before the subcommand and after it (`batchrun run job.toml -v`): every
subcommand gets the same counting option, and the counts add up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import sys
from typing import Any

import click

from batchrun._version import __version__
from batchrun.errors import BatchrunError

__all__ = ["main"]

EXIT_CLOSED_PIPE = 141
"""Exit code when the reader of stdout went away (128 + SIGPIPE, like a shell tool)."""


class BatchrunGroup(click.Group):
    """The one error handler of every command: an error is one line and an exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except SystemExit as e:
            # click itself turns a closed pipe met outside a command (`batchrun --help | head
            # -1`) into exit 1; it is the same closed pipe as inside one
            if e.code == 1 and _drop_closed_pipe():
                raise SystemExit(EXIT_CLOSED_PIPE) from None
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BatchrunError as e:
            if os.environ.get("BATCHRUN_DEBUG"):
                raise
            click.echo(f"batchrun: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except Exception as e:
            # BrokenPipeError from our own stdout or stderr (not from some socket)
            if isinstance(e, OSError) and e.errno == errno.EPIPE and _drop_closed_pipe():
                ctx.exit(EXIT_CLOSED_PIPE)
            if os.environ.get("BATCHRUN_DEBUG"):
                raise
            with contextlib.suppress(OSError):  # stderr may be the closed pipe
                click.echo(f"batchrun: error: internal error: {type(e).__name__}: {e}", err=True)
            ctx.exit(1)


def _drop_closed_pipe() -> bool:
    """Point a closed stdout or stderr at /dev/null, so the flush at exit cannot fail again
    ("Exception ignored ... BrokenPipeError"); whether one of them was closed."""
    closed = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            if not _is_closed_pipe(fd):
                continue
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)
            finally:
                os.close(devnull)
            closed = True
        except (OSError, ValueError):
            continue
    return closed


def _is_closed_pipe(fd: int) -> bool:
    """Whether `fd` is a pipe (or socket) whose reader went away: poll says POLLERR/POLLHUP."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger().setLevel(level)  # a second call (a `-v` after the subcommand) raises it
    # Quiet the libraries even at -vv; batchrun's own loggers carry what matters.
    for noisy in ("httpx", "httpcore", "aiohttp.access", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


_VERBOSE_KEY = "batchrun.verbose"


def _more_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """`-v` after a subcommand: add to the count given before it, and set the level again."""
    if value:
        root = ctx.find_root()
        root.meta[_VERBOSE_KEY] = root.meta.get(_VERBOSE_KEY, 0) + value
        _configure_logging(root.meta[_VERBOSE_KEY])


def _accept_verbose(group: click.Group) -> None:
    """Give every subcommand (at any depth) that has no `-v` of its own the counting `-v`."""
    for command in group.commands.values():
        if not any("-v" in p.opts or "--verbose" in p.opts for p in command.params):
            command.params.append(
                click.Option(
                    ["-v", "--verbose"],
                    count=True,
                    expose_value=False,
                    callback=_more_verbose,
                    help="More log output on stderr (-vv for debug); also before the command.",
                )
            )
        if isinstance(command, click.Group):
            _accept_verbose(command)


@click.group(cls=BatchrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="batchrun")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Run cost-limited batch inference jobs against inference endpoints.

    A job resumes (or creates) an endpoint, waits until it is ready, sends every input row
    once, writes results as it goes, and puts the endpoint back to rest however the run ends.
    """
    ctx.meta[_VERBOSE_KEY] = verbose
    _configure_logging(verbose)


# Subcommands register here, one import and one add_command each.
from batchrun.cli.endpoints import endpoints  # noqa: E402

main.add_command(endpoints)
from batchrun.cli.serve import serve  # noqa: E402

main.add_command(serve)
from batchrun.cli.run import run  # noqa: E402

main.add_command(run)
from batchrun.cli.lifecycle import plan, reap, status  # noqa: E402

main.add_command(plan)
main.add_command(status)
main.add_command(reap)
from batchrun.cli.errors import errors  # noqa: E402

main.add_command(errors)

_accept_verbose(main)  # last: after every subcommand is registered
