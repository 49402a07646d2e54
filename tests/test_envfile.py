"""The dotenv parser behind `--env-file` and `--secrets-file`, property-based.

Any set of variables, written in any of the spellings the format allows (unquoted, single or
double quotes, `export`, spaces around `=`, inline comments, comment and blank lines, CRLF),
reads back as the same set; any text at all either reads or fails with one `InputError`
naming `file:line` of a line that really is in the text, and never showing a value.
"""

from __future__ import annotations

import os
import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.cli.envfile import parse_env_text, resolve_pairs
from batchrun.errors import InputError

os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "batchrun-hypothesis")
)
_SETTINGS = settings(max_examples=150, deadline=None, database=None)

_FIRST = string.ascii_letters + "_"
names = st.builds(
    str.__add__, st.sampled_from(_FIRST), st.text(_FIRST + string.digits, max_size=12)
).filter(lambda n: n != "export")
# One-line values: any printable text, also quotes, '#', '=', backslashes and inner spaces.
values = st.text(
    st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"], blacklist_characters="\x85"),
    max_size=30,
)


@st.composite
def spelled(draw: st.DrawFn, name: str, value: str) -> str:
    """One line that means `name=value`, in a spelling the format allows for this value."""
    ways = ["double"]
    if "'" not in value:
        ways.append("single")
    if value == value.strip() and value[:1] not in ("'", '"') and "#" not in value:
        ways.append("bare")
    way = draw(st.sampled_from(ways))
    if way == "double":
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        text = f'"{escaped}"'
    elif way == "single":
        text = f"'{value}'"
    else:
        text = value
    export = draw(st.sampled_from(["", "export ", "export\t"]))
    around = draw(st.sampled_from(["=", " = ", "= ", "\t=\t"]))
    comment = draw(st.sampled_from(["", "  # a comment", "\t#x=1"])) if text else ""
    if way == "bare" and not text:
        around = around.rstrip()  # "KEY=" then a comment would make the comment the value
    return f"{draw(st.sampled_from(['', '  ']))}{export}{name}{around}{text}{comment}"


@st.composite
def env_files(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    variables = draw(st.dictionaries(names, values, max_size=8))
    lines = []
    for name, value in variables.items():
        lines += draw(st.lists(st.sampled_from(["", "# comment", "   ", "#K=V"]), max_size=2))
        lines.append(draw(spelled(name, value)))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines) + draw(st.sampled_from(["", newline])), variables


@_SETTINGS
@given(env_files())
def test_every_spelling_reads_back_the_same_variables(case: tuple[str, dict[str, str]]) -> None:
    text, variables = case
    assert parse_env_text(text, "f.env", {}) == variables


@_SETTINGS
@given(st.text(max_size=200))
def test_any_text_reads_or_fails_naming_a_real_line(text: str) -> None:
    try:
        parsed = parse_env_text(text, "f.env", {})
    except InputError as e:
        message = str(e)
        assert message.startswith("f.env:") and "\n" not in message
        number = int(message.split(":")[1])
        line = text.replace("\r\n", "\n").split("\n")[number - 1].strip()
        assert line and not line.startswith("#")
        for word in line.split():
            bare_name = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word) and line == word
            if len(word) >= 8 and not bare_name:  # no value (a secret?) is shown; a name may be
                assert word not in message.removeprefix(f"f.env:{number}:")
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


def test_bare_names_take_the_environment_and_later_lines_win() -> None:
    text = "A=1\nTOKEN\nA=2 # again\n"
    assert parse_env_text(text, "f.env", {"TOKEN": "t0k"}) == {"A": "2", "TOKEN": "t0k"}
    with pytest.raises(InputError, match=r"^f\.env:2: the environment variable TOKEN is not set"):
        parse_env_text(text, "f.env", {})


def test_options_take_key_value_or_a_name_from_the_environment() -> None:
    got = resolve_pairs(["A=x=y", "B=", "TOKEN"], "--secrets", {"TOKEN": "t0k"})
    assert got == {"A": "x=y", "B": "", "TOKEN": "t0k"}
    with pytest.raises(InputError, match=r"^--secrets: expected KEY=VALUE or NAME"):
        resolve_pairs(["sk-not-a-name"], "--secrets", {})
