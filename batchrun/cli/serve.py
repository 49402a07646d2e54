"""`batchrun serve`: the local Inference Endpoints service, in the foreground.

Without `--port` it listens on a free port, written to `<state dir>/service.json`, where jobs
and `batchrun endpoints --local` find it. `--status` and `--stop` report on and stop the
service of a state directory instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from batchrun.errors import JobError

__all__ = ["serve"]


def _token(token: str | None, token_file: Path | None) -> str | None:
    """--token, else --token-file, else $BATCHRUN_SERVE_TOKEN, else None (no authentication).

    Raises:
        JobError: the token file cannot be read or is empty.
    """
    if token:
        return token
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise JobError(f"--token-file {token_file}: cannot read it: {e.strerror}") from e
        if not text:
            raise JobError(f"--token-file {token_file}: the file is empty")
        return text
    return os.environ.get("BATCHRUN_SERVE_TOKEN") or None


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Port of the control plane [default: a free one, written to service.json].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where endpoints, address and pid live [default: $BATCHRUN_HOME/local].",
)
@click.option(
    "--token",
    default=None,
    help="Require this bearer token (or --token-file, or BATCHRUN_SERVE_TOKEN).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read the token from this file.",
)
@click.option(
    "--minute",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds in a service minute (scaleToZeroTimeout is in minutes).",
)
@click.option(
    "--idle-exit",
    type=float,
    default=0.0,
    hidden=True,
    help="Exit after this many idle seconds (0: never).",
)
@click.option("--status", "show_status", is_flag=True, help="Report on the state dir's service.")
@click.option("--stop", "stop", is_flag=True, help="Stop the state dir's service.")
def serve(
    host: str,
    port: int | None,
    state_dir: Path | None,
    token: str | None,
    token_file: Path | None,
    minute: float,
    idle_exit: float,
    show_status: bool,
    stop: bool,
) -> None:
    """Run the local Inference Endpoints service (Hugging Face's API, models on this machine)."""
    from batchrun.local import (
        default_state_dir,
        port_owner,
        run_service,
        service_status,
        stop_service,
    )

    directory = (state_dir or default_state_dir()).resolve()
    if show_status:
        status = service_status(directory)
        if status is None:
            click.echo(json.dumps({"running": False, "state_dir": str(directory)}))
            raise SystemExit(1)
        click.echo(json.dumps({"running": True, **status}, indent=2))
        return
    if stop:
        pid = stop_service(directory)
        click.echo(f"stopped (pid {pid})" if pid else "not running", err=True)
        return

    if port:
        owner = port_owner(host, port)
        if owner is not None:
            raise JobError(
                f"--port {port}: taken by the batchrun service of state dir "
                f"{owner.get('state_dir', '?')} (pid {owner.get('pid', '?')}); leave out --port "
                "to take a free one"
            )

    def ready(api_url: str) -> None:
        click.echo(f"batchrun serve: listening on {api_url} (state in {directory})", err=True)

    run_service(
        host=host,
        port=port or 0,
        state_dir=directory,
        token=_token(token, token_file),
        minute=minute,
        idle_exit=idle_exit,
        on_ready=ready,
    )
