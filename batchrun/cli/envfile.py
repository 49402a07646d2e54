"""Container environment and secrets from the command line: `-e/--env`, `-s/--secrets`, and
dotenv files (`--env-file`, `--secrets-file`), read the way `hf endpoints` reads them.

A file holds one variable a line: `KEY=VALUE`, optionally after `export `; a value in double
quotes takes the escapes `\\"`, `\\\\`, `\\n`, `\\t`, `\\r`; in single quotes it is taken as
written; unquoted it ends at ` #` (an inline comment) and is stripped. A bare `KEY` takes the
value of that variable in the environment. Blank lines and `#` comments are skipped; there is
no `${VAR}` interpolation and no value spanning lines. A line that is none of these is refused
with `InputError` naming the file and the line, never the line's text: it may hold a secret.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from batchrun.errors import InputError

__all__ = ["parse_env_text", "read_env_file", "resolve_pairs"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE = re.compile(r"(?:export[ \t]+)?([^\s=#]+)[ \t]*(=?)[ \t]*(.*)")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def parse_env_text(text: str, source: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of a dotenv text, in file order; a later line wins over an earlier one.

    Args:
        text: the file's text.
        source: named in messages (the path, or "<stdin>").
        environ: where a bare `KEY` line takes its value.

    Raises:
        InputError: `source:line: ...` for a line that is not a variable, a name that is not a
            variable's name, an unclosed quote, text after a closing quote, or a bare `KEY`
            that is not set in `environ`.
    """
    out: dict[str, str] = {}
    for number, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        match = _LINE.fullmatch(line)
        if match is None:  # starts with "=": no name
            raise InputError(f"{where}: expected KEY=VALUE, found no name before '='")
        key, equals, rest = match.groups()
        if not equals and not _NAME.fullmatch(key):
            raise InputError(
                f"{where}: expected KEY=VALUE, or the NAME of a variable in the environment"
            )
        if not _NAME.fullmatch(key):
            raise InputError(
                f"{where}: the name before '=' is not a variable name (letters, digits, _; "
                "not starting with a digit)"
            )
        if not equals:
            if rest and not rest.startswith("#"):
                raise InputError(f"{where}: expected KEY=VALUE (a name, then '=' and the value)")
            out[key] = _from_environ(key, environ, where)
            continue
        out[key] = _value(rest, where)
    return out


def read_env_file(path: str, option: str) -> tuple[str, str]:
    """The text of a dotenv file (`-` is stdin) and the name messages give it.

    Raises:
        InputError: the file is missing, unreadable or not UTF-8 text.
    """
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(path).read_text(encoding="utf-8-sig"), path
    except FileNotFoundError as e:
        raise InputError(f"{option} {path}: no such file") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{option} {path}: not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise InputError(f"{option} {path}: cannot read: {e.strerror or e}") from e


def resolve_pairs(items: Iterable[str], option: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`NAME=VALUE` or `NAME` (the value read from `environ`) options, as given on the shell.

    Raises:
        InputError: naming the option, for a bad name or a `NAME` not set in `environ`; the
            message never shows a value.
    """
    out: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        key = key.strip()
        if not _NAME.fullmatch(key):
            raise InputError(
                f"{option}: expected KEY=VALUE or NAME (of a variable in the environment), "
                "where a name is letters, digits and _, not starting with a digit"
            )
        out[key] = value if equals else _from_environ(key, environ, option)
    return out


def _from_environ(key: str, environ: Mapping[str, str], where: str) -> str:
    try:
        return environ[key]
    except KeyError:
        raise InputError(
            f"{where}: the environment variable {key} is not set (give KEY=VALUE, or export {key})"
        ) from None


def _value(rest: str, where: str) -> str:
    if not rest or rest[0] not in "\"'":
        comment = re.search(r"[ \t]#", rest)
        return (rest[: comment.start()] if comment else rest).strip()
    quote, i = rest[0], 1
    chars: list[str] = []
    while i < len(rest):
        c = rest[i]
        if c == quote:
            tail = rest[i + 1 :].strip()
            if tail and not tail.startswith("#"):
                raise InputError(f"{where}: text after the closing quote")
            return "".join(chars)
        if c == "\\" and quote == '"' and i + 1 < len(rest) and rest[i + 1] in _ESCAPES:
            chars.append(_ESCAPES[rest[i + 1]])
            i += 2
            continue
        chars.append(c)
        i += 1
    raise InputError(f"{where}: the quoted value has no closing {quote} (one line per variable)")
