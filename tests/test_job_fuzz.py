"""Property tests of `batchrun run` against hostile job files and options (issue 10).

Two properties, both generated from one valid job that points at the test endpoint:

- (a) a mutation made to be invalid (a number out of its range, a wrong type, an unknown key,
  broken TOML, a malformed URL, a special file, an odd encoding, a multi-line token, a bad
  option) exits 2 with one line on stderr (click's usage errors: their last line says what is
  wrong), no traceback, nothing on stdout, no output written, and no request reaches the
  endpoint. Run in-process with click's CliRunner (real exit codes, separate stderr).
- (b) a mutation that keeps the job valid (concurrency, batch and commit sizes, formats, extra
  valid keys, comments, whitespace, key order, CRLF, faults the endpoint injects) exits 0, 3 or
  5, with no traceback, and every input id ends exactly once in the results or the errors file
  (at most once on exit 5). Run as real `python -m batchrun run` processes.

`BATCHRUN_FUZZ_EXAMPLES=N` runs N cases in all, a tenth of them (b). The default, 300 of (a)
(a few ms each) and 16 of (b) (a process each, ~0.5 s), keeps both within ~40 s on a loaded
2-core machine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batchrun.cli import main
from batchrun.job import RANGES, BudgetSpec, EndpointSpec, InputSpec, OutputSpec, RunSpec
from tests.support.endpoint_app import EndpointApp
from tests.support.run import finish, read_jsonl, read_results, start_run, write_jsonl

# Hypothesis caches what it learns in `.hypothesis/` under the working directory: keep it out of
# the repository (pytest would try to collect it).
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "batchrun-hypothesis")
)
_EXAMPLES = int(os.environ.get("BATCHRUN_FUZZ_EXAMPLES") or 0)  # cases in all: 9/10 for (a)
INVALID_EXAMPLES = _EXAMPLES - _EXAMPLES // 10 if _EXAMPLES else 300
VALID_EXAMPLES = max(_EXAMPLES // 10, 1) if _EXAMPLES else 16
ROWS = 12

_SETTINGS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}

# --- the job, as sections of TOML literals ------------------------------------------------------

Sections = dict[str, dict[str, str]]


def _q(text: str) -> str:
    return orjson.dumps(text).decode()


def base_sections(url: str, input_path: Path) -> Sections:
    return {
        "endpoint": {"provider": _q("url"), "url": _q(url), "task": _q("text-generation")},
        "input": {"path": _q(str(input_path)), "id_field": _q("id"), "field": _q("text")},
        "output": {"path": _q("out/r.jsonl")},
        "run": {"concurrency": "4", "max_attempts": "2", "request_timeout": "10"},
    }


def render(
    sections: Sections, *, comments: bool = False, pad: str = " ", crlf: bool = False
) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]" + ("  # section" if comments else ""))
        for key, literal in values.items():
            lines.append(f"{key}{pad}={pad}{literal}" + (" # a comment" if comments else ""))
        lines.append("")
    return ("\r\n" if crlf else "\n").join(lines)


@dataclass
class Case:
    """One generated invocation: the job file's bytes (or a special file) and the arguments."""

    kind: str
    sections: Sections | None = None
    raw: bytes | None = None  # the job file's bytes, instead of `sections`
    special: str | None = None  # "fifo", "dir", "missing", a device path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secret: str | None = None  # must not appear in any output
    # ("dir" | "file" | "fifo", path) to make in the case's directory, or ("token", text)
    setup: list[tuple[str, str]] = field(default_factory=list)


# --- what each key accepts, from the job's own dataclasses --------------------------------------

SPECS: dict[str, type[Any]] = {
    "endpoint": EndpointSpec,
    "input": InputSpec,
    "output": OutputSpec,
    "run": RunSpec,
    "budget": BudgetSpec,
}
LITERALS = {
    "int": "7",
    "float": "1.5",
    "str": _q("x"),
    "bool": "true",
    "array": "[1, 2]",
    "table": "{ a = 1 }",
    "date": "2026-01-01",
    "datetime": "2026-01-01T06:00:00Z",
    "time": "06:00:00",
}


