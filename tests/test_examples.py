"""The examples in examples/ run end to end against a real `batchrun serve` (echo model).

Each test checks what its example promises:
- examples/nightly/run-nightly.sh: exit codes 0 / 3 (alert + re-drive) / 4 (resume next run),
  a page naming the endpoint on 5, the JSON summaries kept as a log; the systemd units verify.
- examples/pipeline_step.py: the input joined with the results and the errors, in input order;
  the async variant; a failed endpoint raises.
- examples/backfill.md: the walk-through's commands (plan, budget stop, Ctrl-C, resume, status,
  --retry-errors) give the exit codes and counts the walk-through shows.

Jobs point at the fixture's service with `--set endpoint.api_url=...` (the lease then takes the
token from HF_TOKEN), and write their output under the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchrun.endpoints import SyncEndpointsClient
from batchrun.errors import BatchrunError, NotFoundError
from tests.support.lifecycle import first_request_hangs
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NIGHTLY = EXAMPLES / "nightly"
TICKETS = 40  # rows of examples/data/tickets.jsonl
REVIEWS = 24  # rows of examples/data/reviews/*.parquet
TEXTS = 2522  # rows of examples/texts.jsonl


# --- helpers ------------------------------------------------------------------------------------


def _env(service: Any, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_TOKEN"] = service.token
    env["BATCHRUN"] = f"{sys.executable} -m batchrun"
    env.update(extra)
    return env


def _cli(service: Any, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=ROOT,
        env=_env(service),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _state(service: Any, name: str) -> str:
    with SyncEndpointsClient(api_url=service.api_url, token=service.token) as api:
        try:
            return api.get(name).state_text
        except NotFoundError:
            return "missing"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _job_env(job: Path) -> dict[str, str]:
    """A job file's [endpoint.env]."""
    env = tomllib.loads(job.read_text())["endpoint"].get("env", {})
    return {str(k): str(v) for k, v in env.items()}


def _set_env(service: Any, name: str, env: dict[str, str]) -> None:
    """Replace a paused endpoint's env; its worker gets it at the next resume."""
    with SyncEndpointsClient(api_url=service.api_url, token=service.token) as api:
        assert api.get(name).state_text == "paused"
        api.update(name, env=env)


# --- nightly ------------------------------------------------------------------------------------


class Nightly:
    """examples/nightly/run-nightly.sh against the fixture's service, logs under tmp."""

    def __init__(self, service: Any, tmp: Path) -> None:
        self.service = service
        self.logs = tmp / "logs"
        self.alerts = tmp / "alerts.txt"
        self.output = tmp / "out" / "replies.jsonl"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        sets = [f"endpoint.api_url={self.service.api_url}", f"output.path={self.output}"]
        return subprocess.run(
            [
                "bash",
                str(NIGHTLY / "run-nightly.sh"),
                *[a for s in sets for a in ("--set", s)],
                *args,
            ],
            cwd=ROOT,
            env=_env(
                self.service,
                NIGHTLY_LOG_DIR=str(self.logs),
                NIGHTLY_ALERT_CMD=f"cat >> '{self.alerts}'",
            ),
            capture_output=True,
            text=True,
            timeout=90,
        )

    def summaries(self, step: str) -> list[dict[str, Any]]:
        """The JSON summaries the script kept for `step` ("run" or "redrive"), oldest first."""
        return [
            orjson.loads(p.read_bytes())
            for p in sorted((self.logs / "runs").glob(f"*-{step}.json"))
        ]

    def log(self) -> str:
        return (self.logs / "nightly.log").read_text()

    def debug(self) -> str:
        """The script's log and every batchrun stderr it kept, for assertion messages."""
        parts = [self.log()] if (self.logs / "nightly.log").exists() else []
        parts += [f"--- {p.name}\n{p.read_text()}" for p in sorted(self.logs.glob("runs/*"))]
        return "\n".join(parts)

    def alert_text(self) -> str:
        return self.alerts.read_text() if self.alerts.exists() else ""

    def committed_ids(self) -> Counter[str]:
        errors = self.output.with_name("replies.errors.jsonl")
        return Counter(str(r["id"]) for r in _jsonl(self.output) + _jsonl(errors))


