"""The layers hold: imports only go down, `local/` is its own program, and the light
processes (`import batchrun`, the watchdog, a local worker) load only what they use."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "batchrun"

# Top to bottom: cli → shards → runner → targets / summary / reports / progress → lifecycle →
# pool / endpoints → codecs / io / budget / net (and endpoints.models, a leaf the cost meter
# reads states from) → job / home → errors / _version. The longest matching prefix wins.
RANKS = {
    "batchrun.cli": 8,
    "batchrun.__main__": 8,
    "batchrun.shards": 7,
    "batchrun.runner": 6,
    "batchrun.targets": 5,
    "batchrun.summary": 5,
    "batchrun.reports": 5,
    "batchrun.progress": 5,
    "batchrun.lifecycle": 4,
    "batchrun.pool": 3,
    "batchrun.endpoints": 3,
    "batchrun.codecs": 2,
    "batchrun.openai_batch": 2,
    "batchrun.io": 2,
    "batchrun.budget": 2,
    "batchrun.net": 2,
    "batchrun.adaptive": 2,
    "batchrun.health": 2,
    "batchrun.ratelimit": 2,
    "batchrun.endpoints.models": 2,
    "batchrun.job": 1,
    "batchrun.home": 1,
    "batchrun.errors": 0,
    "batchrun._version": 0,
}
# `local/` is the service, its own program: its own modules and these leaves only.
LOCAL_MAY_IMPORT = ("batchrun.local", "batchrun._version", "batchrun.errors", "batchrun.home")
# Who may start or read the local service.
LOCAL_IMPORTERS = ("batchrun.endpoints.connect", "batchrun.cli.serve")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _rank(module: str) -> int | None:
    matches = [p for p in RANKS if module == p or module.startswith(p + ".")]
    return RANKS[max(matches, key=len)] if matches else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from batchrun import x` may name a submodule
            if node.module == "batchrun":
                found.extend((node.lineno, f"batchrun.{alias.name}") for alias in node.names)
    return [(line, name) for line, name in found if name.split(".")[0] == "batchrun"]


def _violations() -> list[str]:
    bad: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module == "batchrun":
            continue  # the front door re-exports the public API, lazily
        for line, target in _imports(path):
            if target == "batchrun":
                bad.append(f"{module}:{line} imports the front door (batchrun)")
                continue
            where = f"{module}:{line} imports {target}"
            if module.startswith("batchrun.local"):
                if not target.startswith(LOCAL_MAY_IMPORT):
                    bad.append(f"{where}: local/ imports only _version, errors, home and itself")
                continue
            if target.startswith("batchrun.local"):
                if module not in LOCAL_IMPORTERS:
                    bad.append(f"{where}: only {', '.join(LOCAL_IMPORTERS)} import local/")
                continue
            mine, theirs = _rank(module), _rank(target)
            if mine is None or theirs is None:
                bad.append(f"{where}: a module missing from the layer table")
            elif theirs > mine:
                bad.append(f"{where}: upward (layer {mine} → {theirs})")
    return bad


def test_imports_only_go_down() -> None:
    assert _violations() == []


def _loaded(code: str) -> set[str]:
    """The modules loaded by running `code` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import batchrun", {"batchrun.runner", "aiohttp"}),
        ("import batchrun.lifecycle.watchdog", {"aiohttp", "batchrun.runner", "batchrun.pool"}),
        ("import batchrun.local.worker", {"batchrun.runner", "batchrun.pool"}),
    ],
    ids=["front-door", "watchdog", "local-worker"],
)
def test_light_processes_load_only_what_they_use(code: str, absent: set[str]) -> None:
    loaded = _loaded(code)
    assert not absent & loaded, sorted(absent & loaded)


def test_the_public_api_still_loads_on_use() -> None:
    loaded = _loaded("import batchrun\nbatchrun.run_job")
    assert "batchrun.runner" in loaded