def _accepted_kinds(section: str, key: str) -> set[str]:
    """The TOML kinds a key takes (a Literal's strings count as invalid: "x" is not one)."""
    if key == "max_duration":
        return {"int", "float"}  # "x" is not a duration
    if key == "deadline":
        return {"datetime", "time"}  # "x" is not a time
    hint = typing.get_type_hints(SPECS[section])[key]
    kinds: set[str] = set()
    union = typing.get_origin(hint) in (types.UnionType, typing.Union)
    for arg in typing.get_args(hint) if union else (hint,):
        origin = typing.get_origin(arg)
        if arg is str:
            kinds.add("str")
        elif arg is bool:
            kinds.add("bool")
        elif arg is int:
            kinds.add("int")
        elif arg is float:
            kinds |= {"int", "float"}
        elif origin is dict:
            kinds.add("table")
        elif origin is list:
            kinds.add("array-of-str")
        elif origin is Literal or arg is type(None):
            pass
        else:
            raise AssertionError(f"no TOML kind for [{section}] {key}: {hint}")
    return kinds


KEYS = [(s, f.name) for s, spec in SPECS.items() for f in dataclasses.fields(spec)]
WRONG_TYPES = [
    (section, key, kind)
    for section, key in KEYS
    for kind in LITERALS
    if kind not in _accepted_kinds(section, key)
] + [("endpoint", "env", "table")]  # { a = 1 }: env values are strings

# --- (a) mutations that must be refused ------------------------------------------------------


def _with(sections: Sections, section: str, **values: str) -> Sections:
    out = {name: dict(v) for name, v in sections.items()}
    out.setdefault(section, {}).update(values)
    return out


def _literal(value: float) -> str:
    if isinstance(value, float) and value != value:
        return "nan"
    if value == float("inf"):
        return "inf"
    if value == float("-inf"):
        return "-inf"
    return repr(value)


@st.composite
def out_of_range(draw: st.DrawFn, base: Sections) -> Case:
    section, key = draw(st.sampled_from([(s, k) for s, r in RANGES.items() for k in r]))
    allowed = RANGES[section][key]
    is_int = typing.get_type_hints(SPECS[section])[key] in (int, int | None)
    low, high = allowed.low, allowed.high
    if is_int:
        below = st.integers(min_value=-(10**30), max_value=int(low) - 1)
        above = st.integers(min_value=int(high) + 1, max_value=10**30)
        value: float = draw(st.one_of(below, above))
    else:
        below_f = st.floats(max_value=low, exclude_max=not allowed.low_open, allow_nan=False)
        below_f = below_f.map(lambda v: low - 1 if v in allowed else v)  # -0.0 is 0
        above_f = st.floats(min_value=high, exclude_min=True, allow_nan=False)
        specials = st.sampled_from([float("nan"), float("inf"), float("-inf")])
        value = draw(st.one_of(below_f, above_f, specials, st.integers(int(high) + 1, 10**30)))
    assert value not in allowed
    literal = _literal(value)
    how = draw(st.sampled_from(["file", "set", "option"]))
    if how == "option" and key in ("concurrency", "limit") and section == "run":
        return Case(f"range:--{key}", base, args=[f"--{key}", literal])
    if how == "set":
        return Case(f"range:{key}", base, args=["--set", f"{section}.{key}={literal}"])
    return Case(f"range:{key}", _with(base, section, **{key: literal}))


@st.composite
def wrong_type(draw: st.DrawFn, base: Sections) -> Case:
    section, key, kind = draw(st.sampled_from(WRONG_TYPES))
    literal = LITERALS[kind]
    if key == "provider" and kind == "str":
        literal = _q(draw(st.sampled_from(["URL", "http", "openai", ""])))
    return Case(f"type:{kind}", _with(base, section, **{key: literal}))


NAME = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=12,
)


