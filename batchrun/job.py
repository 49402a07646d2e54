"""The job: what to run, read from a TOML file (or a dict) and validated with clear messages.

A job has five sections, each a frozen dataclass: `[endpoint]`, `[input]`, `[output]`, `[run]`,
`[budget]`. Every key is checked against its field's type; an unknown key gets the closest
valid name suggested. Relative paths in `[input] path` and `[output] path` are resolved against
the job file's directory, so a job runs the same from cron as from a shell.

Every numeric key has a range (`RANGES`, listed in the README's "Job keys and their ranges"),
URLs are parsed up front, and the job file itself must be a regular UTF-8 file of at most
`MAX_JOB_FILE_BYTES`: whatever is wrong gets one `JobError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from batchrun.errors import JobError

__all__ = [
    "BudgetSpec",
    "EndpointSpec",
    "InputSpec",
    "Job",
    "KeyRange",
    "OutputSpec",
    "RunSpec",
    "check_token",
    "load_job",
    "parse_duration",
]

Provider = Literal["url", "hf", "local"]
OnExit = Literal["pause", "scale-to-zero", "delete", "restore", "keep"]
RequestFormat = Literal["inputs", "chat", "completions", "embeddings", "raw", "openai-batch"]
OutputShape = Literal["batchrun", "openai-batch"]
InputFormat = Literal["jsonl", "parquet", "csv"]
OutputOrder = Literal["completion", "input"]
Scale = Literal["fixed", "deadline"]
Executor = Literal["local", "ray"]


MAX_JOB_FILE_BYTES = 1024 * 1024
"""A job file is a few hundred bytes; a bigger one is a wrong path (a data file, /dev/zero)."""

_MAX_NESTING = 32  # tables and arrays inside [run] parameters, custom_image, ...
_WEEK = 7 * 24 * 3600.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(slots=True, frozen=True)
class KeyRange:
    """The values a numeric key accepts: `low` to `high`, `low` itself excluded if `low_open`."""

    low: float
    high: float
    low_open: bool = False
    unit: str = ""

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        """E.g. "from 1 to 100,000" or "more than 0 and at most 604,800 (seconds)"."""
        low, high = _number(self.low), _number(self.high)
        text = f"more than {low} and at most {high}" if self.low_open else f"from {low} to {high}"
        return f"{text} ({self.unit})" if self.unit else text


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,}"


def _seconds(low: float = 0.0, *, high: float = _WEEK, low_open: bool = True) -> KeyRange:
    return KeyRange(low, high, low_open=low_open, unit="seconds")


RANGES: dict[str, dict[str, KeyRange]] = {
    "endpoint": {
        "ready_timeout": _seconds(),
        "min_replica": KeyRange(0, 100),
        "max_replica": KeyRange(1, 100),
        "scale_to_zero_timeout": KeyRange(1, 7 * 24 * 60, unit="minutes"),
    },
    "output": {
        "commit_rows": KeyRange(1, 10_000_000),
        "commit_seconds": _seconds(),
    },
    "run": {
        "concurrency": KeyRange(1, 100_000, unit='or "auto"'),
        "max_concurrency": KeyRange(1, 100_000, unit='the most with concurrency = "auto"'),
        "max_attempts": KeyRange(1, 100),
        "request_timeout": _seconds(),
        "batch_size": KeyRange(1, 10_000),
        "max_requests_per_minute": KeyRange(0, 10_000_000, unit="0: no limit"),
        "max_tokens_per_minute": KeyRange(0, 10_000_000_000, unit="0: no limit"),
        "max_response_bytes": KeyRange(1024, 4 * 1024**3, unit="bytes"),
        "backoff_max": _seconds(low_open=False),
        "retry_after_max": _seconds(low_open=False),
        "scale_up_timeout": _seconds(low_open=False),
        "grace_period": _seconds(low_open=False),
        "breaker_window": KeyRange(0, 100_000, unit="requests; 0: max(8, concurrency / 4)"),
        "outage_timeout": _seconds(),
        "limit": KeyRange(0, 2**62, unit="rows"),
        "max_replicas": KeyRange(1, 100, unit="replicas"),
        "workers": KeyRange(1, 1024, unit="worker processes"),
    },
    "budget": {
        "max_cost_usd": KeyRange(0, 1_000_000, low_open=True, unit="USD"),
        "max_duration": _seconds(high=366 * 24 * 3600.0),
        "price_per_hour": KeyRange(0, 100_000, unit="USD per replica-hour"),
        "billing_quantum_s": _seconds(high=24 * 3600.0),
    },
}
"""Every numeric key's range, by section; `Job.validate` checks them, the README lists them."""


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
    # an existing endpoint that differs from the creation keys above: update it (else exit 2)
    update: bool = False


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
    format: OutputShape | None = None  # None: "openai-batch" for that request format, else ours
    order: OutputOrder = "completion"  # "input": rewritten in input order when a run ends

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
    concurrency: int | Literal["auto"] = 32  # "auto": batchrun.adaptive finds it
    max_concurrency: int = 256
    max_attempts: int = 5
    request_timeout: float = 60.0
    batch_size: int = 1
    max_requests_per_minute: int = 0
    max_tokens_per_minute: int = 0  # 0: no limit (batchrun.ratelimit)
    max_response_bytes: int = 32 * 1024 * 1024
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    scale_up_timeout: float = 600.0
    grace_period: float = 10.0
    breaker_window: int = 0  # 0: max(8, concurrency / 4) (batchrun.health)
    outage_timeout: float = 300.0
    limit: int | None = None
    workers: int = 1
    executor: Executor = "local"
    parameters: dict[str, Any] = field(default_factory=dict)
    # "deadline": the lease buys the replicas [budget] deadline needs (lifecycle/scaling.py)
    scale: Scale = "fixed"
    max_replicas: int | None = None
    best_effort: bool = False  # a deadline the plan cannot meet: run anyway (--best-effort)


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
    # the `[endpoint]` keys the job file (or --set) gave, so that a default is not taken for
    # the job's wish (the endpoint drift check); None when built in Python
    endpoint_keys: frozenset[str] | None = field(default=None, repr=False, compare=False)

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
        if built["run"].request_format == "openai-batch" and inp.id_field is None:
            inp = dataclasses.replace(inp, id_field="custom_id")  # OpenAI's id of a line
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
            endpoint_keys=frozenset(data.get("endpoint", {})),
        )
        job.validate()
        return job

    def validate(self) -> None:
        """Check what single keys cannot: combinations and value ranges.

        Raises:
            JobError: naming the key and the job file.
        """
        src = self.source
        for section, ranges in RANGES.items():
            spec = getattr(self, section)
            for key, allowed in ranges.items():
                value = getattr(spec, key)
                if value is not None and value != "auto" and value not in allowed:
                    raise JobError(
                        f"{src}: [{section}] {key} must be {allowed.describe()}, got {_short(value)}"
                    )
        ep = self.endpoint
        if ep.provider == "url" and not ep.url:
            raise JobError(f'{src}: [endpoint] provider = "url" needs [endpoint] url')
        if ep.provider in ("hf", "local") and not ep.name:
            raise JobError(f'{src}: [endpoint] provider = "{ep.provider}" needs [endpoint] name')
        if ep.url is not None:
            _check_url(ep.url, f"{src}: [endpoint] url")
        if ep.api_url is not None:
            _check_url(ep.api_url, f"{src}: [endpoint] api_url")
        if ep.token_env is not None and not _ENV_NAME.fullmatch(ep.token_env):
            raise JobError(
                f"{src}: [endpoint] token_env must be an environment variable's name "
                f"(letters, digits, _), got {_show(ep.token_env)}"
            )
        for key in ("name", "namespace"):
            value = getattr(ep, key)
            if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
                raise JobError(
                    f"{src}: [endpoint] {key} must be letters, digits, '.', '_' or '-' "
                    f"(at most 128), got {_show(value)}"
                )
        if ep.min_replica > ep.max_replica:
            raise JobError(
                f"{src}: [endpoint] min_replica ({ep.min_replica}) is more than "
                f"max_replica ({ep.max_replica})"
            )
        for section, key, value in (
            ("input", "path", self.input.path),
            ("output", "path", self.output.path),
        ):
            if "\0" in value or not value.strip():
                raise JobError(f"{src}: [{section}] {key} must be a path, got {_show(value)}")
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
        self._check_openai_batch()
        if run.workers > 1 and run.concurrency == "auto":
            raise JobError(
                f'{src}: [run] concurrency = "auto" does not work with workers > 1 yet: give a '
                "number (the job's total, split among the workers)"
            )
        if run.scale == "deadline":
            if self.budget.deadline is None:
                raise JobError(f'{src}: [run] scale = "deadline" needs [budget] deadline')
            if ep.provider not in ("hf", "local"):
                raise JobError(
                    f'{src}: [run] scale = "deadline" needs [endpoint] provider "hf" or "local" '
                    f'(got "{ep.provider}": no replicas to scale)'
                )
        if run.batch_size > 1 and run.request_format in ("chat", "completions", "raw"):
            raise JobError(
                f'{src}: [run] batch_size > 1 works with request_format "inputs" or "embeddings", '
                f'not "{run.request_format}"'
            )
        for section, key, value in (
            ("run", "parameters", run.parameters),
            ("endpoint", "custom_image", ep.custom_image),
        ):
            if _depth(value) > _MAX_NESTING:
                raise JobError(
                    f"{src}: [{section}] {key} is nested more than {_MAX_NESTING} levels deep"
                )

    def _check_openai_batch(self) -> None:
        src, fmt, shape = self.source, self.run.request_format, self.output.format
        if shape == "openai-batch" and fmt != "openai-batch":
            raise JobError(
                f'{src}: [output] format = "openai-batch" needs [run] request_format = '
                f'"openai-batch", got "{fmt}"'
            )
        if fmt != "openai-batch":
            return
        if self.input.input_format != "jsonl":
            raise JobError(f'{src}: [run] request_format = "openai-batch" reads a .jsonl input')
        if self.output_shape == "openai-batch" and self.output.output_format == "parquet":
            raise JobError(
                f'{src}: [output] format = "openai-batch" is JSONL: [output] path must end in '
                f".jsonl, got {self.output.path!r}"
            )
        if self.input.id_field not in (None, "custom_id"):
            raise JobError(
                f'{src}: [run] request_format = "openai-batch" takes the id from custom_id: '
                f"drop [input] id_field = {self.input.id_field!r}"
            )
        if self.input.field is not None or self.input.template is not None:
            raise JobError(
                f'{src}: [run] request_format = "openai-batch" sends each line\'s body: '
                "drop [input] field and template"
            )
        if self.run.batch_size > 1:
            raise JobError(f'{src}: [run] batch_size > 1 does not work with "openai-batch"')

    @property
    def output_shape(self) -> OutputShape:
        """`[output] format`, else "openai-batch" for that request format, else "batchrun"."""
        if self.output.format is not None:
            return self.output.format
        return "openai-batch" if self.run.request_format == "openai-batch" else "batchrun"

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
            **({"output_format": self.output.format} if self.output.format else {}),
        }


