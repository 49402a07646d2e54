"""`batchrun endpoints …`: every operation of the Inference Endpoints API from the shell.

The commands mirror huggingface_hub's `hf endpoints` where they overlap (`ls`, `describe`,
`deploy`, `--repo`, `--json`, `-q/--quiet`, `--no-truncate`, `-e/--env`, `--env-file`,
`-s/--secrets`, `--secrets-file`, `--scaling-metric`, ...), and every help page ends with
examples. Each one parses its options and calls `EndpointsClient`; errors surface as batchrun errors, which the top-level
group prints as one line with the documented exit code: 0 done; 2 bad arguments or the API
refused; 5 the endpoint failed, `wait` timed out, or the API could not be reached; 1 anything
else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from batchrun.cli.envfile import parse_env_text, read_env_file, resolve_pairs
from batchrun.endpoints import Endpoint, EndpointsClient, Hardware
from batchrun.endpoints.auth import resolve_token
from batchrun.endpoints.connect import HOME_SERVICE, control_plane
from batchrun.endpoints.payloads import CREATE_DEFAULTS, ENDPOINT_TYPES, SCALING_METRICS, CreateSpec
from batchrun.job import parse_duration

__all__ = ["api_options", "endpoints"]

T = TypeVar("T")

_ALIASES = {"ls": "list", "describe": "get", "deploy": "create"}


class _EndpointsGroup(click.Group):
    """Resolves `hf endpoints` aliases (errors are the `batchrun` group's to print)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, _ALIASES.get(cmd_name, cmd_name))


@dataclass(slots=True)
class _Api:
    """The shared `--api-url/--local/--namespace/--token` options of one command."""

    api_url: str | None
    namespace: str | None
    token: str | None = field(repr=False)
    local: bool = False

    def wants_local(self) -> bool:
        """Whether the API is this home's local service: `--local`, or
        `BATCHRUN_ENDPOINTS_API=local`, unless `--api-url` is given."""
        if self.api_url:
            return False
        return self.local or os.environ.get("BATCHRUN_ENDPOINTS_API", "").strip() == "local"

    def run(self, call: Callable[[EndpointsClient], Awaitable[T]]) -> T:
        """Run `call` with a client built from the options, on a fresh event loop."""

        async def go() -> T:
            namespace = None if self.namespace == "*" else self.namespace
            api_url, token = self.api_url, self.token
            if self.wants_local():
                api_url, token = await control_plane("local", HOME_SERVICE, token)
            async with EndpointsClient(api_url=api_url, token=token, namespace=namespace) as client:
                return await call(client)

        return asyncio.run(go())

    def single_namespace(self) -> None:
        if self.namespace == "*":
            raise click.BadParameter(
                "'*' lists every namespace; it only works with `list`", param_hint="--namespace"
            )


def api_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--api-url`, `--local`, `--namespace` and `--token` to a command; it receives them
    as `api`."""

    @click.option(
        "--api-url",
        metavar="URL",
        help="Endpoints API base URL, /v2 optional [default: --local, else "
        "$BATCHRUN_ENDPOINTS_API (a URL or `local`), else Hugging Face's].",
    )
    @click.option(
        "--local",
        is_flag=True,
        help="This home's local service ($BATCHRUN_HOME/local), its token read from there; "
        "started when none runs.",
    )
    @click.option(
        "--namespace",
        metavar="NS",
        help="User or organization [default: yours, from whoami]; `list` also takes '*'.",
    )
    @click.option(
        "--token",
        metavar="TOKEN",
        help="Token [default: with --local the home's service's; else $HF_TOKEN, "
        "$HUGGING_FACE_HUB_TOKEN, $HF_HOME/token]. "
        "Prefer those: a flag shows in `ps`.",
    )
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        api_url: str | None,
        local: bool,
        namespace: str | None,
        token: str | None,
        **kwargs: Any,
    ) -> Any:
        return fn(*args, api=_Api(api_url, namespace, token, local), **kwargs)

    return wrapper


class _Duration(click.ParamType[float]):
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _variables(
    items: Sequence[str], path: str | None, *, option: str, file_option: str
) -> dict[str, str] | None:
    """A dotenv file's variables, then the `KEY=VALUE` / `NAME` options over them (as `hf`
    does); None when neither is given.

    Raises:
        InputError: a missing file, a bad line (file:line), a NAME not in the environment.
    """
    if not items and path is None:
        return None
    environ = _Environ()
    out: dict[str, str] = {}
    if path is not None:
        text, source = read_env_file(path, file_option)
        out.update(parse_env_text(text, source, environ))
    out.update(resolve_pairs(items, option, environ))
    return out


class _Environ(Mapping[str, str]):
    """The environment a bare NAME is read from, where `HF_TOKEN` falls back to your Hugging
    Face token (`$HUGGING_FACE_HUB_TOKEN`, the token file), so that `-s HF_TOKEN` works after
    `hf auth login`, as in `hf`. The token is looked up only when HF_TOKEN is asked for."""

    def __getitem__(self, key: str) -> str:
        if key in os.environ:
            return os.environ[key]
        if key == "HF_TOKEN" and (token := resolve_token()):
            return token
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def _examples(*commands: str) -> str:
    """A help page's closing Examples section; `\b` keeps click from rewrapping the lines."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {c}" for c in commands)


def _custom_image(
    url: str | None, health_route: str | None, port: int | None
) -> dict[str, Any] | None:
    if url is None:
        if health_route is not None or port is not None:
            raise click.UsageError("--health-route and --port need --custom-image")
        return None
    image: dict[str, Any] = {"url": url}
    if health_route is not None:
        image["health_route"] = health_route
    if port is not None:
        image["port"] = port
    return image


# -- output -------------------------------------------------------------------------------


_CELL_WIDTH = 40  # a longer cell is cut with "…" unless --no-truncate


def _cut(cell: str) -> str:
    return cell if len(cell) <= _CELL_WIDTH else cell[: _CELL_WIDTH - 1] + "…"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, truncate: bool = True) -> None:
    if truncate:
        rows = [[_cut(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])] + [line[-1]]
        click.echo("  ".join(cells).rstrip())


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _instance(e: Endpoint) -> str:
    return " ".join(v for v in (e.instance_type, e.instance_size) if v) or "-"


def _replicas(e: Endpoint) -> str:
    now = f"{_text(e.ready_replica)}/{_text(e.target_replica)}"
    return f"{now} ({_text(e.min_replica)}-{_text(e.max_replica)})"


def _describe(e: Endpoint) -> None:
    rows = [
        ("name", e.name),
        ("namespace", e.namespace),
        ("state", e.state_text),
        ("message", e.message),
        ("url", e.url),
        ("model", e.repository),
        ("revision", e.revision),
        ("task", e.task),
        ("framework", e.framework),
        ("type", e.type),
        ("provider", " ".join(v for v in (e.vendor, e.region) if v)),
        ("instance", f"{_text(e.accelerator)} {_instance(e)}"),
        ("replicas", _replicas(e) + " ready/target (min-max)"),
        ("scale to zero", f"{e.scale_to_zero_timeout} min" if e.scale_to_zero_timeout else None),
        ("health route", e.health_route),
        ("created", e.created_at.isoformat() if e.created_at else None),
        ("updated", e.updated_at.isoformat() if e.updated_at else None),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        click.echo(f"{key + ':':<{width}} {_text(value)}")


def _json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _shown(raw: dict[str, Any]) -> dict[str, Any]:
    """The server's JSON with any secret values hidden: an API that echoes `model.secrets`
    back must not put them on a terminal or in a log."""
    model = raw.get("model")
    if not isinstance(model, dict) or not model.get("secrets"):
        return raw
    secrets = model["secrets"]
    hidden = {k: "***" for k in secrets} if isinstance(secrets, dict) else "***"
    return {**raw, "model": {**model, "secrets": hidden}}


def _show(endpoint: Endpoint, *, as_json: bool, quiet: bool) -> None:
    if as_json:
        _json(_shown(endpoint.raw))
    elif quiet:
        click.echo(endpoint.name)
    else:
        _describe(endpoint)


def _hint(text: str) -> None:
    click.echo(text, err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the server's JSON.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print only names, one a line.")
no_truncate_option = click.option(
    "--no-truncate",
    is_flag=True,
    help=f"Show every table cell whole (longer than {_CELL_WIDTH} characters they are cut with …).",
)


def _wait_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--refresh-every",
        type=_Duration(),
        default=5.0,
        show_default=True,
        help="Seconds between two looks at the state.",
    )(fn)
    return click.option(
        "--timeout",
        type=_Duration(),
        default=None,
        help="Give up after this long (e.g. 600, 10m) [default: no limit].",
    )(fn)


# -- commands -----------------------------------------------------------------------------


@click.group(
    cls=_EndpointsGroup,
    epilog=_examples(
        "batchrun endpoints list --local",
        "batchrun endpoints create echo --local --repo batchrun/echo --task text-generation --wait",
        "batchrun endpoints pause my-endpoint --namespace my-org",
    ),
)
def endpoints() -> None:
    """Manage Inference Endpoints: Hugging Face's, or the local service's (`batchrun serve`).

    Names from `hf endpoints` work too: `ls`, `describe`, `deploy`, `--repo`, `-e/--env`,
    `--env-file`, `-s/--secrets`, `--secrets-file`, `--no-truncate`.

    Exit codes: 0 done; 2 bad arguments, or the API refused (401, 403, 404, 409, 422); 5 the
    endpoint failed, `wait` timed out, or the API could not be reached; 1 anything else.
    """


@endpoints.command(
    "list",
    epilog=_examples(
        "batchrun endpoints list",
        "batchrun endpoints ls --local -q",
        "batchrun endpoints list --namespace '*' --no-truncate",
    ),
)
@api_options
@json_option
@quiet_option
@no_truncate_option
def list_(api: _Api, as_json: bool, quiet: bool, no_truncate: bool) -> None:
    """List endpoints (alias: ls); `--namespace '*'` lists yours and every organization's."""
    found = api.run(lambda c: c.list(api.namespace))
    if as_json:
        _json([_shown(e.raw) for e in found])
        return
    if quiet:
        for e in found:
            click.echo(e.name)
        return
    if not found:
        _hint(f"no endpoints in namespace {api.namespace or '(yours)'}")
        return
    headers = ["NAME", "STATE", "MODEL", "TASK", "INSTANCE", "REPLICAS", "URL"]
    rows = [
        [
            e.name,
            e.state_text,
            _text(e.repository),
            _text(e.task),
            _instance(e),
            _replicas(e),
            _text(e.url),
        ]
        for e in found
    ]
    if api.namespace == "*":
        headers.insert(0, "NAMESPACE")
        rows = [[e.namespace, *row] for e, row in zip(found, rows, strict=True)]
    _table(headers, rows, truncate=not no_truncate)


@endpoints.command(
    "get",
    epilog=_examples(
        "batchrun endpoints get my-endpoint",
        "batchrun endpoints describe my-endpoint --namespace my-org --json",
        "batchrun endpoints get echo --local",
    ),
)
@click.argument("name")
@api_options
@json_option
@quiet_option
def get(name: str, api: _Api, as_json: bool, quiet: bool) -> None:
    """Show one endpoint (alias: describe)."""
    api.single_namespace()
    _show(api.run(lambda c: c.get(name)), as_json=as_json, quiet=quiet)


def _model_options(fn: Callable[..., Any], *, create: bool) -> Callable[..., Any]:
    """Options shared by create and update; create gives them defaults, update sends only those given."""

    def default(field: str) -> Any:
        return CREATE_DEFAULTS[field] if create else None

    options = [
        click.option(
            "--repository",
            "--repo",
            "repository",
            required=create,
            metavar="REPO",
            help="Model repository, e.g. gpt2 or batchrun/echo.",
        ),
        click.option(
            "--task",
            required=create,
            metavar="TASK",
            help="Hugging Face task, e.g. text-generation, feature-extraction.",
        ),
        click.option("--framework", default=default("framework"), show_default=create),
        click.option("--revision", metavar="REV", help="Model revision."),
        click.option("--accelerator", default=default("accelerator"), show_default=create),
        click.option("--instance-type", default=default("instance_type"), show_default=create),
        click.option("--instance-size", default=default("instance_size"), show_default=create),
        click.option(
            "--min-replica",
            type=click.IntRange(min=0),
            default=default("min_replica"),
            show_default=create,
        ),
        click.option(
            "--max-replica",
            type=click.IntRange(min=1),
            default=default("max_replica"),
            show_default=create,
        ),
        click.option(
            "--scale-to-zero-timeout",
            type=click.IntRange(min=1),
            metavar="MINUTES",
            help="Idle minutes before it scales to zero.",
        ),
        click.option("--scaling-metric", type=click.Choice(SCALING_METRICS)),
        click.option("--scaling-threshold", type=float),
        click.option(
            "--custom-image",
            metavar="URL",
            help="Container image to run instead of Hugging Face's.",
        ),
        click.option(
            "--health-route", metavar="PATH", help="Health route of --custom-image, e.g. /health."
        ),
        click.option(
            "--port", type=click.IntRange(1, 65535), help="Port --custom-image listens on."
        ),
        click.option(
            "-e",
            "--env",
            "env",
            multiple=True,
            metavar="KEY=VALUE|NAME",
            help="Container environment variable (repeatable); a bare NAME takes its value "
            "from your environment.",
        ),
        click.option(
            "--env-file",
            metavar="PATH",
            help="Container environment from a dotenv file (KEY=VALUE lines, # comments; "
            "`-` reads stdin); -e options override it.",
        ),
        click.option(
            "-s",
            "--secrets",
            "--secret",
            "secrets",
            multiple=True,
            metavar="NAME|KEY=VALUE",
            help="Secret container environment variable (repeatable). Prefer NAME: the value "
            "is read from your environment (e.g. -s HF_TOKEN) and never shown; KEY=VALUE puts "
            "it in your shell history.",
        ),
        click.option(
            "--secrets-file",
            metavar="PATH",
            help="Secrets from a dotenv file (`-` reads stdin); -s options override it.",
        ),
        click.option("--tag", "tags", multiple=True, help="Tag (repeatable)."),
        click.option(
            "--type",
            "endpoint_type",
            type=click.Choice(ENDPOINT_TYPES),
            default=default("type"),
            show_default=create,
            help="Who may call it; protected = authenticated (a token is required).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _fields(kw: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for create/update from the shared options."""
    if kw["env_file"] == "-" and kw["secrets_file"] == "-":
        raise click.UsageError("only one of --env-file and --secrets-file can read stdin (-)")
    return {
        "repository": kw["repository"],
        "task": kw["task"],
        "framework": kw["framework"],
        "revision": kw["revision"],
        "accelerator": kw["accelerator"],
        "instance_type": kw["instance_type"],
        "instance_size": kw["instance_size"],
        "min_replica": kw["min_replica"],
        "max_replica": kw["max_replica"],
        "scale_to_zero_timeout": kw["scale_to_zero_timeout"],
        "scaling_metric": kw["scaling_metric"],
        "scaling_threshold": kw["scaling_threshold"],
        "custom_image": _custom_image(kw["custom_image"], kw["health_route"], kw["port"]),
        "env": _variables(kw["env"], kw["env_file"], option="--env", file_option="--env-file"),
        "secrets": _secrets(kw["secrets"], kw["secrets_file"]),
        "tags": list(kw["tags"]) or None,
        "type": kw["endpoint_type"],
    }


def _secrets(items: Sequence[str], path: str | None) -> dict[str, str] | None:
    if any("=" in item for item in items):
        _hint(
            "batchrun: warning: -s KEY=VALUE leaves the value in your shell history and in `ps`; "
            "prefer -s NAME (read from your environment) or --secrets-file"
        )
    if path not in (None, "-") and os.name == "posix":
        with contextlib.suppress(OSError):  # a missing file is read's to report
            mode = os.stat(path).st_mode & 0o777
            if mode & 0o077:
                _hint(
                    f"batchrun: warning: {path} is readable by other users (mode {mode:o}); "
                    f"chmod 600 {path}"
                )
    return _variables(items, path, option="--secrets", file_option="--secrets-file")


@endpoints.command(
    "create",
    epilog=_examples(
        "batchrun endpoints create echo --local --repo batchrun/echo --task text-generation --wait",
        "batchrun endpoints deploy my-endpoint --repo gpt2 --task text-generation "
        "--instance-size x4 --env-file prod.env -s HF_TOKEN",
        "batchrun endpoints create embed --repo sentence-transformers/all-MiniLM-L6-v2 "
        "--task feature-extraction --min-replica 0 --scale-to-zero-timeout 15",
    ),
)
@click.argument("name")
@functools.partial(_model_options, create=True)
@click.option("--vendor", default=CREATE_DEFAULTS["vendor"], show_default=True)
@click.option("--region", default=CREATE_DEFAULTS["region"], show_default=True)
@click.option("--wait", "wait_ready", is_flag=True, help="Wait until it is ready.")
@_wait_options
@api_options
@json_option
@quiet_option
def create(
    name: str,
    api: _Api,
    as_json: bool,
    quiet: bool,
    wait_ready: bool,
    timeout: float | None,
    refresh_every: float,
    vendor: str,
    region: str,
    **kw: Any,
) -> None:
    """Create an endpoint (alias: deploy); see `hardware` for valid instance choices."""
    api.single_namespace()
    spec = CreateSpec(vendor=vendor, region=region, **_fields(kw))

    async def go(c: EndpointsClient) -> Endpoint:
        endpoint = await c.create(name, spec)
        if wait_ready:
            endpoint = await c.wait(
                name, namespace=endpoint.namespace, timeout=timeout, refresh_every=refresh_every
            )
        return endpoint

    endpoint = api.run(go)
    _show(endpoint, as_json=as_json, quiet=quiet)
    if not wait_ready and not quiet and not as_json:
        _hint(f"wait for it with: batchrun endpoints wait {name} --namespace {endpoint.namespace}")


@endpoints.command(
    "update",
    epilog=_examples(
        "batchrun endpoints update my-endpoint --min-replica 0 --max-replica 2",
        "batchrun endpoints update my-endpoint -e MAX_BATCH_SIZE=16 --secrets-file secrets.env",
        "batchrun endpoints update echo --local --instance-size x4 --json",
    ),
)
@click.argument("name")
@functools.partial(_model_options, create=False)
@api_options
@json_option
@quiet_option
def update(name: str, api: _Api, as_json: bool, quiet: bool, **kw: Any) -> None:
    """Change an endpoint: only the options given are sent."""
    api.single_namespace()
    fields = {k: v for k, v in _fields(kw).items() if v is not None}
    _show(api.run(lambda c: c.update(name, **fields)), as_json=as_json, quiet=quiet)


def _lifecycle(action: str, doc: str, examples: str) -> click.Command:
    @click.argument("name")
    @api_options
    @json_option
    @quiet_option
    def command(name: str, api: _Api, as_json: bool, quiet: bool) -> None:
        api.single_namespace()
        _show(api.run(lambda c: getattr(c, action)(name)), as_json=as_json, quiet=quiet)

    command.__doc__ = doc
    return endpoints.command(action.replace("_", "-"), epilog=examples)(command)


_lifecycle(
    "pause",
    "Pause an endpoint: it stops billing and starts again only on `resume`.",
    _examples(
        "batchrun endpoints pause my-endpoint",
        "batchrun endpoints pause echo --local -q",
        "batchrun endpoints pause my-endpoint --namespace my-org --json",
    ),
)
_lifecycle(
    "scale_to_zero",
    "Scale an endpoint to zero: it stops billing and wakes on the next request.",
    _examples(
        "batchrun endpoints scale-to-zero my-endpoint",
        "batchrun endpoints scale-to-zero echo --local --json",
    ),
)


@endpoints.command(
    "resume",
    epilog=_examples(
        "batchrun endpoints resume my-endpoint --wait --timeout 15m",
        "batchrun endpoints resume echo --local --fail-if-already-running",
    ),
)
@click.argument("name")
@click.option("--fail-if-already-running", is_flag=True, help="Fail (exit 2) if it already runs.")
@click.option("--wait", "wait_ready", is_flag=True, help="Wait until it is ready.")
@_wait_options
@api_options
@json_option
@quiet_option
def resume(
    name: str,
    api: _Api,
    as_json: bool,
    quiet: bool,
    fail_if_already_running: bool,
    wait_ready: bool,
    timeout: float | None,
    refresh_every: float,
) -> None:
    """Resume a paused or scaled-to-zero endpoint."""
    api.single_namespace()

    async def go(c: EndpointsClient) -> Endpoint:
        endpoint = await c.resume(name, running_ok=not fail_if_already_running)
        if wait_ready:
            endpoint = await c.wait(name, timeout=timeout, refresh_every=refresh_every)
        return endpoint

    _show(api.run(go), as_json=as_json, quiet=quiet)


@endpoints.command(
    "delete",
    epilog=_examples(
        "batchrun endpoints delete my-endpoint",
        "batchrun endpoints delete echo --local --yes",
        "batchrun endpoints delete my-endpoint --namespace my-org --yes --json",
    ),
)
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@api_options
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"name", "namespace", "deleted": true}.'
)
@quiet_option
def delete(name: str, api: _Api, yes: bool, as_json: bool, quiet: bool) -> None:
    """Delete an endpoint for good (pause it instead to keep it)."""
    api.single_namespace()
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(f"deleting {name!r} cannot be undone; pass --yes to confirm")
        click.confirm(f"Delete endpoint {name!r} for good?", abort=True, err=True)

    async def go(c: EndpointsClient) -> str:
        await c.delete(name)
        return await c.namespace()

    namespace = api.run(go)
    if as_json:
        _json({"name": name, "namespace": namespace, "deleted": True})
    else:
        click.echo(name if quiet else f"deleted {namespace}/{name}")


@endpoints.command(
    "status",
    epilog=_examples(
        "batchrun endpoints status my-endpoint",
        "batchrun endpoints status echo --local -q",
        "batchrun endpoints status my-endpoint --namespace my-org --json",
    ),
)
@click.argument("name")
@api_options
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"name", "namespace", "state", "message", "url", "readyReplica", "targetReplica"}.',
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the state, e.g. for a script.")
def status(name: str, api: _Api, as_json: bool, quiet: bool) -> None:
    """Show one endpoint's state in one line: state, replicas ready/target, URL, message."""
    api.single_namespace()
    e = api.run(lambda c: c.get(name))
    if as_json:
        _json(
            {
                "name": e.name,
                "namespace": e.namespace,
                "state": e.state_text,
                "message": e.message,
                "url": e.url,
                "readyReplica": e.ready_replica,
                "targetReplica": e.target_replica,
            }
        )
    elif quiet:
        click.echo(e.state_text)
    else:
        replicas = f"{_text(e.ready_replica)}/{_text(e.target_replica)}"
        parts = [f"{e.namespace}/{e.name}", e.state_text, replicas, _text(e.url)]
        click.echo("  ".join([*parts, e.message] if e.message else parts))


@endpoints.command(
    "wait",
    epilog=_examples(
        "batchrun endpoints wait my-endpoint --timeout 10m",
        "batchrun endpoints wait echo --local --refresh-every 1 -q",
    ),
)
@click.argument("name")
@_wait_options
@api_options
@json_option
@quiet_option
def wait(
    name: str, api: _Api, as_json: bool, quiet: bool, timeout: float | None, refresh_every: float
) -> None:
    """Wait until an endpoint runs and answers its health route (exit 5 if it fails or times out)."""
    api.single_namespace()
    endpoint = api.run(lambda c: c.wait(name, timeout=timeout, refresh_every=refresh_every))
    _show(endpoint, as_json=as_json, quiet=quiet)


@endpoints.command(
    "hardware",
    epilog=_examples(
        "batchrun endpoints hardware --accelerator gpu",
        "batchrun endpoints hardware --vendor aws --region us-east-1 --json",
        "batchrun endpoints hardware --local --accelerator cpu",
    ),
)
@click.option("--vendor", help="Only this cloud vendor, e.g. aws.")
@click.option("--accelerator", help="Only this accelerator: cpu, gpu, neuron.")
@click.option("--region", help="Only this region, e.g. us-east-1.")
@click.option("--instance-type", help="Only this instance type, e.g. nvidia-l4.")
@api_options
@json_option
@no_truncate_option
def hardware(
    api: _Api,
    as_json: bool,
    no_truncate: bool,
    vendor: str | None,
    accelerator: str | None,
    region: str | None,
    instance_type: str | None,
) -> None:
    """List the hardware you can deploy on, with prices in USD per replica-hour."""
    api.single_namespace()
    found = api.run(
        lambda c: c.hardware(
            vendor=vendor, accelerator=accelerator, region=region, instance_type=instance_type
        )
    )
    found.sort(key=lambda h: (h.vendor, h.region, h.accelerator, h.price_per_hour, h.instance_type))
    if as_json:
        _json([{"vendor": h.vendor, "region": h.region, **h.raw} for h in found])
        return
    if not found:
        _hint("no hardware matches these filters")
        return
    _table(
        [
            "VENDOR",
            "REGION",
            "ACCELERATOR",
            "INSTANCE_TYPE",
            "INSTANCE_SIZE",
            "MEMORY",
            "$/HOUR",
            "STATUS",
        ],
        [_hardware_row(h) for h in found],
        truncate=not no_truncate,
    )


def _hardware_row(h: Hardware) -> list[str]:
    memory = f"{h.memory_gb:g} GB" if h.memory_gb is not None else "-"
    return [
        h.vendor,
        h.region,
        h.accelerator,
        h.instance_type,
        h.instance_size,
        memory,
        f"{h.price_per_hour:.3f}",
        _text(h.status),
    ]