@st.composite
def unknown_key(draw: st.DrawFn, base: Sections) -> Case:
    name = draw(NAME)
    where = draw(st.sampled_from([*SPECS, "top"]))
    if where == "top":
        if name in SPECS:
            name += "_x"
        return Case("unknown:section", _with(base, name, a="1"))
    known = {f.name for f in dataclasses.fields(SPECS[where])}
    if name in known:
        name += "_x"
    return Case("unknown:key", _with(base, where, **{name: "1"}))


BROKEN_TOML = [
    'model = "abc',
    "[run",
    "= 1",
    "concurrency =",
    'model = "\\q"',
    "concurrency = 4 4",
    "concurrency = 4\nconcurrency = 5",
    "[run]",
    "a = [1,",
    "a = { b = 1",
    "a = 1_",
    "a = 0x",
    "a = 2026-13-45",
    "a = '''",
    "a.b = 1\na = 2",
    "a = \x01",
]


@st.composite
def broken_toml(draw: st.DrawFn, base: Sections) -> Case:
    text = render(base)
    bad = draw(st.sampled_from(BROKEN_TOML))
    where = draw(st.sampled_from(["run-end", "start", "replace"]))
    if where == "start":
        text = bad + "\n" + text
    elif where == "replace":
        text = text.replace("concurrency = 4", bad)
    else:
        text = text.replace("[run]\n", "[run]\n" + bad + "\n")
    if bad == "[run]" and where == "start":
        text = text + "\n[run]\n"  # a table defined twice
    assert bad in text
    return Case("toml", raw=text.encode())


HOST = "127.0.0.1"


@st.composite
def bad_url(draw: st.DrawFn, base: Sections, port: int) -> Case:
    secret = None
    kind = draw(
        st.sampled_from(["scheme", "nohost", "port", "bracket", "host", "creds", "space", "bare"])
    )
    if kind == "scheme":
        scheme = draw(st.sampled_from(["ftp", "file", "ws", "htp", "https+x", "javascript"]))
        url = f"{scheme}://{HOST}:{port}/"
    elif kind == "nohost":
        url = draw(
            st.sampled_from(
                ["http://", "https://", f"http://:{port}", "http:///path", "http://?x", "http://#f"]
            )
        )
    elif kind == "port":
        bad_port = draw(
            st.one_of(
                st.integers(max_value=0, min_value=-(10**9)).map(str),
                st.integers(min_value=65536, max_value=10**12).map(str),
                st.text(alphabet="abcxyz+-.%", min_size=1, max_size=5),
            )
        )
        url = f"http://{HOST}:{bad_port}/"
    elif kind == "bracket":
        url = draw(st.sampled_from(["http://[::1", "http://[zz]/", "http://[::1]]/", "http://[/"]))
    elif kind == "host":
        host = draw(st.sampled_from(["[::1]x", "a%zz", "a..b", "...", "xn--zz", "a\xadb", "a!b"]))
        url = f"http://{host}:{port}/"
    elif kind == "creds":
        secret = "pw" + draw(st.text(alphabet="abcdefghij0123456789", min_size=8, max_size=12))
        user = draw(st.sampled_from(["user:", "u:", ":"]))
        url = f"http://{user}{secret}@{HOST}:{port}/"
    elif kind == "space":
        good = f"http://{HOST}:{port}/"
        at = draw(st.integers(0, len(good)))
        url = (
            good[:at] + draw(st.sampled_from([" ", "\t", "\n", "\r\n", "\x7f", "\x00"])) + good[at:]
        )
    else:
        url = draw(st.sampled_from([f"{HOST}:{port}", "localhost", "", "//host/x", "http:host"]))
    if draw(st.booleans()):
        return Case(f"url:{kind}", _with(base, "endpoint", url=_q(url)), secret=secret)
    sections = _with(base, "endpoint", provider=_q("local"), name=_q("fuzz"), api_url=_q(url))
    del sections["endpoint"]["url"]
    return Case(f"api_url:{kind}", sections, secret=secret)