def load_job(path: str | Path, **overrides: dict[str, Any]) -> Job:
    """Read and validate a job file.

    Args:
        path: the TOML job file.
        **overrides: per section, keys that replace the file's, e.g.
            ``load_job("job.toml", run={"concurrency": 8}, output={"path": "o.jsonl"})``.
            Relative override paths resolve against the current directory.

    Raises:
        JobError: the file is missing, not a regular UTF-8 file of at most 1 MiB, or not TOML;
            a key is unknown, of the wrong type or out of its range.
    """
    p = Path(path)
    text = _read_job_text(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"{p}: not valid TOML: {e}") from e
    except RecursionError as e:
        raise JobError(f"{p}: not valid TOML: tables or arrays nested too deeply") from e
    except ValueError as e:  # an integer of more than 4,300 digits
        raise JobError(f"{p}: not valid TOML: a number is too long") from e
    base_dir = p.resolve().parent
    for section, values in overrides.items():
        if not isinstance(values, dict):
            raise JobError(f"override for [{section}] must be a dict of keys, got {values!r}")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise JobError(f"{p}: [{section}] is not a table")
        for key, value in values.items():
            is_path = key == "path" and section in ("input", "output") and isinstance(value, str)
            if is_path and "\0" not in value:  # a NUL byte: `validate` refuses it
                value = str(Path(value).resolve())
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                value = {**target[key], **value}  # --set run.parameters.x=1 keeps the others
            target[key] = value
    return Job.from_dict(data, source=str(p), base_dir=base_dir)


