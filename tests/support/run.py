"""Helpers for the `batchrun run` tests: job files, reading outputs, running the CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from batchrun.io.state import RunState

ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def write_job(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A job file from sections (nested dicts become sub-tables, e.g. run.parameters)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        for key, value in values.items():
            if not isinstance(value, dict):
                lines.append(f"{key} = {toml_value(value)}")
        for key, table in tables.items():
            lines.append(f"[{name}.{key}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def job_sections(
    url: str, input_path: str, output_path: str, **extra: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {
        "endpoint": {"provider": "url", "url": url, "task": "text-generation"},
        "input": {"path": input_path, "field": "text"},
        "output": {"path": output_path},
        "run": {"concurrency": 8, "max_attempts": 3, "request_timeout": 10, "backoff_max": 0.05},
    }
    for name, values in extra.items():
        section = sections.setdefault(name, {})
        for key, value in values.items():
            if value is None:
                section.pop(key, None)  # None removes a default key
            else:
                section[key] = value
    return sections


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every result row: a JSONL file, or every part of a Parquet directory."""
    if path.is_dir():
        rows: list[dict[str, Any]] = []
        for part in sorted(path.glob("part-*.parquet")):
            rows.extend(pq.read_table(part).to_pylist())
        return rows
    return read_jsonl(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def committed_meta(output: Path) -> dict[str, Any]:
    """The run state's committed offsets (read-only look, as a crash left them)."""
    view = RunState.peek(RunState.directory_for(str(output)))
    assert view is not None, f"no run state for {output}"
    return view.committed.meta()


def committed_ids(output: Path, errors: Path) -> set[Any]:
    """Ids in the committed part of the results and the errors file (ignores uncommitted tails)."""
    meta = committed_meta(output)
    ids: set[Any] = set()
    if output.is_dir():
        for i in range(1, int(meta.get("parts", 0)) + 1):
            ids.update(pq.read_table(output / f"part-{i:06d}.parquet").column("id").to_pylist())
    else:
        data = output.read_bytes()[: int(meta.get("results_offset", 0))]
        ids.update(orjson.loads(line)["id"] for line in data.splitlines())
    if errors.exists():
        data = errors.read_bytes()[: int(meta.get("errors_offset", 0))]
        ids.update(orjson.loads(line)["id"] for line in data.splitlines())
    return ids


def start_run(job: Path, *args: str, stderr: Path | None = None) -> subprocess.Popen[bytes]:
    """`batchrun run JOB ...` as a real process (its own session, so signals reach it alone).

    `stderr`: a file for its stderr (to watch it while it runs); else a pipe.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    sink = None if stderr is None else stderr.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", str(job), "--quiet", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if sink is None else sink,
            start_new_session=True,
        )
    finally:
        if sink is not None:
            sink.close()  # the child holds its own copy


def finish(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> tuple[int, dict[str, Any], str]:
    """Wait for a run; return its exit code, its JSON summary (or {}) and its stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    summary = orjson.loads(out) if out.strip() else {}
    return proc.returncode, summary, (err or b"").decode(errors="replace")