def test_nightly_budget_stop_exits_0_and_the_next_run_resumes(
    local_service: Any, tmp_path: Path
) -> None:
    nightly = Nightly(local_service, tmp_path)
    # 40 rows at 400 ms and 2 in flight need 8 s: an 8 s limit, less the time to get the
    # endpoint ready and to stop in time (grace 1 s, the pause), stops the run midway (exit 4)
    first = nightly.run(
        "--set",
        'endpoint.env.BATCHRUN_ECHO_LATENCY_MS="400"',
        "--set",
        "run.concurrency=2",
        "--set",
        "run.grace_period=1",
        "--set",
        "budget.max_duration=8s",
    )
    assert first.returncode == 0, nightly.debug()
    [stopped] = nightly.summaries("run")
    assert stopped["exit_code"] == 4 and stopped["stop_reason"] in ("budget", "deadline"), (
        nightly.debug()
    )
    assert stopped["resumable"] and stopped["results_total"] < TICKETS, nightly.debug()
    assert stopped["endpoint_state_at_exit"] == "paused", nightly.debug()
    assert "the next run resumes" in nightly.log(), nightly.debug()
    assert nightly.alert_text() == ""  # a budget stop is routine: no alert,
    assert first.stdout == first.stderr == ""  # and no output (cron mails any)
    assert _state(local_service, "nightly-tickets") == "paused"

    # the next night: no limit; it resumes the endpoint and sends only what is left (the
    # endpoint back on the job's own env first: the job's env against the 400 ms one is drift)
    _set_env(local_service, "nightly-tickets", _job_env(NIGHTLY / "job.toml"))
    second = nightly.run("--set", "run.concurrency=40")
    assert second.returncode == 0, nightly.debug()
    done = nightly.summaries("run")[-1]
    assert done["exit_code"] == 0, nightly.debug()
    assert done["skipped_done"] == stopped["results_total"], nightly.debug()
    assert done["succeeded"] == TICKETS - stopped["results_total"], nightly.debug()
    assert "run: done" in nightly.log(), nightly.debug()
    assert second.stdout == second.stderr == ""
    assert nightly.committed_ids() == Counter({f"T-{1000 + i}": 1 for i in range(TICKETS)})
    assert _state(local_service, "nightly-tickets") == "paused"


def test_nightly_errors_alert_and_are_redriven(local_service: Any, tmp_path: Path) -> None:
    nightly = Nightly(local_service, tmp_path)
    # 30% of requests answer 500 and a row gets one attempt: some rows land in the errors file
    result = nightly.run(
        "--set",
        'endpoint.env.BATCHRUN_ECHO_ERROR_RATE="0.3"',
        "--set",
        "run.max_attempts=1",
        "--set",
        "run.backoff_max=0.05",
    )
    [first] = nightly.summaries("run")
    assert first["exit_code"] == 3 and first["errors_total"] > 0
    assert f"{first['errors_total']} rows failed" in nightly.alert_text()
    # the script re-drove them once with --retry-errors and 10 attempts: they went through
    [redrive] = nightly.summaries("redrive")
    assert redrive["retried_errors"] == first["errors_total"]
    assert redrive["exit_code"] == 0 and redrive["errors_total"] == 0
    assert result.returncode == 0, nightly.debug()
    assert nightly.committed_ids() == Counter({f"T-{1000 + i}": 1 for i in range(TICKETS)})
    assert _state(local_service, "nightly-tickets") == "paused"


def test_nightly_pages_naming_the_endpoint_when_it_fails(
    local_service: Any, tmp_path: Path
) -> None:
    nightly = Nightly(local_service, tmp_path)
    # a model the service cannot load: the endpoint goes to "failed" (batchrun exit 5)
    result = nightly.run("--set", "endpoint.repository=no-such-org/no-such-model")
    assert result.returncode == 5, nightly.debug()
    page = nightly.alert_text()
    assert page.startswith("PAGE") and "endpoint nightly-tickets" in page and "exit 5" in page
    [failed] = nightly.summaries("run")  # the JSON summary is printed on every exit
    assert failed["exit_code"] == 5 and failed["error"] in page and failed["resumable"]


# The script as a shell on a terminal starts it: SIGINT not ignored. A test runner started in
# the background by a shell without job control (`pytest &`, a CI wrapper) ignores SIGINT, and
# bash cannot trap a signal that was ignored when it started: the Ctrl-C would never reach
# batchrun, which would then wait out the held request (request_timeout 120 s).
_SIGINT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