def check_token(token: str, where: str) -> None:
    """Refuse a token that cannot be one HTTP header value (a line break would inject headers).

    Args:
        token: the token, already stripped of surrounding whitespace.
        where: what the message names, e.g. "job.toml: the token in $API_KEY"; the message
            never shows the token.

    Raises:
        JobError: the token holds a line break or another control character.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in token):
        raise JobError(
            f"{where} contains a line break or another control character; "
            "a token is one line of printable text"
        )


def _read_job_text(p: Path) -> str:
    """The job file's text, refusing what is not a small regular UTF-8 file, without blocking.

    A FIFO or a device is refused on `stat` before it is opened (and opened non-blocking, so a
    path swapped for a FIFO in between cannot hang); at most 1 MiB + 1 byte is ever read.
    """
    try:
        info = os.stat(p)
        if stat.S_ISDIR(info.st_mode):
            raise JobError(f"{p}: is a directory, not a job file")
        if not stat.S_ISREG(info.st_mode):
            raise JobError(
                f"{p}: not a regular file ({_file_kind(info.st_mode)}); give a .toml file"
            )
        if info.st_size > MAX_JOB_FILE_BYTES:
            raise JobError(f"{p}: job file too large ({info.st_size:,} bytes; at most 1 MiB)")
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise JobError(f"{p}: not a regular file; give a .toml file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_JOB_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError as e:
        raise JobError(f"{p}: job file not found") from e
    except OSError as e:
        raise JobError(f"{p}: cannot read job file: {e.strerror or e}") from e
    except ValueError as e:  # a NUL byte in the path
        raise JobError(f"{_show(str(p))}: not a usable path: {e}") from e
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise JobError(f"{p}: job file too large (more than 1 MiB)")
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise JobError(f"{p}: the job file is UTF-32; save it as UTF-8")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise JobError(f"{p}: the job file is UTF-16; save it as UTF-8")
    if b"\x00" in raw:
        raise JobError(f"{p}: the job file contains NUL bytes (UTF-16?); save it as UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JobError(
            f"{p}: the job file is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
            f"{e.start}); save it as UTF-8"
        ) from e


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


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
        except (RecursionError, ValueError) as e:  # nested too deeply, a 4,300-digit integer
            raise JobError(f"--set {name.strip()}: not a usable value") from e
        if "." in key:  # run.parameters.max_new_tokens=16
            sub, _, leaf = key.partition(".")
            table = out.setdefault(section, {}).setdefault(sub, {})
            if not isinstance(table, dict):
                raise JobError(f"--set {name.strip()}: {section}.{sub} is already set to a value")
            table[leaf] = value
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
            raise ValueError(f"a duration cannot be negative: {_short(value)}")
        try:
            return float(value)
        except OverflowError as e:
            raise ValueError(f"not a duration: {_short(value)} is too large") from e
    if not isinstance(value, str):
        raise ValueError(
            f'expected a duration such as "2h30m" or a number of seconds, got {_show(value)}'
        )
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
    if isinstance(value, dt.date):
        raise ValueError(
            f"{value.isoformat()} is a date without a time of day; "
            f'write e.g. {value.isoformat()}T06:00:00 or "06:00"'
        )
    if isinstance(value, dt.time):
        value = value.strftime("%H:%M:%S")
    if not isinstance(value, str):
        raise ValueError(f'expected a time ("06:00") or an ISO date and time, got {_show(value)}')
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


def _check_url(url: str, where: str) -> None:
    """Refuse a URL that requests cannot go to: http(s), a host, a valid port, no credentials.

    Raises:
        JobError: naming `where`; the URL is shown with any credentials masked.
    """
    shown = repr(re.sub(r"//[^/?#]*@", "//***@", url))
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise JobError(f"{where}: a URL cannot contain spaces or control characters, got {shown}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        reason = str(e).replace(url, "the URL")
        raise JobError(f"{where}: not a valid URL ({reason}), got {shown}") from e
    if parts.scheme not in ("http", "https"):
        raise JobError(f"{where} must start with http:// or https://, got {shown}")
    if parts.username is not None or parts.password is not None:
        raise JobError(
            f"{where}: credentials in the URL are refused (they would be logged); "
            "put the token in an environment variable and name it in token_env"
        )
    if not parts.hostname:
        raise JobError(f"{where}: the URL has no host, got {shown}")
    if not _valid_host(parts.netloc.rpartition("@")[2]):
        raise JobError(f"{where}: not a valid host name or IP address in {shown}")
    if port is not None and not 1 <= port <= 65535:
        raise JobError(f"{where}: the port must be from 1 to 65535, got {shown}")
    if port is None and parts.netloc.endswith(":"):  # "http://host:" would quietly mean port 80
        raise JobError(f"{where}: the URL has an empty port after ':', got {shown}")


def _valid_host(hostport: str) -> bool:
    """A bracketed IPv6 address (checked by `urlsplit`) or a DNS name / IPv4 address, then a port."""
    if hostport.startswith("["):
        host = hostport[: hostport.find("]") + 1]
        return bool(host) and hostport[len(host) :][:1] in ("", ":")
    host = hostport.partition(":")[0]
    try:  # IDNA both ways: "xn--zz" must decode, "ü" must encode and come back unchanged
        ascii_host = host.encode("idna").decode("ascii")
        back = ascii_host.encode("ascii").decode("idna")
    except UnicodeError:
        return False
    if not host.isascii() and back != host.lower():  # a soft hyphen, a full-width letter
        return False
    return re.fullmatch(r"[A-Za-z0-9_.-]+", ascii_host) is not None


def _depth(value: Any) -> int:
    """How deeply lists and tables nest in `value` (0 for a scalar); stops counting past the cap."""
    depth, level = 0, [value]
    while depth <= _MAX_NESTING:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            break
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


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
        except (ValueError, TypeError, OverflowError) as e:
            raise JobError(f"{where}: {e}") from e
    if _matches(value, hint):
        wants_float = hint is float or float in typing.get_args(hint)
        if wants_float and isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError as e:
                raise JobError(f"{where}: the number {_short(value)} is too large") from e
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
        if len(args) == 1:
            return repr(args[0])
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}s"
    if origin is dict:
        return "a table"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _short(value: Any) -> str:
    """`repr(value)`, cut to 60 characters."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**60 else "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def _show(value: Any) -> str:
    text = _short(value)
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "table",
    }
    return f"{kind.get(type(value), type(value).__name__)} {text}"
