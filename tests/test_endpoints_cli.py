"""`batchrun endpoints` as `hf endpoints` users know it: `-e/--env`, `--env-file`,
`-s/--secrets NAME`, `--secrets-file`, `--no-truncate`, `delete --json`, `status -q`, and an
Examples section on every help page.

Real processes against real servers on 127.0.0.1: the local service (`local_service`) and, to
see exactly what a create sends, a small HTTP server that records the body and echoes it back.
Bad variables and help pages go through the CLI in-process (nothing is sent for them).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from batchrun.cli import main
from batchrun.cli.endpoints import endpoints

SECRET = "s3cr3t-Value-never-shown"
FILE_SECRET = "f1le-secret-never-shown"


def _batchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", "endpoints", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


# --- what a create sends: a server that records it ---------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        # Echo the secrets back, as an API might: the CLI must hide them.
        answer = {**body, "status": {"state": "pending", "message": "", "url": None}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []
    handler = type("Handler", (_Recorder,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_create_sends_env_file_and_secrets_and_never_shows_a_secret(
    tmp_path: Path, recorder: tuple[str, list[dict[str, Any]]]
) -> None:
    api_url, bodies = recorder
    env_file = tmp_path / "prod.env"
    env_file.write_text(
        "# container settings\n\nexport MAX_BATCH=8\nMODE='fast lane'  # inline comment\n"
        'GREETING="a \\"quoted\\" word"\nOVERRIDDEN=from-file\n'
    )
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(f"FILE_SECRET={FILE_SECRET}\n")
    secrets_file.chmod(0o600)
    r = _batchrun(
        "create", "ep", "--api-url", api_url, "--namespace", "ns", "--token", "tok",
        "--repo", "batchrun/echo", "--task", "text-generation",
        "--env-file", str(env_file), "-e", "OVERRIDDEN=from-flag", "-e", "FROM_ENV",
        "--secrets-file", str(secrets_file), "-s", "MY_SECRET", "--secret", "INLINE=plain",
        "--json",
        env={"MY_SECRET": SECRET, "FROM_ENV": "exported"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (body,) = bodies
    assert body["model"]["env"] == {
        "MAX_BATCH": "8",
        "MODE": "fast lane",
        "GREETING": 'a "quoted" word',
        "OVERRIDDEN": "from-flag",
        "FROM_ENV": "exported",
    }
    assert body["model"]["secrets"] == {
        "FILE_SECRET": FILE_SECRET,
        "MY_SECRET": SECRET,
        "INLINE": "plain",
    }
    shown = json.loads(r.stdout)
    assert shown["model"]["secrets"] == {"FILE_SECRET": "***", "MY_SECRET": "***", "INLINE": "***"}
    for value in (SECRET, FILE_SECRET):
        assert value not in r.stdout + r.stderr
    # the inline secret is sent, with one warning line about shell history
    assert r.stderr.count("\n") == 1 and "-s KEY=VALUE" in r.stderr and "plain" not in r.stderr


def test_secrets_from_stdin_the_hf_token_file_and_a_readable_file_warning(
    tmp_path: Path, recorder: tuple[str, list[dict[str, Any]]]
) -> None:
    api_url, bodies = recorder
    token_file = Path(os.environ["HF_HOME"]) / "token"  # as `hf auth login` leaves it
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text("hf_from_the_token_file\n")
    shared = tmp_path / "shared.env"
    shared.write_text("SHARED=1\n")
    shared.chmod(0o644)
    base = ["endpoints", "create", "ep", "--api-url", api_url, "--namespace", "ns", "--token",
            "tok", "--repo", "batchrun/echo", "--task", "text-generation", "-q"]  # fmt: skip

    r = CliRunner().invoke(main, [*base, "--secrets-file", "-", "-s", "HF_TOKEN"], input="K=v\n")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "ep\n", "")
    assert bodies[-1]["model"]["secrets"] == {"K": "v", "HF_TOKEN": "hf_from_the_token_file"}

    r = CliRunner().invoke(main, [*base, "--secrets-file", str(shared)])
    assert r.exit_code == 0 and bodies[-1]["model"]["secrets"] == {"SHARED": "1"}
    assert r.stderr == (
        f"batchrun: warning: {shared} is readable by other users (mode 644); chmod 600 {shared}\n"
    )
    r = CliRunner().invoke(main, [*base, "--secrets-file", "-", "--env-file", "-"], input="")
    assert r.exit_code == 2 and "only one of --env-file and --secrets-file" in r.stderr
    assert len(bodies) == 2


@pytest.mark.parametrize(
    ("args", "file_text", "message"),
    [
        (
            ["--env-file", "{file}"],
            "A=1\n\n# ok\nB C\n",
            "{file}:4: expected KEY=VALUE (a name, then",
        ),
        (["--secrets-file", "{file}"], f"OK=1\n{SECRET}\n", "{file}:2: expected KEY=VALUE"),
        (["--secrets-file", "{file}"], f"K='{SECRET}\n", "{file}:1: the quoted value has no"),
        (["--env-file", "{file}"], f"9X={SECRET}\n", "{file}:1: the name before '='"),
        (["--env-file", "{file}"], "UNSET_HERE\n", "{file}:1: the environment variable UNSET_HERE"),
        (["-s", "NOT_EXPORTED"], None, "--secrets: the environment variable NOT_EXPORTED is not"),
        (["--secrets-file", "{missing}"], None, "--secrets-file {missing}: no such file"),
    ],
)
def test_bad_variables_are_one_line_exit_2_and_show_no_value(
    tmp_path: Path, args: list[str], file_text: str | None, message: str
) -> None:
    path, missing = tmp_path / "vars.env", tmp_path / "nope.env"
    if file_text is not None:
        path.write_text(file_text)
        path.chmod(0o600)
    args = [a.format(file=path, missing=missing) for a in args]
    r = CliRunner().invoke(
        main,
        ["endpoints", "create", "ep", "--api-url", "http://127.0.0.1:1/v2", "--namespace", "ns",
         "--repo", "batchrun/echo", "--task", "text-generation", *args],
    )  # fmt: skip
    assert r.exit_code == 2, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one line, and nothing was sent (port 1)
    assert message.format(file=path, missing=missing) in r.stderr
    assert SECRET not in r.stderr


# --- against the local service -----------------------------------------------------------------


def test_local_service_env_file_secrets_status_truncate_and_delete_json(
    local_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "BATCHRUN_ENDPOINTS_API": local_service.api_url,
        "HF_TOKEN": local_service.token,
        "MY_SECRET": SECRET,
    }
    env_file = tmp_path / "echo.env"
    env_file.write_text("# the echo model's knobs\nBATCHRUN_ECHO_LATENCY_MS=1\n")
    long_type = "intel-icl-" + "with-a-very-long-instance-type-name" * 2  # for --no-truncate
    r = _batchrun(
        "create", "echo", "--repo", "batchrun/echo", "--task", "text-generation",
        "--instance-type", long_type, "--env-file", str(env_file), "-s", "MY_SECRET",
        "--wait", "--refresh-every", "0.05", "--timeout", "30", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _batchrun("get", "echo", "--json", env=env)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["model"]["env"] == {"BATCHRUN_ECHO_LATENCY_MS": "1"}
    # The local service keeps no secrets: none come back, so none can be shown.
    assert "secrets" not in got["model"] and SECRET not in r.stdout

    # The same service, the CLI in this process (a process start each costs seconds here).
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    r = _cli("status", "echo", "-q")
    assert (r.exit_code, r.stdout) == (0, "running\n")
    r = _cli("status", "echo")
    assert r.stdout.startswith("local/echo  running  1/1  http://127.0.0.1:"), r.stdout
    assert json.loads(_cli("status", "echo", "--json").stdout)["state"] == "running"

    cut, whole = _cli("list").stdout, _cli("list", "--no-truncate").stdout
    assert long_type not in cut and long_type[:39] + "…" in cut
    assert f"{long_type} x2" in whole and "…" not in whole

    r = _batchrun("delete", "echo", "--yes", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"name": "echo", "namespace": "local", "deleted": True}
    assert _cli("list", "-q").stdout == ""


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["endpoints", *args], catch_exceptions=False)


# --- help pages --------------------------------------------------------------------------------


def _commands() -> list[tuple[str, ...]]:
    return [(), *((name,) for name in sorted(endpoints.commands))]


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "endpoints")
def test_every_help_page_ends_with_real_examples(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(main, ["endpoints", *path, "--help"], catch_exceptions=False)
    assert r.exit_code == 0
    _, sep, tail = r.output.rpartition("\n  Examples:\n\n")
    assert sep, r.output
    examples = [line.strip() for line in tail.splitlines() if line.strip()]
    assert 2 <= len(examples) <= 3, examples
    ctx = click.Context(endpoints)
    for example in examples:
        words = shlex.split(example)
        assert words[:2] == ["batchrun", "endpoints"] and len(words) > 2, example
        command = endpoints.get_command(ctx, words[2])  # a name or its `hf` alias
        assert command is not None, example
        if path:  # a command's examples are of that command
            assert command is endpoints.commands[path[0]], example
        command.make_context(words[2], words[3:])  # parses: every option and argument exists