@pytest.mark.parametrize(
    ("sig", "to_group", "code"),
    [
        # systemd's stop (KillMode=mixed): SIGTERM to the script alone; batchrun must get it
        (signal.SIGTERM, False, 143),
        # Ctrl-C on a terminal: SIGINT to the foreground group; batchrun must get it once
        (signal.SIGINT, True, 130),
    ],
    ids=["sigterm-to-script", "ctrl-c-to-group"],
)
def test_nightly_forwards_a_stop_once_and_the_next_run_resumes(
    local_service: Any, tmp_path: Path, sig: signal.Signals, to_group: bool, code: int
) -> None:
    nightly = Nightly(local_service, tmp_path)
    sets = [
        "--set",
        f"endpoint.api_url={local_service.api_url}",
        "--set",
        f"output.path={nightly.output}",
        "--set",
        "run.grace_period=1",
    ]
    # the endpoint is created holding its first request (the job's request_timeout is 120 s):
    # the run cannot end before the stop, however loaded the machine is
    for key, value in first_request_hangs().items():
        sets += ["--set", f'endpoint.env.{key}="{value}"']
    script = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_DEFAULT, "bash", str(NIGHTLY / "run-nightly.sh"), *sets],
        cwd=ROOT,
        env=_env(local_service, NIGHTLY_LOG_DIR=str(nightly.logs)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: len(_jsonl(nightly.output)) == TICKETS - 1, 60, "the rows not held to commit"
        )
        if to_group:
            os.killpg(script.pid, sig)
        else:
            script.send_signal(sig)
        try:
            exited = script.wait(timeout=60)
        except subprocess.TimeoutExpired:
            state = _state(local_service, "nightly-tickets")
            raise AssertionError(
                f"the script did not exit 60 s after {sig.name} (endpoint {state})\n"
                + nightly.debug()
            ) from None
        assert exited == code, nightly.debug()
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
    [stopped] = nightly.summaries("run")
    assert stopped["exit_code"] == code, nightly.debug()
    assert stopped["endpoint_state_at_exit"] == "paused", nightly.debug()
    assert "not waiting for requests in flight" not in nightly.debug()  # one signal, not two
    assert f"interrupted (exit {code})" in nightly.log()
    assert stopped["results_total"] == TICKETS - 1, nightly.debug()
    _set_env(local_service, "nightly-tickets", _job_env(NIGHTLY / "job.toml"))  # no more hangs
    resumed = nightly.run()
    assert resumed.returncode == 0, nightly.debug()
    assert nightly.summaries("run")[-1]["skipped_done"] == stopped["results_total"]
    assert nightly.committed_ids() == Counter({f"T-{1000 + i}": 1 for i in range(TICKETS)})


