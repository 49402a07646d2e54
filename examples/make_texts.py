"""Write examples/texts.jsonl: a few thousand paragraphs of real English prose, offline.

The text is the documentation that ships with Python itself: the docstrings of a fixed list
of standard-library modules, their classes, functions and methods. Prose paragraphs are kept
(no code, no doctests, 40-600 characters), whitespace is collapsed, duplicates dropped, and
the first 3,000 in module order are written as {"id", "text", "source"} lines. Nothing is
downloaded; running it again with the same Python version writes the same file.

    python examples/make_texts.py            # writes examples/texts.jsonl next to this script
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

MODULES = [
    "abc",
    "argparse",
    "array",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "importlib",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "platform",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shutil",
    "signal",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tomllib",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "xml.etree.ElementTree",
    "zipfile",
    "zoneinfo",
]
LIMIT = 3000
_PROSE = re.compile(r"^[A-Z][^>{}|]*[.!?]$")


def _docs(module_name: str) -> Iterator[tuple[str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # cgi, telnetlib, ...: still prose
        module = importlib.import_module(module_name)
    yield module_name, inspect.getdoc(module) or ""
    for name, obj in sorted(vars(module).items()):
        owner = getattr(obj, "__module__", None) or ""
        if name.startswith("_") or not owner.startswith(module.__name__):
            continue
        yield f"{module_name}.{name}", inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and callable(member):
                    yield f"{module_name}.{name}.{attr}", inspect.getdoc(member) or ""


def _paragraphs(doc: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", doc):
        lines = block.splitlines()
        if not lines or any(line.startswith((" ", "\t", ">>>", "...")) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        if 40 <= len(text) <= 600 and _PROSE.match(text) and text.count("(") < 3:
            yield text


def main() -> None:
    seen: set[str] = set()
    rows = []
    for module_name in MODULES:
        for source, doc in _docs(module_name):
            for text in _paragraphs(doc):
                if text not in seen:
                    seen.add(text)
                    rows.append({"id": f"doc-{len(rows) + 1:05d}", "text": text, "source": source})
                if len(rows) >= LIMIT:
                    break
            if len(rows) >= LIMIT:
                break
        if len(rows) >= LIMIT:
            break
    out = Path(__file__).resolve().parent / "texts.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {out} (Python {sys.version.split()[0]})", file=sys.stderr)


if __name__ == "__main__":
    main()