@st.composite
def special_file(draw: st.DrawFn, base: Sections) -> Case:
    kind = draw(
        st.sampled_from(
            [
                "fifo",
                "dir",
                "/dev/zero",
                "/dev/null",
                "/dev/urandom",
                "missing",
                "big",
                "utf-16",
                "latin-1",
                "deep",
                "nul",
            ]
        )
    )
    text = render(base)
    if kind == "big":
        size = draw(st.integers(1024 * 1024 + 1, 3 * 1024 * 1024))
        return Case("file:big", raw=(text + "#" * size).encode())
    if kind == "utf-16":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
        return Case(f"file:{codec}", raw=text.encode(codec))
    if kind == "latin-1":
        word = draw(st.sampled_from(["caf\xe9", "na\xefve", "\xa9", "\xff\xfe"]))
        return Case("file:latin-1", raw=text.replace("text-generation", word).encode("latin-1"))
    if kind == "deep":
        depth = draw(st.integers(33, 6000))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a=", "}")]))
        value = opener * depth + "1" + closer * depth
        return Case("file:deep", raw=(text + f"\n[run.parameters]\nx = {value}\n").encode())
    if kind == "nul":
        at = draw(st.integers(0, len(text)))
        return Case("file:nul", raw=(text[:at] + "\x00" + text[at:]).encode())
    return Case(f"file:{kind}", special=kind)


@st.composite
def bad_token(draw: st.DrawFn, base: Sections, api_url: str) -> Case:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-."
    head = "tk" + draw(st.text(alphabet=alphabet, min_size=8, max_size=24))
    tail = draw(st.text(alphabet=alphabet + ": ", min_size=1, max_size=24)).strip() or "x"
    breaker = draw(st.sampled_from(["\n", "\r\n", "\r", "\x1b", "\x7f", "\t", "\x0b"]))
    token = head + breaker + tail
    via = draw(st.sampled_from(["token_env", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "token-file"]))
    if via == "token_env":
        sections = _with(base, "endpoint", token_env=_q("FUZZ_TOKEN"))
        return Case("token", sections, env={"FUZZ_TOKEN": token}, secret=head)
    sections = _with(base, "endpoint", provider=_q("hf"), name=_q("fuzz"), api_url=_q(api_url))
    del sections["endpoint"]["url"]
    if via == "token-file":  # $HF_HOME/token, as `hf auth login` writes it
        env = {"HF_HOME": "{where}/hf-home"}
        return Case("token", sections, env=env, secret=head, setup=[("token", token)])
    return Case("token", sections, env={via: token}, secret=head)


@st.composite
def bad_option(draw: st.DrawFn, base: Sections) -> Case:
    kind = draw(st.sampled_from(["concurrency", "limit", "unknown", "set", "output"]))
    if kind in ("concurrency", "limit"):
        value = draw(st.sampled_from(["abc", "1.5", "", "0x10", "1e3", "--"]))
        return Case(f"option:{kind}", base, args=[f"--{kind}", value])
    if kind == "unknown":
        return Case("option:unknown", base, args=["--" + draw(NAME).lower().strip("-") + "x"])
    if kind == "set":
        bad = draw(st.sampled_from(["run", "run.", ".x=1", "concurrency=1", "run.=1", "=1", ""]))
        return Case("option:set", base, args=["--set", bad])
    bad = draw(st.sampled_from(["o.csv", "o", "o.jsonl.gz", "o.txt", ""]))
    return Case("option:output", base, args=["--output", bad])