def test_nightly_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # the units name /opt/batchrun; verify them as installed from this checkout
    for unit in ("batchrun-nightly.service", "batchrun-nightly.timer"):
        text = (NIGHTLY / unit).read_text().replace("/opt/batchrun", str(ROOT))
        (tmp_path / unit).write_text(text)
    result = subprocess.run(
        [
            analyze,
            "verify",
            "--man=no",
            *(str(tmp_path / u) for u in ("batchrun-nightly.service", "batchrun-nightly.timer")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "batchrun-nightly" not in result.stderr, result.stderr


# --- pipeline step ------------------------------------------------------------------------------


@pytest.fixture
def pipeline_step() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("pipeline_step", EXAMPLES / "pipeline_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline_step"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("pipeline_step", None)


def test_pipeline_step_joins_results_and_errors_back_on_the_id(
    pipeline_step: ModuleType, local_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", local_service.token)
    overrides = {
        "endpoint": {
            "api_url": local_service.api_url,
            "env": {"BATCHRUN_ECHO_ERROR_RATE": "0.3"},
        },
        "run": {"max_attempts": 1, "backoff_max": 0.05},
    }
    output = tmp_path / "enriched.parquet"
    summary = pipeline_step.enrich_reviews(
        EXAMPLES / "data" / "reviews", output, overrides=overrides
    )
    assert summary.exit_code == 3 and summary.errors_total > 0
    assert summary.endpoint_state_at_exit == "paused"

    table = pq.read_table(output)
    inputs = ds.dataset(EXAMPLES / "data" / "reviews", format="parquet").to_table()
    assert table.num_rows == REVIEWS
    assert table.column_names == [*inputs.column_names, "sentiment", "sentiment_score", "error"]
    assert table.select(inputs.column_names).equals(inputs)  # every input row, in input order
    rows = table.to_pylist()
    results = {
        str(r["id"]): r["labels"][0]
        for r in ds.dataset(summary.output, format="parquet").to_table().to_pylist()
    }
    errors = {str(e["id"]): e["status"] for e in _jsonl(Path(summary.errors_path))}
    assert len(results) + len(errors) == REVIEWS
    for row in rows:
        rid = row["review_id"]
        if rid in errors:
            assert row["error"] == errors[rid] and row["sentiment"] is None
        else:
            assert row["error"] is None
            assert (row["sentiment"], row["sentiment_score"]) == (
                results[rid]["label"],
                results[rid]["score"],
            )

    # the async variant, from inside an event loop: a second call resumes (nothing sent again)
    again = asyncio.run(
        pipeline_step.aenrich_reviews(EXAMPLES / "data" / "reviews", output, overrides=overrides)
    )
    assert again.skipped_done == REVIEWS and again.rows == 0
    assert pq.read_table(output).equals(table)


def test_pipeline_step_fails_loudly_when_the_endpoint_fails(
    pipeline_step: ModuleType, local_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", local_service.token)
    overrides = {
        "endpoint": {"api_url": local_service.api_url, "repository": "no-such-org/no-such-model"}
    }
    output = tmp_path / "enriched.parquet"
    with pytest.raises(BatchrunError) as info:
        pipeline_step.enrich_reviews(EXAMPLES / "data" / "reviews", output, overrides=overrides)
    assert info.value.exit_code == 5
    assert "reviews-sentiment" in str(info.value)
    assert not output.exists()


# --- backfill -----------------------------------------------------------------------------------


class Backfill:
    """The commands of examples/backfill.md, pointed at the fixture's service and tmp output."""

    def __init__(self, service: Any, tmp: Path) -> None:
        self.service = service
        self.output = tmp / "backfill" / "texts.parquet"
        self.sets = [
            "--set",
            f"endpoint.api_url={service.api_url}",
            "--set",
            f"output.path={self.output}",
        ]

    def cli(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _cli(self.service, command, "examples/backfill.toml", *self.sets, *args, timeout=90)

    def start_run(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", "examples/backfill.toml", *self.sets, *args],
            cwd=ROOT,
            env=_env(self.service),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def status(self) -> str:
        result = _cli(self.service, "status", str(self.output))
        assert result.returncode == 0, result.stderr
        return result.stdout

    def committed_ids(self) -> Counter[str]:
        ids: Counter[str] = Counter(
            str(i)
            for i in ds.dataset(self.output, format="parquet")
            .to_table(columns=["id"])["id"]
            .to_pylist()
        )
        ids.update(str(e["id"]) for e in _jsonl(self.output.with_name("texts.errors.jsonl")))
        return ids


def _summary(stdout: str | bytes) -> dict[str, Any]:
    assert stdout.strip(), "no JSON summary on stdout"
    return dict(orjson.loads(stdout))


def test_backfill_walkthrough(local_service: Any, tmp_path: Path) -> None:
    backfill = Backfill(local_service, tmp_path)

    # 1. plan: rows, duration at an assumed rate, price, and whether it fits
    plan = backfill.cli("plan", "--rows-per-second", "300")
    assert plan.returncode == 0, plan.stderr
    assert f"rows: {TEXTS:,} in the input, 0 already committed" in plan.stdout
    assert "budget:" in plan.stdout and "fits" in plan.stdout

    # 2. a run with a short time limit: stopped by the budget, exit 4, endpoint paused
    first = backfill.cli("run", "--set", "budget.max_duration=10s")
    assert first.returncode == 4, first.stderr
    s1 = _summary(first.stdout)
    assert s1["stop_reason"] in ("budget", "deadline") and s1["resumable"]
    assert 0 < s1["results_total"] + s1["errors_total"] < TEXTS
    assert s1["endpoint_state_at_exit"] == "paused"

    # 3. plan again: the rest, at the rate the last run measured
    plan = backfill.cli("plan")
    assert plan.returncode == 0, plan.stderr
    done_1 = s1["results_total"] + s1["errors_total"]
    assert f"{done_1:,} already committed" in plan.stdout
    assert "measured by the last run" in plan.stdout

    # 4. run again, Ctrl-C midway: exit 130, what finished is committed, endpoint paused.
    # The endpoint resumes holding its first request (for the 60 s request_timeout): the run
    # cannot end before the Ctrl-C, however loaded the machine is
    env = _job_env(EXAMPLES / "backfill.toml")
    _set_env(local_service, "backfill-echo", first_request_hangs(env))
    before = len(list(backfill.output.glob("*.parquet")))
    run = backfill.start_run()
    try:
        wait_for(lambda: len(list(backfill.output.glob("*.parquet"))) > before, 60, "a commit")
        os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
    _set_env(local_service, "backfill-echo", env)  # no more hangs
    assert run.returncode == 130, err.decode()
    s2 = _summary(out)
    assert s2["stop_reason"] == "sigint" and s2["resumable"]
    assert s2["skipped_done"] == done_1
    assert s2["endpoint_state_at_exit"] == "paused"

    # 5. status: counts committed, last run's exit, no live run
    status = backfill.status()
    assert f"{s2['results_total']:,} results, {s2['errors_total']:,} errors committed" in status
    assert "last run: exit 130" in status

    # 6. resume to the end: every row settled, some in the errors file (exit 3)
    third = backfill.cli("run")
    assert third.returncode == 3, third.stderr
    s3 = _summary(third.stdout)
    assert s3["results_total"] + s3["errors_total"] == TEXTS and s3["errors_total"] > 0
    assert s3["skipped_done"] == s2["results_total"] + s2["errors_total"]
    errors = _jsonl(backfill.output.with_name("texts.errors.jsonl"))
    assert len(errors) == s3["errors_total"]
    assert {(e["status"], e["attempts"]) for e in errors} == {("http_500", 2)}

    # 7. re-drive the errors with more attempts: exit 0, nothing left in the errors file
    fourth = backfill.cli("run", "--retry-errors", "--set", "run.max_attempts=5")
    assert fourth.returncode == 0, fourth.stderr
    s4 = _summary(fourth.stdout)
    assert s4["retried_errors"] == s3["errors_total"] and s4["errors_total"] == 0
    assert s4["results_total"] == TEXTS
    assert backfill.committed_ids() == Counter(
        str(r["id"]) for r in _jsonl(EXAMPLES / "texts.jsonl")
    )
    assert f"{TEXTS:,} results, 0 errors committed" in backfill.status()
    assert _state(local_service, "backfill-echo") == "paused"


# --- the README's smallest job files ------------------------------------------------------------


def _readme_jobs() -> dict[str, str]:
    """The TOML blocks of the README's "Use it" section, by provider."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```toml\n")[1:]
    jobs = {}
    for block in blocks:
        text = block.split("```", 1)[0]
        provider = text.split('provider = "', 1)[1].split('"', 1)[0]
        jobs[provider] = text
    return jobs


def _readme_job(tmp: Path, provider: str) -> Path:
    (tmp / "texts.jsonl").write_bytes(
        b"".join(orjson.dumps({"text": f"row {i}"}) + b"\n" for i in range(5))
    )
    path = tmp / f"{provider}.toml"
    path.write_text(_readme_jobs()[provider])
    return path


def test_readme_shows_a_job_for_each_provider(tmp_path: Path) -> None:
    from batchrun import load_job

    assert set(_readme_jobs()) == {"local", "hf", "url"}
    for provider in ("local", "hf", "url"):
        job = load_job(_readme_job(tmp_path, provider))
        assert job.endpoint.provider == provider


def test_readme_url_job_runs_against_an_openai_compatible_server(
    endpoint_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun import load_job, run_job

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    job = load_job(_readme_job(tmp_path, "url"), endpoint={"url": endpoint_app.url + "/v1"})
    summary = run_job(job, progress=False)
    assert summary.exit_code == 0 and summary.results_total == 5
    rows = _jsonl(tmp_path / "out" / "chat.jsonl")
    assert sorted(r["content"] for r in rows) == sorted(f"echo: row {i}" for i in range(5))


def test_readme_local_job_runs_on_the_local_service(
    local_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun import load_job, run_job

    monkeypatch.setenv("HF_TOKEN", local_service.token)
    job = load_job(_readme_job(tmp_path, "local"), endpoint={"api_url": local_service.api_url})
    summary = run_job(job, progress=False)
    assert summary.exit_code == 0 and summary.results_total == 5
    assert summary.endpoint_state_at_exit == "paused"
    assert len(_jsonl(tmp_path / "out" / "echo.jsonl")) == 5


def test_nightly_budget_stop_before_the_endpoint_is_ready_sends_nothing(
    local_service: Any, tmp_path: Path
) -> None:
    nightly = Nightly(local_service, tmp_path)
    # the model takes 6 s to start; the 3 s limit runs out while the endpoint gets ready
    result = nightly.run(
        "--set",
        'endpoint.env.BATCHRUN_ECHO_START_DELAY_MS="6000"',
        "--set",
        "run.grace_period=1",
        "--set",
        "budget.max_duration=3s",
    )
    assert result.returncode == 0, nightly.debug()
    [stopped] = nightly.summaries("run")
    assert stopped["exit_code"] == 4, nightly.debug()
    assert stopped["endpoint_state_at_exit"] == "paused", nightly.debug()
    # nothing was sent, so nothing is committed: the next run sends every row
    assert (stopped["results_total"], stopped["errors_total"]) == (0, 0), nightly.debug()
    assert stopped["retries"] == 0 and "connection_error" not in nightly.debug(), nightly.debug()
