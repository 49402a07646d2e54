"""A run that cannot succeed stops at once (exit 5), its rows pending; outages hold the pool;
a stalled run stops (exit 1); retries are logged once per status, then rolled up.

Against real aiohttp servers on 127.0.0.1 (tests/support/endpoint_app.py) and closed ports;
asserted by counts (requests on the server, rows in the files), never by clocks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import (
    BadResponseError,
    EndpointUnusableError,
    InferenceConnectionError,
    InferenceStatusError,
    RunStalledError,
)
from batchrun.health import RouteHealth, Verdict, breaker_window, endpoint_wide_class, trouble_of
from batchrun.job import load_job
from batchrun.pool import Outcome, Pool, Request
from batchrun.runner import arun_job, run_job
from batchrun.summary import RunSummary
from batchrun.targets import Target, open_target
from tests.support.endpoint_app import EndpointApp
from tests.support.run import finish, job_sections, read_jsonl, start_run, write_job, write_jsonl

GOOD = "good-token-5f1c"
BAD = "bad-token-9e7a"
C = 8


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _input(tmp_path: Path, n: int) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"row {i}."} for i in range(n)])


def _job(tmp_path: Path, url: str, **run: Any) -> Path:
    sections = job_sections(
        url,
        "in.jsonl",
        "out/r.jsonl",
        endpoint={"token_env": "FF_TOKEN"},
        input={"id_field": "id"},
        run={"concurrency": C, "request_timeout": 5, **run},
    )
    return write_job(tmp_path / "job.toml", sections)


def _stopped(job_file: Path) -> EndpointUnusableError:
    with pytest.raises(EndpointUnusableError) as caught:
        run_job(load_job(job_file), progress=False)
    return caught.value


def _ids(tmp_path: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(tmp_path / "out/r.jsonl")]


def _errors(tmp_path: Path) -> list[dict[str, Any]]:
    return read_jsonl(tmp_path / "out/r.errors.jsonl")


def _summary(error: EndpointUnusableError | RunStalledError) -> RunSummary:
    assert isinstance(error.summary, RunSummary)
    return error.summary


# --- the classifier and the breaker (unit) -------------------------------------------------------


def test_endpoint_wide_classes_are_told_from_row_failures() -> None:
    for status in (401, 403, 404, 405, 407):
        error = InferenceStatusError("x", http_status=status)
        assert endpoint_wide_class(error) == f"http_{status}"
    for status in (400, 422, 500, 502, 503):
        assert endpoint_wide_class(InferenceStatusError("x", http_status=status)) is None
    assert endpoint_wide_class(BadResponseError("not JSON")) == "bad_response"
    assert endpoint_wide_class(InferenceConnectionError("refused", unreachable=True)) == (
        "unreachable"
    )
    assert endpoint_wide_class(InferenceConnectionError("dropped")) is None


def test_trouble_kinds_are_kept_apart() -> None:
    def status(code: int, retry_after: float | None = None) -> InferenceStatusError:
        return InferenceStatusError("x", http_status=code, retry_after=retry_after)

    assert trouble_of(status(429), served=True) == "overload"
    assert trouble_of(status(503, 2.0), served=False) == "overload"
    assert trouble_of(status(503), served=False) == "waking"
    assert trouble_of(status(503), served=True) == "outage"
    assert trouble_of(status(502), served=False) == "outage"
    assert trouble_of(status(504), served=True) == "outage"
    assert trouble_of(status(500), served=True) is None
    refused = InferenceConnectionError("refused", unreachable=True)
    assert trouble_of(refused, served=False) is None  # the breaker's before any success
    assert trouble_of(refused, served=True) == "outage"
    assert trouble_of(InferenceConnectionError("dropped"), served=False) == "outage"


def test_before_a_success_two_distinct_requests_trip_one_never_does() -> None:
    health = RouteHealth(8)
    assert not health.failed(1, "http_401")
    assert not health.failed(1, "http_401")  # the same request again
    assert not health.failed(2, "http_404")  # another class
    assert not health.failed(3, None)  # a row's failure neither trips nor clears
    assert health.suspected("http_401")
    assert health.failed(4, "http_401")
    health = RouteHealth(8)
    health.failed(1, "bad_response")
    health.ok()
    assert not health.suspected("bad_response")


def test_after_a_success_the_window_must_all_fail_the_same_way() -> None:
    assert (
        breaker_window(0, 4) == 8 and breaker_window(0, 256) == 64 and breaker_window(3, 256) == 3
    )
    health = RouteHealth(4)
    health.ok()
    for i in range(3):
        assert not health.failed(i, "http_401")
    assert not health.failed(10, None)  # a different outcome breaks the streak
    assert not health.failed(11, "http_403")
    for i in range(3):
        assert not health.failed(20 + i, "http_401")
    assert health.failed(30, "http_401")


def test_the_verdict_line_names_url_status_message_and_the_way_out() -> None:
    verdict = Verdict(failure="http_401", url="http://h:1/v1/chat/completions", message="Nope")
    assert verdict.line() == (
        "401 from http://h:1/v1/chat/completions: Nope; fix the token and run again"
    )
    assert (
        "cannot reach http://h:1/"
        in Verdict(failure="unreachable", url="http://h:1/", message="m").line()
    )


# --- endpoint-wide failures stop the run, the rows stay pending ----------------------------------


class _Case:
    """An endpoint that fails endpoint-wide one way, and how to fix it."""

    def __init__(self, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kind = kind
        self.monkeypatch = monkeypatch
        knobs: dict[str, Any] = {
            "401": {"require_token": GOOD},
            "unreachable": {},
            "non_json": {"bad_json_rate": 1.0},
        }[kind]
        self.app = EndpointApp(**knobs).start()
        monkeypatch.setenv("FF_TOKEN", BAD if kind == "401" else GOOD)
        self.url = f"http://127.0.0.1:{_closed_port()}" if kind == "unreachable" else self.app.url

    def expected_line(self) -> str:
        if self.kind == "401":
            return f"401 from {self.url}/: Invalid API key; fix the token and run again"
        if self.kind == "unreachable":
            return f"cannot reach {self.url}/: ClientConnectorError"
        return f"undecodable answers from {self.url}/: "

    def requests(self) -> int:
        return int(self.app.stats()["requests"])

    def fix(self) -> str:
        """Fix the endpoint (or the token); the URL to run against now."""
        self.app.configure(reset=True, bad_json_rate=0.0)
        self.monkeypatch.setenv("FF_TOKEN", GOOD)
        return self.app.url

    def close(self) -> None:
        self.app.stop()


KINDS = ["401", "unreachable", "non_json"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_endpoint_wide_failure_stops_20000_rows_at_once_with_every_row_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    n = 20_000
    _input(tmp_path, n)
    case = _Case(kind, monkeypatch)
    try:
        error = _stopped(_job(tmp_path, case.url, max_attempts=5))
        assert case.requests() <= 2 * C
    finally:
        case.close()
    assert str(error).startswith(case.expected_line()) and error.exit_code == 5
    assert BAD not in str(error)
    summary = _summary(error)
    assert summary.exit_code == 5 and summary.stop_reason == "endpoint_unusable"
    assert summary.pending == n and summary.error == str(error)
    assert summary.errors_total == summary.results_total == 0 and _errors(tmp_path) == []


@pytest.mark.parametrize("kind", KINDS)
def test_once_fixed_the_rerun_sends_the_pending_rows_every_id_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    n = 1_500
    _input(tmp_path, n)
    case = _Case(kind, monkeypatch)
    try:
        _stopped(_job(tmp_path, case.url))
        url = case.fix()  # the URL is not in the run's fingerprint
        summary = run_job(load_job(_job(tmp_path, url, concurrency=32)), progress=False)
        assert case.requests() == n
    finally:
        case.close()
    ids = _ids(tmp_path)
    assert summary.exit_code == 0 and summary.results_total == n
    assert len(ids) == n and set(ids) == {f"r{i}" for i in range(n)} and _errors(tmp_path) == []


@pytest.mark.parametrize("bad", ["row 0.", "row 57."])
def test_one_bad_row_does_not_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    _input(tmp_path, 200)
    monkeypatch.setenv("FF_TOKEN", GOOD)
    with EndpointApp(reject_match=bad, reject_status=404) as app:
        summary = run_job(load_job(_job(tmp_path, app.url)), progress=False)
    assert summary.exit_code == 3 and summary.results_total == 199 and summary.errors_total == 1
    (error,) = _errors(tmp_path)
    assert error["status"] == "http_404" and error["id"] == f"r{bad[4:-1]}"


def test_after_a_success_the_breaker_trips_on_a_window_of_the_same_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 2_000
    _input(tmp_path, n)
    monkeypatch.setenv("FF_TOKEN", GOOD)
    with EndpointApp() as app:
        job_file = _job(tmp_path, app.url, breaker_window=10)

        async def run() -> BaseException | None:
            task = asyncio.ensure_future(arun_job(load_job(job_file), progress=False))
            while app.stats()["ok"] < 300:
                await asyncio.sleep(0.005)  # a real run, watched from its own loop
            app.configure(require_token="rotated")  # the token is revoked mid-run
            try:
                await task
            except EndpointUnusableError as e:
                return e
            return None

        error = asyncio.run(run())
        assert isinstance(error, EndpointUnusableError) and error.failure == "http_401"
        assert app.stats()["statuses"]["401"] <= 10 + C
    summary = _summary(error)
    assert summary.errors_total == 0 and _errors(tmp_path) == []
    assert summary.results_total == len(_ids(tmp_path)) >= 300
    assert summary.pending == n - summary.results_total


# --- outages hold the pool, not the rows ----------------------------------------------------------


def test_an_outage_mid_run_puts_no_row_in_the_errors_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3_000
    _input(tmp_path, n)
    monkeypatch.setenv("FF_TOKEN", GOOD)
    with EndpointApp(outage_after=500, outage_s=2.0) as app:
        job_file = _job(tmp_path, app.url, max_attempts=2, backoff_max=0.05)
        summary = run_job(load_job(job_file), progress=False)
        assert app.outages == 1
    assert summary.exit_code == 0 and summary.errors_total == 0 and _errors(tmp_path) == []
    ids = _ids(tmp_path)
    assert len(ids) == n == len(set(ids))


def test_an_outage_past_outage_timeout_stops_with_the_rows_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3_000
    _input(tmp_path, n)
    monkeypatch.setenv("FF_TOKEN", GOOD)
    with EndpointApp(outage_after=200, outage_s=3.0) as app:
        job_file = _job(tmp_path, app.url, max_attempts=2, backoff_max=0.05, outage_timeout=0.5)
        error = _stopped(job_file)
    assert error.failure == "outage" and "outage_timeout" in str(error)
    summary = _summary(error)
    assert summary.errors_total == 0 and _errors(tmp_path) == []
    assert summary.results_total == len(_ids(tmp_path)) >= 190
    assert summary.pending == n - summary.results_total


# --- a stalled run stops ----------------------------------------------------------------------------


def test_a_row_that_leaves_without_an_outcome_stalls_the_run_which_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _input(tmp_path, 400)
    monkeypatch.setenv("FF_TOKEN", GOOD)
    with EndpointApp(hold_after=50) as app:
        job_file = _job(tmp_path, app.url, concurrency=2, request_timeout=0.5)

        async def run() -> BaseException | None:
            task = asyncio.ensure_future(
                arun_job(load_job(job_file, output={"commit_rows": 1}), progress=False)
            )
            while app.stats()["in_flight"] < 2:
                await asyncio.sleep(0.005)
            # a worker ends on an exception the pool does not map: its row has no outcome
            workers = [t for t in asyncio.all_tasks() if t.get_name() == "batchrun-pool-0"]
            workers[0].cancel()
            app.configure(hold_after=-1)
            try:
                await task
            except RunStalledError as e:
                return e
            return None

        error = asyncio.run(run())
    assert isinstance(error, RunStalledError) and error.exit_code == 1
    assert "no outcome for row id 'r" in str(error) and "2 × request_timeout" in str(error)
    summary = _summary(error)
    assert summary.exit_code == 1 and summary.stop_reason == "stalled"
    assert summary.results_total == len(_ids(tmp_path)) > 0 and summary.pending
    with EndpointApp() as app:  # the rerun sends the rest, every id once in the end
        again = run_job(load_job(_job(tmp_path, app.url)), progress=False)
    ids = _ids(tmp_path)
    assert again.exit_code == 0 and len(ids) == 400 == len(set(ids))


# --- the retry log --------------------------------------------------------------------------------


def test_retries_are_logged_once_per_status_then_rolled_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.test_pool import encode, make_codec

    codec = make_codec()
    requests = [Request(i, encode(codec, [{"text": f"row {i}"}]), 1) for i in range(60)]
    outcomes: list[Outcome] = []
    with EndpointApp(fail_each_first=2) as app, caplog.at_level(logging.WARNING):
        pool = Pool(
            url=app.url,
            codec=codec,
            concurrency=8,
            request_timeout=5,
            max_attempts=3,
            backoff_max=0.2,
            backoff_initial=0.2,
            retry_log_period=0.05,
            describe=lambda key: f"row id {key!r}",
        )
        asyncio.run(pool.run(requests, outcomes.append))
    assert pool.stats.retries == 120 and all(o.error is None for o in outcomes)
    lines = [r.getMessage() for r in caplog.records if r.name == "batchrun.pool.retries"]
    firsts = [m for m in lines if "http_500 internal error" in m]
    assert len(firsts) == 1 and firsts[0].startswith("row id ")
    rolled = [m for m in lines if m.startswith("retries in the last ")]
    assert 1 <= len(rolled) < 120
    assert sum(int(m.rsplit(": ", 1)[1].split(" × ")[0]) for m in rolled) == 119


# --- through the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["401", "unreachable"])
def test_cli_exit_5_prints_one_line_and_the_summary_with_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    n = 2_000
    _input(tmp_path, n)
    case = _Case(kind, monkeypatch)
    try:
        sections = job_sections(
            case.url,
            "in.jsonl",
            "out/r.jsonl",
            endpoint={"token_env": "FF_TOKEN"},
            input={"id_field": "id"},
            run={"concurrency": C, "request_format": "chat", "max_attempts": 5},
        )
        job_file = write_job(tmp_path / "job.toml", sections)
        code, summary, err = finish(start_run(job_file))  # with --quiet: no retry lines
        assert case.requests() <= 2 * C
    finally:
        case.close()
    url = f"{case.url}/v1/chat/completions"
    if kind == "401":
        line = f"401 from {url}: Invalid API key; fix the token and run again"
    else:
        line = summary["error"]
        assert line.startswith(f"cannot reach {url}: ClientConnectorError: ")
        assert line.endswith("; check [endpoint] url and that the endpoint is up, and run again")
    assert code == 5 and err.splitlines() == [f"batchrun: error: {line}"]
    assert summary["exit_code"] == 5 and summary["pending"] == n and summary["error"] == line
    assert BAD not in err and BAD not in orjson.dumps(summary).decode()
    assert _errors(tmp_path) == []


# --- the local lifecycle target: exit 5 still puts the endpoint to rest ---------------------------


class _RejectedToken(Target):
    """A real lease target whose data-plane requests carry a token the endpoint refuses."""

    def __init__(self, inner: Target) -> None:
        super().__init__()
        self.inner = inner
        self.stop_event = inner.stop_event

    async def enter(self) -> None:
        await self.inner.enter()
        self.url = self.inner.url
        self.headers = {"Authorization": "Bearer not-this-endpoints-token"}

    async def leave(self, error: BaseException | None) -> None:
        await self.inner.leave(error)

    def summary_fields(self) -> dict[str, Any]:
        return self.inner.summary_fields()


def test_exit_5_on_a_local_endpoint_puts_it_to_rest(
    local_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun.endpoints import SyncEndpointsClient
    from tests.support.lifecycle import job_sections as local_sections
    from tests.support.lifecycle import state_of
    from tests.support.lifecycle import write_job as write_local_job

    monkeypatch.setenv("HF_TOKEN", local_service.token)
    sections = local_sections(local_service.api_url, "rejects", tmp_path, rows=300)
    job = load_job(write_local_job(tmp_path / "job.toml", sections))
    target = _RejectedToken(open_target(job))
    with pytest.raises(EndpointUnusableError) as caught:
        asyncio.run(arun_job(job, progress=False, target=target))
    assert str(caught.value).startswith("403 from ")
    summary = _summary(caught.value)
    assert summary.exit_code == 5 and summary.pending == 300 and summary.errors_total == 0
    assert summary.endpoint_state_at_exit == "paused"
    with SyncEndpointsClient(api_url=local_service.api_url, token=local_service.token) as api:
        assert state_of(api, "rejects") == "paused"


def test_quiet_means_no_retry_lines_and_without_it_they_are_rolled_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    from tests.support.run import ROOT

    _input(tmp_path, 40)
    monkeypatch.setenv("FF_TOKEN", GOOD)
    with EndpointApp(fail_each_first=1) as app:
        job_file = _job(tmp_path, app.url)
        code, quiet, quiet_err = finish(start_run(job_file, "--restart"))  # adds --quiet
        assert code == 0 and quiet["retries"] == 40 and quiet_err == ""
        app.configure(reset=True)  # every row fails once again
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", str(job_file), "--restart"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        code, summary, err = finish(proc)
    assert code == 0 and summary["retries"] == 40
    retry_lines = [line for line in err.splitlines() if "batchrun.pool.retries" in line]
    assert len(retry_lines) == 2, err  # the first retry of http_500, then one roll-up line
    assert "row id 'r" in retry_lines[0] and "retry 1/2" in retry_lines[0]
    assert "retries in the last " in retry_lines[1] and retry_lines[1].endswith(": 39 × http_500")