@st.composite
def bad_combination(draw: st.DrawFn, base: Sections) -> Case:
    kind = draw(st.integers(0, 9))
    s = base
    if kind == 0:
        s = _with(s, "input", template=_q("{text}"))  # and field
    elif kind == 1:
        fmt = draw(st.sampled_from(["chat", "raw"]))
        s = _with(s, "run", request_format=_q(fmt), batch_size=str(draw(st.integers(2, 10_000))))
    elif kind == 2:
        s = _with(s, "output", path=_q(draw(st.sampled_from(["o.csv", "o", "o.json", "o/"]))))
    elif kind == 3:
        s = _with(s, "input", path=_q(draw(st.sampled_from(["in.xlsx", "in", "in.txt", ""]))))
    elif kind == 4:
        s = _with(s, "endpoint", min_replica=str(draw(st.integers(2, 100))), max_replica="1")
    elif kind == 5:
        s = _with(s, "endpoint", provider=_q(draw(st.sampled_from(["hf", "local"]))))
    elif kind == 6:
        name = draw(st.sampled_from(["a/b", "../x", "a b", "-x", "x" * 129, "", "é"]))
        s = _with(s, "endpoint", provider=_q("local"), name=_q(name))
    elif kind == 7:
        s = _with(s, "input", template=_q(draw(st.sampled_from(["{", "}", "{a!x}", "{:zz}"]))))
        del s["input"]["field"]
    elif kind == 8:
        s = _with(s, "budget", max_duration=_q(draw(st.sampled_from(["soon", "-1h", "1x", ""]))))
    else:
        deadline = draw(st.sampled_from(["25:00", "soon", "2026-02-30T00:00", "", "6"]))
        s = _with(s, "budget", deadline=_q(deadline))
    return Case(f"combo:{kind}", s)


@st.composite
def missing_part(draw: st.DrawFn, base: Sections) -> Case:
    section = draw(
        st.sampled_from(["input", "output", "endpoint-url", "input-path", "output-path"])
    )
    s = {name: dict(v) for name, v in base.items()}
    if section in ("input", "output"):
        del s[section]
    elif section == "endpoint-url":
        del s["endpoint"]["url"]
    else:
        del s[section.split("-")[0]]["path"]
    return Case(f"missing:{section}", s)


@st.composite
def bad_location(draw: st.DrawFn, base: Sections) -> Case:
    """Input and output locations (`batchrun/io/preflight.py` and the readers)."""
    kind = draw(
        st.sampled_from(
            [
                "input-fifo",
                "input-dir",
                "input-device",
                "id-field",
                "under-file",
                "long-name",
                "in-state-dir",
                "state-is-file",
                "lock-is-dir",
                "errors-is-dir",
                "jsonl-is-dir",
                "parquet-is-file",
            ]
        )
    )
    s = {name: dict(v) for name, v in base.items()}
    setup: list[tuple[str, str]] = []
    if kind == "input-fifo":
        s["input"]["path"] = _q("fifo.jsonl")
        setup.append(("fifo", "fifo.jsonl"))
    elif kind == "input-dir":
        s["input"]["path"] = _q("d.jsonl")
        setup.append(("dir", "d.jsonl"))
    elif kind == "input-device":
        s["input"] |= {"path": _q("/dev/zero"), "format": _q("jsonl")}
    elif kind == "id-field":
        s["input"]["id_field"] = _q(draw(st.sampled_from(["ID", "", "idd", "text.id", " id"])))
    elif kind == "under-file":
        s["output"]["path"] = _q("blocker/r.jsonl")
        setup.append(("file", "blocker"))
    elif kind == "long-name":
        s["output"]["path"] = _q("out/" + "x" * draw(st.integers(250, 600)) + ".jsonl")
    elif kind == "in-state-dir":
        s["output"]["path"] = _q("out/r.jsonl.batchrun/x.jsonl")
    elif kind == "state-is-file":
        setup += [("dir", "out"), ("file", "out/r.jsonl.batchrun")]
    elif kind == "lock-is-dir":
        setup += [("dir", "out/r.jsonl.batchrun/lock")]
    elif kind == "errors-is-dir":
        setup += [("dir", "out/r.errors.jsonl")]
    elif kind == "jsonl-is-dir":
        setup += [("dir", "out/r.jsonl")]
    else:
        s["output"]["path"] = _q("out/r.parquet")
        setup += [("dir", "out"), ("file", "out/r.parquet")]
    return Case(f"location:{kind}", s, setup=setup)


