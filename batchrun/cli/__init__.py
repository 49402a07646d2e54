"""The `batchrun` command line. Commands parse options and call plain functions; no work here.

Every error is caught once, in `BatchrunGroup.invoke` (the subcommand groups are inside it):
a `BatchrunError` is printed as one line on stderr and turned into its documented exit code,
anything else (a bug) is one line and exit 1. `BATCHRUN_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from batchrun._version import __version__
from batchrun.errors import BatchrunError

__all__ = ["main"]


class BatchrunGroup(click.Group):
    """The one error handler of every command: an error is one line and an exit code."""

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
            if os.environ.get("BATCHRUN_DEBUG"):
                raise
            click.echo(f"batchrun: error: internal error: {type(e).__name__}: {e}", err=True)
            ctx.exit(1)


@click.group(cls=BatchrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="batchrun")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """Run cost-limited batch inference jobs against inference endpoints.

    A job resumes (or creates) an endpoint, waits until it is ready, sends every input row
    once, writes results as it goes, and puts the endpoint back to rest however the run ends.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Quiet the libraries even at -vv; batchrun's own loggers carry what matters.
    for noisy in ("httpx", "httpcore", "aiohttp.access", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


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
