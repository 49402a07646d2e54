"""The job: what to run, read from a TOML file (or a dict) and validated with clear messages.

A job has five sections, each a frozen dataclass: `[endpoint]`, `[input]`, `[output]`, `[run]`,
`[budget]`. Every key is checked against its field's type; an unknown key gets the closest
valid name suggested. Relative paths in `[input] path` and `[output] path` are resolved against
the job file's directory, so a job runs the same from cron as from a shell.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batchrun.errors import JobError

__all__ = [
    "BudgetSpec",
    "EndpointSpec",
    "InputSpec",
    "Job",
    "OutputSpec",
    "RunSpec",
    "load_job",
    "parse_duration",
]

Provider = Literal["url", "hf", "local"]
OnExit = Literal["pause", "scale-to-zero", "delete", "restore", "keep"]
RequestFormat = Literal["inputs", "chat", "embeddings", "raw"]
InputFormat = Literal["jsonl", "parquet", "csv"]

DEFAULT_LOCAL_API_URL = "http://127.0.0.1:8765/v2"
DEFAULT_HF_API_URL = "https://api.endpoints.huggingface.cloud/v2"


@dataclass(slots=True, kw_only=True, frozen=True)
class EndpointSpec:
    """`[endpoint]`: where requests go, and for `hf`/`local` how to get the endpoint running."""

    provider: Provider = "local"
    task: str | None = None
    # provider = "url"
    url: str | None = None
    token_env: str | None = None
    # provider = "hf" | "local"
    name: str | None = None
    namespace: str | None = None
    api_url: str | None = None
    ready_timeout: float = 1800.0
    on_exit: OnExit = "pause"
    watchdog: bool = True
    # what to create when the endpoint is missing
    repository: str | None = None
    framework: str = "pytorch"
    revision: str | None = None
    accelerator: str = "cpu"
    vendor: str = "aws"
    region: str = "us-east-1"
    instance_type: str = "intel-icl"
    instance_size: str = "x2"
    type: str = "protected"
    min_replica: int = 1
    max_replica: int = 1
    scale_to_zero_timeout: int | None = None
    custom_image: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def resolved_api_url(self) -> str:
        """The control-plane base URL: `api_url`, else the provider's default."""
        if self.api_url:
            return self.api_url.rstrip("/")
        return DEFAULT_HF_API_URL if self.provider == "hf" else DEFAULT_LOCAL_API_URL


@dataclass(slots=True, kw_only=True, frozen=True)
class InputSpec:
    """`[input]`: a file or a glob, and how a row becomes the request's text."""

    path: str
    format: InputFormat | None = None
    id_field: str | None = None
    field: str | None = None
    template: str | None = None
    system: str | None = None

    @property
    def input_format(self) -> InputFormat:
        """`format`, else derived from the path's extension."""
        if self.format is not None:
            return self.format
        return input_format_of(self.path)


@dataclass(slots=True, kw_only=True, frozen=True)
class OutputSpec:
    """`[output]`: a `.jsonl` file or a `.parquet` directory of part files."""

    path: str
    keep_fields: list[str] = field(default_factory=list)
    commit_rows: int = 1000
    commit_seconds: float = 1.0

    @property
    def output_format(self) -> Literal["jsonl", "parquet"]:
        return "parquet" if self.path.endswith(".parquet") else "jsonl"

    @property
    def errors_path(self) -> str:
        """The errors file: the output path with its format suffix replaced by `.errors.jsonl`."""
        stem = self.path.removesuffix(".parquet").removesuffix(".jsonl")
        return stem + ".errors.jsonl"

    @property
    def state_dir(self) -> str:
        """The run state (ledger, fingerprint, lock), next to the output."""
        return self.path + ".batchrun"


@dataclass(slots=True, kw_only=True, frozen=True)
class RunSpec:
    """`[run]`: how rows become requests, and how many are in flight."""

    request_format: RequestFormat = "inputs"
    model: str = ""
    concurrency: int = 32
    max_attempts: int = 5
    request_timeout: float = 60.0
    batch_size: int = 1
    max_requests_per_minute: int = 0
    max_response_bytes: int = 32 * 1024 * 1024
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    scale_up_timeout: float = 600.0
    grace_period: float = 10.0
    limit: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True, frozen=True)
class BudgetSpec:
    """`[budget]`: hard limits on spend and time."""

    max_cost_usd: float | None = None
    max_duration: float | None = None
    deadline: dt.datetime | None = None
    price_per_hour: float | None = None
    billing_quantum_s: float = 60.0