def invalid_cases(base: Sections, port: int) -> st.SearchStrategy[Case]:
    return st.one_of(
        out_of_range(base),
        wrong_type(base),
        unknown_key(base),
        broken_toml(base),
        bad_url(base, port),
        special_file(base),
        bad_token(base, f"http://{HOST}:{port}/v2"),
        bad_option(base),
        bad_combination(base),
        missing_part(base),
        bad_location(base),
    )


# --- fixtures: one endpoint and one input per module --------------------------------------------


@pytest.fixture(scope="module")
def app() -> Iterator[EndpointApp]:
    with EndpointApp(task="text-generation") as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="batchrun-fuzz-"))
    rows = [{"id": f"r{i}", "text": f"row {i}", "n": i} for i in range(ROWS)]
    write_jsonl(root / "in.jsonl", rows)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _job_path(case: Case, where: Path) -> Path:
    for what, relative in case.setup:
        if what == "token":
            (where / "hf-home").mkdir()
            (where / "hf-home" / "token").write_text(relative)
            continue
        target = where / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if what == "dir":
            target.mkdir(parents=True)
        elif what == "fifo":
            os.mkfifo(target)
        else:
            target.write_text("")
    path = where / "job.toml"
    if case.special == "fifo":
        os.mkfifo(path)  # nobody writes: opening it for reading would block
    elif case.special == "dir":
        path.mkdir()
    elif case.special == "missing":
        pass
    elif case.special is not None:
        return Path(case.special)
    elif case.raw is not None:
        path.write_bytes(case.raw)
    else:
        assert case.sections is not None
        path.write_text(render(case.sections))
    return path


# --- (a) -------------------------------------------------------------------------------------


