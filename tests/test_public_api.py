from __future__ import annotations

import asyncio
import gc
import importlib
import pkgutil
import socket
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import batchrun
from tests.support.endpoint_app import EndpointApp
from tests.support.run import job_sections, write_job, write_jsonl


def test_all_is_sorted_and_exported() -> None:
    assert list(batchrun.__all__) == sorted(batchrun.__all__)
    for name in batchrun.__all__:
        assert hasattr(batchrun, name), name


def test_every_module_imports_and_sorts_its_all() -> None:
    for info in pkgutil.walk_packages(batchrun.__path__, "batchrun."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        if names is not None:
            assert list(names) == sorted(names), info.name
            for name in names:
                assert hasattr(module, name), f"{info.name}.{name}"


def test_error_tree_exit_codes() -> None:
    from batchrun import errors

    assert errors.JobError.exit_code == 2
    assert errors.RunLockedError.exit_code == 8 and not issubclass(
        errors.RunLockedError, errors.JobError
    )
    assert errors.APIConnectionError.exit_code == 5
    assert errors.EndpointTimeoutError.exit_code == 5
    assert issubclass(errors.EndpointTimeoutError, TimeoutError)
    assert errors.EndpointRestError.exit_code == 6
    assert errors.NotFoundError("x", status=404).exit_code == 2
    assert errors.APIClientError("slow down", status=429).exit_code == 1
    assert errors.BatchrunError.exit_code == 1


# -- the Python API in a notebook and a pipeline step (issue 13, section 5) -----------------

CALLER_NAMES = {
    "Budget",
    "CostMeter",
    "EndpointFailedError",
    "EndpointLease",
    "EndpointRestError",
    "EndpointTimeoutError",
    "InputError",
    "JobError",
    "OutputWriteError",
    "RunLockedError",
    "RunSummary",
    "RunningLoopError",
    "arun_job",
    "load_job",
    "run_job",
}


def test_what_callers_catch_and_use_is_exported() -> None:
    assert set(batchrun.__all__) >= CALLER_NAMES
    from batchrun import errors

    for name in batchrun.__all__:
        if name.endswith("Error"):
            assert getattr(batchrun, name) is getattr(errors, name)


def _url_job(tmp_path: Path, url: str, out: str, rows: list[dict[str, Any]]) -> batchrun.Job:
    write_jsonl(tmp_path / "in.jsonl", rows)
    sections = job_sections(url, "in.jsonl", out, input={"id_field": "id"})
    return batchrun.load_job(write_job(tmp_path / f"job-{Path(out).stem}.toml", sections))


def test_run_job_inside_a_running_loop_says_to_await_arun_job(tmp_path: Path) -> None:
    job = _url_job(tmp_path, "http://127.0.0.1:9", "out.jsonl", [{"id": 1, "text": "a"}])

    async def notebook_cell() -> None:
        with pytest.raises(batchrun.RunningLoopError, match=r"await batchrun\.arun_job\(job\)"):
            batchrun.run_job(job)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(notebook_cell())
        gc.collect()
    assert [str(w.message) for w in caught] == []  # no "coroutine ... was never awaited"
    assert issubclass(batchrun.RunningLoopError, batchrun.JobError)
    assert not (tmp_path / "out.jsonl.batchrun").exists()  # nothing was started


@pytest.mark.parametrize("out", ["out.jsonl", "out.parquet"])
def test_summary_reads_back_what_the_run_committed(
    tmp_path: Path, endpoint_app: EndpointApp, out: str
) -> None:
    rows = [{"id": i, "text": f"row {i}"} for i in range(40)]
    rows[7] = {"id": 7, "other": "no text"}  # bad_input: goes to the errors file, never sent
    summary = batchrun.run_job(_url_job(tmp_path, endpoint_app.url, out, rows), progress=False)
    assert summary.exit_code == 3 and not summary.ok and summary.pending == 0
    text = str(summary)
    assert "exit 3" in text and summary.output in text and summary.errors_path in text
    assert len(text.splitlines()) >= 4
    short = repr(summary)
    assert short.startswith("RunSummary(exit_code=3, succeeded=39, failed=1") and "\n" not in short

    if out.endswith(".jsonl"):  # an uncommitted tail (a live run's) is not read
        with open(summary.output, "ab") as f:
            f.write(b'{"id": 99, "generated_text": "not committed"}\n{"id": 1')
    results = summary.read_results()
    assert isinstance(results, pa.Table) and results.num_rows == 39
    assert sorted(results.column("id").to_pylist()) == [i for i in range(40) if i != 7]
    assert "generated_text" in results.column_names
    streamed = list(summary.iter_results(batch_rows=8))
    assert sorted(r["id"] for r in streamed) == sorted(results.column("id").to_pylist())
    assert all(r["generated_text"] for r in streamed)
    errors = summary.read_errors()
    assert errors.num_rows == 1 and errors.column("status").to_pylist() == ["bad_input"]
    assert [e["id"] for e in summary.iter_errors()] == [7]


def test_summary_of_a_clean_run_is_ok_and_of_nothing_written_is_empty(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    rows = [{"id": i, "text": f"row {i}"} for i in range(5)]
    summary = batchrun.run_job(
        _url_job(tmp_path, endpoint_app.url, "ok.jsonl", rows), progress=False
    )
    assert summary.ok and summary.read_errors().num_rows == 0
    assert summary.read_results().num_rows == 5
    for out in ("never.jsonl", "never.parquet"):
        nothing = batchrun.RunSummary(output=str(tmp_path / out), errors_path=str(tmp_path / "e"))
        assert nothing.read_results().num_rows == 0 and nothing.read_errors().num_rows == 0
        assert list(nothing.iter_results()) == [] and list(nothing.iter_errors()) == []


def test_errors_for_exit_5_carry_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v2"
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a"}])
    sections = job_sections("http://unused", "in.jsonl", "out.jsonl")
    sections["endpoint"] = {
        "provider": "hf",
        "api_url": dead,
        "name": "ep",
        "namespace": "me",
        "watchdog": False,
    }
    job = batchrun.load_job(write_job(tmp_path / "job.toml", sections))
    with pytest.raises(batchrun.APIConnectionError) as caught:
        batchrun.run_job(job, progress=False)
    summary = caught.value.summary
    assert isinstance(summary, batchrun.RunSummary)
    assert summary.exit_code == 5 and summary.resumable and not summary.ok
    assert summary.pending == 1 and summary.results_total == 0
    assert summary.error and "hf_secret_value" not in summary.error + repr(summary) + str(summary)
    assert summary.output == job.output.path and summary.endpoint == "me/ep"