@dataclass(slots=True, kw_only=True, frozen=True)
class Job:
    """A whole job. Build one with `load_job` (a TOML file) or `Job.from_dict`."""

    endpoint: EndpointSpec
    input: InputSpec
    output: OutputSpec
    run: RunSpec = field(default_factory=RunSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    source: str = "<dict>"

    @property
    def task(self) -> str:
        """The Hugging Face task; `text-generation` when the job does not say."""
        return self.endpoint.task or "text-generation"

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, source: str = "<dict>", base_dir: Path | None = None
    ) -> Job:
        """Validate a parsed job and build it.

        Args:
            data: sections as in the TOML file.
            source: named in error messages (the job file's path).
            base_dir: relative input/output paths are resolved against it (default: as given).

        Raises:
            JobError: an unknown key, a wrong type, a missing required key, a bad value.
        """
        if not isinstance(data, dict):
            raise JobError(f"{source}: a job is a table of sections, got {type(data).__name__}")
        sections: dict[str, type[Any]] = {
            "endpoint": EndpointSpec,
            "input": InputSpec,
            "output": OutputSpec,
            "run": RunSpec,
            "budget": BudgetSpec,
        }
        _check_keys(data, sections, source, where="")
        for required in ("input", "output"):
            if required not in data:
                raise JobError(f"{source}: missing section [{required}]")
        built = {
            name: _build_section(spec_cls, data.get(name, {}), source, name)
            for name, spec_cls in sections.items()
        }
        endpoint: EndpointSpec = built["endpoint"]
        if "provider" not in data.get("endpoint", {}) and endpoint.url:
            endpoint = dataclasses.replace(endpoint, provider="url")
        inp: InputSpec = built["input"]
        out: OutputSpec = built["output"]
        if base_dir is not None:
            inp = dataclasses.replace(inp, path=_resolve(inp.path, base_dir))
            out = dataclasses.replace(out, path=_resolve(out.path, base_dir))
        job = cls(
            endpoint=endpoint,
            input=inp,
            output=out,
            run=built["run"],
            budget=built["budget"],
            source=source,
        )
        job.validate()
        return job

    def validate(self) -> None:
        """Check what single keys cannot: combinations and value ranges.

        Raises:
            JobError: naming the key and the job file.
        """
        src = self.source
        ep = self.endpoint
        if ep.provider == "url" and not ep.url:
            raise JobError(f'{src}: [endpoint] provider = "url" needs [endpoint] url')
        if ep.provider in ("hf", "local") and not ep.name:
            raise JobError(f'{src}: [endpoint] provider = "{ep.provider}" needs [endpoint] name')
        if ep.url and not re.match(r"^https?://", ep.url):
            raise JobError(
                f"{src}: [endpoint] url must start with http:// or https://, got {ep.url!r}"
            )
        if self.input.field is not None and self.input.template is not None:
            raise JobError(f"{src}: [input] has both field and template; keep one")
        if self.input.template is not None:
            try:
                _template_fields(self.input.template)
            except ValueError as e:
                raise JobError(f"{src}: [input] template is not a valid format string: {e}") from e
        try:
            self.input.input_format  # noqa: B018 - validates the extension
        except ValueError as e:
            raise JobError(f"{src}: [input] path: {e}") from e
        if not (self.output.path.endswith(".jsonl") or self.output.path.endswith(".parquet")):
            raise JobError(
                f"{src}: [output] path must end in .jsonl or .parquet, got {self.output.path!r}"
            )
        run = self.run
        for key in ("concurrency", "max_attempts", "batch_size"):
            if getattr(run, key) < 1:
                raise JobError(f"{src}: [run] {key} must be at least 1, got {getattr(run, key)}")
        if run.request_timeout <= 0:
            raise JobError(f"{src}: [run] request_timeout must be positive")
        if run.max_requests_per_minute < 0:
            raise JobError(f"{src}: [run] max_requests_per_minute must be 0 (no limit) or more")
        if run.limit is not None and run.limit < 0:
            raise JobError(f"{src}: [run] limit must be 0 or more")
        if run.batch_size > 1 and run.request_format in ("chat", "raw"):
            raise JobError(
                f'{src}: [run] batch_size > 1 works with request_format "inputs" or "embeddings", '
                f'not "{run.request_format}"'
            )
        if self.output.commit_rows < 1 or self.output.commit_seconds <= 0:
            raise JobError(f"{src}: [output] commit_rows and commit_seconds must be positive")
        b = self.budget
        if b.max_cost_usd is not None and b.max_cost_usd <= 0:
            raise JobError(f"{src}: [budget] max_cost_usd must be positive")
        if b.price_per_hour is not None and b.price_per_hour < 0:
            raise JobError(f"{src}: [budget] price_per_hour must be 0 or more")
        if b.billing_quantum_s <= 0:
            raise JobError(f"{src}: [budget] billing_quantum_s must be positive")

    def fingerprint_fields(self) -> dict[str, Any]:
        """What changes results (not concurrency, budget or timeouts): part of the run fingerprint."""
        return {
            "task": self.task,
            "request_format": self.run.request_format,
            "model": self.run.model,
            "batch_size": self.run.batch_size,
            "parameters": self.run.parameters,
            "id_field": self.input.id_field,
            "field": self.input.field,
            "template": self.input.template,
            "system": self.input.system,
            "keep_fields": self.output.keep_fields,
            "limit": self.run.limit,
        }


