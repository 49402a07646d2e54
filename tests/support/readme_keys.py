"""The README's table of job keys, generated from the job model and checked against it.

Section, key, type and default come from the job's dataclasses (`batchrun/job.py`), ranges
from `RANGES`; only the meaning is written by hand, in the README itself. `check` lists what
is out of date, each problem with the exact row to put in the table; `tests/test_readme.py`
fails with that list. To rewrite the table in place (meanings kept, new keys marked TODO):

    python -m tests.support.readme_keys --write      # or without --write: print the table
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchrun.job import RANGES, BudgetSpec, EndpointSpec, InputSpec, OutputSpec, RunSpec

__all__ = ["HEADING", "README", "KeyRow", "check", "model_rows", "render_table", "table_rows"]

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "### Job keys and their ranges"
SECTIONS: dict[str, type[Any]] = {
    "endpoint": EndpointSpec,
    "input": InputSpec,
    "output": OutputSpec,
    "run": RunSpec,
    "budget": BudgetSpec,
}
HEADER = "| section | key | type | default | meaning |\n| --- | --- | --- | --- | --- |"
TODO = "TODO: say what it does"
# Keys whose loader takes more than the field's type says (`job._coerce`).
_TYPE_OVERRIDES = {
    ("budget", "max_duration"): 'number (seconds) or duration ("2h30m")',
    ("budget", "deadline"): 'time ("06:00") or date-time',
}


@dataclass(slots=True, frozen=True)
class KeyRow:
    """One row of the table: what the model says, and the README's meaning."""

    section: str
    key: str
    type: str
    default: str
    meaning: str = ""

    def line(self) -> str:
        meaning = self.meaning or TODO
        return f"| `[{self.section}]` | `{self.key}` | {self.type} | {self.default} | {meaning} |"


def model_rows() -> list[KeyRow]:
    """Every key of every section, in the dataclasses' order, without meanings."""
    rows = []
    for section, spec in SECTIONS.items():
        hints = typing.get_type_hints(spec)
        for f in dataclasses.fields(spec):
            kind = _TYPE_OVERRIDES.get((section, f.name)) or _type_text(hints[f.name])
            rows.append(KeyRow(section, f.name, kind, _default_text(f)))
    return rows


def table_rows(readme: str) -> dict[tuple[str, str], KeyRow]:
    """The rows of the README's table, by (section, key)."""
    out = {}
    for line in _table_lines(readme):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 5 or not cells[0].startswith("`["):
            continue
        section, key = cells[0].strip("`[]"), cells[1].strip("`")
        out[section, key] = KeyRow(section, key, cells[2], cells[3], cells[4])
    return out


def check(readme: str) -> list[str]:
    """What is out of date in the README's table; empty when it matches the model."""
    found = table_rows(readme)
    problems = []
    model = model_rows()
    for previous, row in zip([None, *model], model, strict=False):
        have = found.get((row.section, row.key))
        expected = dataclasses.replace(row, meaning=have.meaning if have else _range_text(row))
        if have is None:
            after = f" after the row of [{previous.section}] {previous.key}" if previous else ""
            problems.append(
                f"[{row.section}] {row.key} is missing; add this row{after} "
                f"(and say what it does):\n{expected.line()}"
            )
            continue
        if (have.type, have.default) != (row.type, row.default):
            problems.append(
                f"[{row.section}] {row.key}: the README says type {have.type!r}, default "
                f"{have.default!r}; the model says {row.type!r}, {row.default!r}. "
                f"Replace its row with:\n{expected.line()}"
            )
        allowed = RANGES.get(row.section, {}).get(row.key)
        if allowed is not None and allowed.describe() not in have.meaning:
            problems.append(
                f"[{row.section}] {row.key}: its meaning must state the range "
                f"{allowed.describe()!r}"
            )
        if not have.meaning or TODO in have.meaning:
            problems.append(f"[{row.section}] {row.key}: say what it does (meaning column)")
    known = {(r.section, r.key) for r in model}
    for section, key in found:
        if (section, key) not in known:
            problems.append(f"[{section}] {key} is not a job key any more; remove its row")
    return problems


def render_table(readme: str) -> str:
    """The whole table as it should be: the model's rows, with the README's meanings."""
    found = table_rows(readme)
    lines = [HEADER]
    for row in model_rows():
        have = found.get((row.section, row.key))
        meaning = have.meaning if have else _range_text(row)
        lines.append(dataclasses.replace(row, meaning=meaning).line())
    return "\n".join(lines)


def rewrite(readme: str) -> str:
    """The README with its table replaced by `render_table`."""
    old = _table_lines(readme)
    if not old:
        raise SystemExit(f"README.md has no table under {HEADING!r}")
    start = readme.index(old[0])
    end = readme.index(old[-1], start) + len(old[-1])
    return readme[:start] + render_table(readme) + readme[end:]


def _table_lines(readme: str) -> list[str]:
    if HEADING not in readme:
        return []
    part = readme.split(HEADING, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    lines = part.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("| section |")), None)
    if first is None:
        return []
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def _range_text(row: KeyRow) -> str:
    allowed = RANGES.get(row.section, {}).get(row.key)
    return f"{allowed.describe()}; {TODO}" if allowed else ""


def _type_text(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_text(a) for a in args if a is not type(None))
    if origin is Literal:
        return "string: " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"array of {_type_text(args[0])}s"
    if origin is dict:
        return "table" if args[1] is Any else f"table of {_type_text(args[1])}s"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if hint is dt.datetime:
        return "date-time"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, dict | list):
        return "`{}`" if isinstance(value, dict) and not value else f"`{value}`"
    return f"`{value}`"


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    if "--write" in argv:
        README.write_text(rewrite(text), encoding="utf-8")
        problems = check(README.read_text(encoding="utf-8"))
        print("\n".join(problems) or "README.md's job key table is up to date", file=sys.stderr)
        return 1 if problems else 0
    print(render_table(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