@settings(max_examples=INVALID_EXAMPLES, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_invalid_jobs_and_options_exit_2_with_one_line(
    data: st.DataObject, app: EndpointApp, workdir: Path
) -> None:
    base = base_sections(app.url, workdir / "in.jsonl")
    case = data.draw(invalid_cases(base, app.port), label="case")
    event(case.kind.split(":")[0])
    where = Path(tempfile.mkdtemp(dir=workdir))
    job = _job_path(case, where)
    tree = _tree(where)
    before = app.stats()["requests"]
    env = {k: v.replace("{where}", str(where)) for k, v in case.env.items()}
    result = CliRunner().invoke(
        main, ["run", str(job), "--quiet", *case.args], env=env, catch_exceptions=True
    )
    err, out = result.stderr, result.stdout
    unexpected = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not unexpected, f"{case.kind}: {result.exception!r}"
    assert "Traceback" not in err + out
    assert result.exit_code == 2, f"{case.kind}: exit {result.exit_code}: {err}{out[:300]}"
    if err.startswith("Usage:"):
        assert err.splitlines()[-1].startswith("Error: "), err
        summary = orjson.loads(out)  # a bad option gets the JSON summary too
        assert summary["exit_code"] == 2 and summary["error"] == err.splitlines()[-1][7:], out
    else:
        assert err.startswith("batchrun: error: ") and err.count("\n") == 1, err
        assert "\r" not in err, err
        summary = orjson.loads(out)  # the JSON summary is printed on every exit
        assert summary["exit_code"] == 2 and summary["error"] == err.strip().removeprefix(
            "batchrun: error: "
        ), out
    if case.secret is not None:
        assert case.secret not in err + out
    assert _tree(where) == tree, f"{case.kind}: the refused run wrote something: {err}"
    assert app.stats()["requests"] == before, f"{case.kind}: a request was sent: {err}"


# --- (b) -------------------------------------------------------------------------------------


@dataclass
class Valid:
    sections: Sections
    args: list[str]
    text_options: dict[str, Any]
    knobs: dict[str, Any]
    limit: int | None
    output: str
    id_field: bool


@st.composite
def valid_cases(draw: st.DrawFn, base: Sections) -> Valid:
    s = {name: dict(v) for name, v in base.items()}
    args: list[str] = []
    run = s["run"]
    run["concurrency"] = str(draw(st.integers(1, 32)))
    run["max_attempts"] = str(draw(st.integers(1, 4)))
    run["request_timeout"] = _literal(draw(st.sampled_from([2, 5.5, 30])))
    run["backoff_max"] = _literal(draw(st.sampled_from([0, 0.01, 0.05])))
    fmt = draw(st.sampled_from(["inputs", "chat"]))
    run["request_format"] = _q(fmt)
    if fmt == "inputs" and draw(st.booleans()):
        run["batch_size"] = str(draw(st.integers(1, 8)))
    s["output"]["commit_rows"] = str(draw(st.integers(1, 50)))
    s["output"]["commit_seconds"] = _literal(draw(st.sampled_from([0.05, 0.5, 2])))
    output = draw(st.sampled_from(["out/r.jsonl", "out/r.parquet"]))
    s["output"]["path"] = _q(output)
    if draw(st.booleans()):
        s["output"]["keep_fields"] = '["n"]'
    id_field = draw(st.booleans())
    if not id_field:
        del s["input"]["id_field"]
    extra = draw(
        st.dictionaries(
            st.sampled_from(
                ["model", "grace_period", "max_requests_per_minute", "retry_after_max"]
            ),
            st.just(""),
        )
    )
    for key in extra:
        run[key] = {"model": _q("m"), "grace_period": "1", "max_requests_per_minute": "0"}.get(
            key, "0.5"
        )
    if draw(st.booleans()):
        s["budget"] = {"price_per_hour": "0", "max_duration": _q("1h"), "max_cost_usd": "5.0"}
    limit = draw(st.one_of(st.none(), st.integers(0, ROWS + 3)))
    if limit is not None:
        if draw(st.booleans()):
            args += ["--limit", str(limit)]
        else:
            run["limit"] = str(limit)
    how = draw(st.sampled_from(["file", "option", "set"]))
    if how == "option":
        args += ["--concurrency", run.pop("concurrency")]
    elif how == "set":
        args += ["--set", f"run.concurrency={run.pop('concurrency')}"]
    names = list(s)
    order = draw(st.permutations(names))
    s = {name: dict(draw(st.permutations(list(s[name].items())))) for name in order}
    text_options = {
        "comments": draw(st.booleans()),
        "pad": draw(st.sampled_from([" ", "", "   ", "\t"])),
        "crlf": draw(st.booleans()),
    }
    knobs = {
        "fail_rate": draw(st.sampled_from([0.0, 0.0, 0.2])),
        "reject_match": draw(st.sampled_from(["", "", "row 3"])),
        "latency_ms": draw(st.sampled_from([0.0, 5.0])),
    }
    return Valid(s, args, text_options, knobs, limit, output, id_field)


@settings(max_examples=VALID_EXAMPLES, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_valid_mutations_run_and_every_id_ends_once(
    data: st.DataObject, app: EndpointApp, workdir: Path
) -> None:
    case = data.draw(valid_cases(base_sections(app.url, workdir / "in.jsonl")), label="case")
    where = Path(tempfile.mkdtemp(dir=workdir))
    job = where / "job.toml"
    job.write_bytes(render(case.sections, **case.text_options).encode())
    app.configure(**case.knobs)
    try:
        code, summary, err = finish(start_run(job, *case.args), timeout=90)
    finally:
        app.configure(fail_rate=0.0, reject_match="", latency_ms=0.0)
    event(f"exit {code}")
    assert "Traceback" not in err
    assert code in (0, 3, 5), f"exit {code}: {err}"
    assert summary, f"no summary on stdout: {err}"
    rows = min(case.limit, ROWS) if case.limit is not None else ROWS
    expected = [f"r{i}" if case.id_field else i for i in range(rows)]
    output = where / case.output
    ids = [r["id"] for r in read_results(output)]
    ids += [r["id"] for r in read_jsonl(where / "out" / "r.errors.jsonl")]
    assert len(ids) == len(set(ids)), f"an id twice: {sorted(map(str, ids))}"
    assert set(ids) <= set(expected)
    if code in (0, 3):
        assert sorted(map(str, ids)) == sorted(map(str, expected))