def load_job(path: str | Path, **overrides: dict[str, Any]) -> Job:
    """Read and validate a job file.

    Args:
        path: the TOML job file.
        **overrides: per section, keys that replace the file's, e.g.
            ``load_job("job.toml", run={"concurrency": 8}, output={"path": "o.jsonl"})``.
            Relative override paths resolve against the current directory.

    Raises:
        JobError: the file is missing or not TOML, or a key is unknown or of the wrong type.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise JobError(f"{p}: job file not found") from e
    except OSError as e:
        raise JobError(f"{p}: cannot read job file: {e.strerror}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"{p}: not valid TOML: {e}") from e
    base_dir = p.resolve().parent
    for section, values in overrides.items():
        if not isinstance(values, dict):
            raise JobError(f"override for [{section}] must be a dict of keys, got {values!r}")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise JobError(f"{p}: [{section}] is not a table")
        for key, value in values.items():
            if key == "path" and section in ("input", "output") and isinstance(value, str):
                value = str(Path(value).resolve())
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                value = {**target[key], **value}  # --set run.parameters.x=1 keeps the others
            target[key] = value
    return Job.from_dict(data, source=str(p), base_dir=base_dir)


def parse_overrides(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """Parse `--set section.key=value` strings; the value is read as TOML, else as a string.

    Raises:
        JobError: an assignment without a section, a key or `=`.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not section or not key:
            raise JobError(f"--set {item!r}: expected section.key=value, e.g. run.concurrency=8")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        if "." in key:  # run.parameters.max_new_tokens=16
            sub, _, leaf = key.partition(".")
            out.setdefault(section, {}).setdefault(sub, {})[leaf] = value
        else:
            out.setdefault(section, {})[key] = value
    return out


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s|ms)")


def parse_duration(value: str | float | int) -> float:
    """Seconds from a number or a string such as "2h30m", "90s", "1.5h".

    Raises:
        ValueError: the string is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    text = value.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * scale[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f'not a duration: {value!r} (use e.g. "2h30m", "90m", "45s")')
    return total


def parse_deadline(
    value: str | dt.datetime | dt.time, *, now: dt.datetime | None = None
) -> dt.datetime:
    """An aware datetime from an ISO time, or "HH:MM" in local time (the next such moment).

    Raises:
        ValueError: not a time.
    """
    now = now or dt.datetime.now().astimezone()
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.astimezone()
    if isinstance(value, dt.time):
        value = value.strftime("%H:%M:%S")
    text = value.strip()
    if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", text):
        t = dt.time.fromisoformat(text if len(text.split(":")[0]) == 2 else "0" + text)
        candidate = now.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=0)
        if candidate <= now:
            candidate += dt.timedelta(days=1)
        return candidate
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f'not a deadline: {value!r} (use "06:00" or an ISO time)') from e
    return parsed if parsed.tzinfo else parsed.astimezone()


def input_format_of(path: str) -> InputFormat:
    """The input format from a path's extension.

    Raises:
        ValueError: an extension batchrun does not read.
    """
    lower = path.lower()
    if lower.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json.gz", ".json")):
        return "jsonl"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ValueError(
        f"cannot tell the format of {path!r}: use .jsonl, .jsonl.gz, .parquet or .csv, "
        'or set [input] format = "jsonl" | "parquet" | "csv"'
    )


def _template_fields(template: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _resolve(path: str, base_dir: Path) -> str:
    p = Path(path).expanduser()
    return os.path.normpath(p if p.is_absolute() else base_dir / p)


def _check_keys(data: dict[str, Any], allowed: dict[str, Any], source: str, *, where: str) -> None:
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(key, list(allowed), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            place = f"[{where}] " if where else ""
            kind = "key" if where else "section"
            raise JobError(f"{source}: unknown {kind} {place}{key!r}{suggestion}")


def _build_section(spec_cls: type[Any], values: Any, source: str, section: str) -> Any:
    if not isinstance(values, dict):
        raise JobError(f"{source}: [{section}] must be a table, got {type(values).__name__}")
    hints = typing.get_type_hints(spec_cls)
    fields = {f.name: f for f in dataclasses.fields(spec_cls)}
    _check_keys(values, fields, source, where=section)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        kwargs[key] = _coerce(value, hints[key], f"{source}: [{section}] {key}", key)
    missing = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and name not in kwargs
    ]
    if missing:
        raise JobError(f"{source}: [{section}] is missing required key {missing[0]!r}")
    return spec_cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """Check `value` against a type hint; convert durations and deadlines."""
    if key in ("max_duration",) and value is not None:
        try:
            return parse_duration(value)
        except (ValueError, TypeError) as e:
            raise JobError(f"{where}: {e}") from e
    if key == "deadline" and value is not None:
        try:
            return parse_deadline(value)
        except (ValueError, TypeError) as e:
            raise JobError(f"{where}: {e}") from e
    if _matches(value, hint):
        if hint is float or (float in typing.get_args(hint) and isinstance(value, int)):
            return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        return value
    raise JobError(f"{where}: expected {_describe(hint)}, got {_show(value)}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and _matches(v, args[1]) for k, v in value.items()
        )
    if hint is dt.datetime:
        return isinstance(value, dt.datetime)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}s"
    if origin is dict:
        return "a table"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "table",
    }
    return f"{kind.get(type(value), type(value).__name__)} {text}"
