"""`batchrun run` as a real process against hostile answers: an endpoint that echoes the token,
and an answer far larger than `[run] max_response_bytes`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.endpoint_app import EndpointApp, expected_generated_text
from tests.support.run import ROOT, job_sections, read_jsonl, write_job, write_jsonl

TOKEN = "hf_s3cretEchoedBackToUs_0123456789"

# Runs `batchrun run` as its child and writes the child's peak RSS (KiB) to argv[1].
_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def _run(
    tmp_path: Path, job: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str, int]:
    """`python -m batchrun ARGS... run JOB`: exit code, stdout, stderr, peak RSS in KiB."""
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = str(ROOT) + os.pathsep + child_env.get("PYTHONPATH", "")
    rss_file = tmp_path / "peak-rss"
    command = [sys.executable, "-m", "batchrun", *args, "run", str(job)]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(rss_file), *command],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        timeout=120,
    )
    rss_kib = int(rss_file.read_text())
    rss_file.unlink()
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(), rss_kib


def _rows(n: int, odd_one: str) -> list[dict[str, Any]]:
    texts = [f"row {i}" for i in range(n)]
    texts[n // 2] = odd_one
    return [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)]


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.parametrize("echo", ["error", "html"])
def test_an_endpoint_echoing_the_token_leaks_it_nowhere(
    tmp_path: Path, endpoint_app: EndpointApp, echo: str
) -> None:
    endpoint_app.configure(echo_auth=echo, echo_auth_match="hostile", fail_status=500)
    write_jsonl(tmp_path / "in.jsonl", _rows(12, "hostile row"))
    sections = job_sections(
        endpoint_app.url,
        "in.jsonl",
        "out/r.jsonl",
        endpoint={"token_env": "MY_TOKEN"},
        input={"id_field": "id"},
    )
    job = write_job(tmp_path / "job.toml", sections)
    code, out, err, _ = _run(tmp_path, job, "-vv", env={"MY_TOKEN": TOKEN})
    assert code == 3, err
    assert endpoint_app.stats()["last_headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert len(read_jsonl(tmp_path / "out/r.jsonl")) == 11
    (error,) = read_jsonl(tmp_path / "out/r.errors.jsonl")
    assert error["id"] == "r6"
    assert "you sent Authorization: ***" in error["error"]
    if echo == "error":  # retried: the first retry's WARNING line quotes the server
        assert (error["status"], error["attempts"]) == ("http_500", 3)
        retries = [line for line in err.splitlines() if "retry 1/2" in line or "retry 2/2" in line]
        assert len(retries) == 1 and all("Authorization: ***" in line for line in retries)
    else:  # an undecodable 200 is final
        assert (error["status"], error["attempts"]) == ("bad_response", 1)
    assert "DEBUG" in err  # -vv really was on
    assert TOKEN not in out and TOKEN not in err
    assert orjson.loads(out)["failed"] == 1
    assert _files_holding(tmp_path, TOKEN.encode()) == []  # results, errors, state, home


def test_an_answer_over_max_response_bytes_is_that_rows_error_and_memory_stays_bounded(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    write_jsonl(tmp_path / "in.jsonl", _rows(20, "huge answer"))

    def job(out: str) -> Path:
        sections = job_sections(
            endpoint_app.url,
            "in.jsonl",
            out,
            input={"id_field": "id"},
            run={"max_response_bytes": 1_048_576},
        )
        return write_job(tmp_path / "job.toml", sections)

    code, _, err, baseline_kib = _run(tmp_path, job("plain/r.jsonl"))  # no huge answer
    assert code == 0, err
    endpoint_app.configure(big_response_bytes=5_000_000, big_response_match="huge", reset=True)
    code, out, err, rss_kib = _run(tmp_path, job("out/r.jsonl"))
    assert code == 3, err
    (error,) = read_jsonl(tmp_path / "out/r.errors.jsonl")
    assert (error["id"], error["status"], error["attempts"]) == ("r10", "response_too_large", 1)
    assert "max_response_bytes = 1,048,576 bytes" in error["error"]
    results = read_jsonl(tmp_path / "out/r.jsonl")
    assert len(results) == 19
    assert all(
        r["generated_text"] == expected_generated_text(f"row {r['id'][1:]}") for r in results
    )
    assert endpoint_app.received()["huge answer"] == 1
    assert orjson.loads(out)["failed"] == 1
    # Read whole, the 5 MB answer costs ~15 MiB (body, parsed, written); capped, ~1 MiB.
    grown_mib = (rss_kib - baseline_kib) / 1024
    assert grown_mib < 8, f"peak RSS {rss_kib / 1024:.0f} MiB, {grown_mib:.1f} MiB over a plain run"
