"""`apply_on_exit` request/response handling, on `httpx.MockTransport` (a fake control plane)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from batchrun.endpoints import ControlRetryPolicy, EndpointsClient
from batchrun.errors import EndpointRestError
from batchrun.lifecycle.rest import apply_on_exit, pause_command, rest_action


class FakeAPI:
    """One endpoint's control plane: states move as the real API moves them."""

    def __init__(self, state: str = "running", *, lag: int = 0, refuse: int | None = None) -> None:
        self.state: str | None = state
        self.lag = lag  # reads that still show the old state after an action
        self.refuse = refuse  # answer every action with this status
        self.calls: list[str] = []
        self._pending: str | None = None

    def _body(self) -> dict[str, Any]:
        return {"name": "ep", "status": {"state": self.state, "url": None}}

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append(f"{request.method} {path.removeprefix('/v2/endpoint/ns/')}")
        if self.state is None:
            return httpx.Response(404, json={"error": "Endpoint not found"})
        action = path.rsplit("/", 1)[-1] if path.count("/") > 4 else None
        if request.method == "GET":
            if self._pending is not None:
                if self.lag > 0:
                    self.lag -= 1
                else:
                    self.state, self._pending = self._pending, None
            return httpx.Response(200, json=self._body())
        if self.refuse is not None:
            return httpx.Response(self.refuse, json={"error": "no"})
        if request.method == "DELETE":
            self.state = None
            return httpx.Response(200, json={})
        target = {"pause": "paused", "scale-to-zero": "scaledToZero", "resume": "running"}[
            str(action)
        ]
        self._pending = target
        return httpx.Response(200, json=self._body())


def _apply(api: FakeAPI, on_exit: str, found: str | None = "paused", **kw: Any) -> Any:
    async def go() -> Any:
        async with EndpointsClient(
            api_url="http://api.test/v2",
            token="hf_secret_token_xyz",
            namespace="ns",
            transport=httpx.MockTransport(api.handle),
            retry=ControlRetryPolicy(attempts=2, backoff_initial=0.01, backoff_max=0.01),
        ) as client:
            return await apply_on_exit(
                client,
                "ep",
                namespace="ns",
                on_exit=on_exit,
                found_state=found,
                backoff=0.01,
                refresh_every=0.01,
                **kw,
            )

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("on_exit", "found", "action"),
    [
        ("pause", "running", "pause"),
        ("scale-to-zero", "paused", "scale-to-zero"),
        ("delete", "running", "delete"),
        ("keep", "paused", "none"),
        ("restore", "running", "none"),
        ("restore", "initializing", "none"),
        ("restore", "paused", "pause"),
        ("restore", "scaledToZero", "scale-to-zero"),
        ("restore", "missing", "pause"),
        ("restore", "failed", "pause"),
    ],
)
def test_rest_action(on_exit: str, found: str, action: str) -> None:
    assert rest_action(on_exit, found) == action


def test_pause_is_confirmed_by_reading_back() -> None:
    api = FakeAPI(lag=3)
    outcome = _apply(api, "pause")
    assert outcome.action == "pause" and outcome.state == "paused"
    assert api.calls[:2] == ["GET ep", "POST ep/pause"]
    assert api.calls.count("GET ep") == 1 + 4  # the first look, then 3 stale reads and the confirm


def test_already_at_rest_calls_nothing() -> None:
    api = FakeAPI(state="paused")
    assert _apply(api, "pause").state == "paused"
    assert api.calls == ["GET ep"]


def test_scale_to_zero_and_delete() -> None:
    api = FakeAPI()
    assert _apply(api, "scale-to-zero").state == "scaledToZero"
    api = FakeAPI()
    outcome = _apply(api, "delete")
    assert outcome.state == "deleted" and outcome.endpoint is None
    assert "DELETE ep" in api.calls


def test_keep_and_restore_of_running_call_nothing() -> None:
    api = FakeAPI()
    assert _apply(api, "keep").state == "running"
    assert _apply(api, "restore", found="running").state == "running"
    assert [c for c in api.calls if not c.startswith("GET")] == []


def test_gone_endpoint_counts_as_at_rest() -> None:
    api = FakeAPI(state=None)
    assert _apply(api, "pause").state == "deleted"


def test_never_confirmed_is_exit_6_with_the_pause_command() -> None:
    api = FakeAPI(lag=10_000)
    with pytest.raises(EndpointRestError) as info:
        _apply(api, "pause", attempts=2, confirm_timeout=0.05)
    message = str(info.value)
    assert "endpoint ns/ep could not be put in its on_exit state (pause)" in message
    assert "still running after 0.05s" in message
    assert "batchrun endpoints pause ep --namespace ns --api-url http://api.test/v2" in message
    assert "hf_secret_token_xyz" not in message
    assert api.calls.count("POST ep/pause") == 2


def test_auth_refusal_is_not_retried() -> None:
    api = FakeAPI(refuse=403)
    with pytest.raises(EndpointRestError, match="403"):
        _apply(api, "pause", attempts=5)
    assert api.calls.count("POST ep/pause") == 1


def test_server_errors_are_retried_then_exit_6() -> None:
    api = FakeAPI(refuse=503)
    with pytest.raises(EndpointRestError, match="503"):
        _apply(api, "pause", attempts=3)
    assert api.calls.count("POST ep/pause") == 3 * 2  # our tries × the client's own retries


def test_pause_command_names_non_default_apis_only() -> None:
    assert pause_command("ep", "ns") == "batchrun endpoints pause ep --namespace ns"
    assert (
        pause_command("ep", "ns", "https://api.endpoints.huggingface.cloud/v2/")
        == "batchrun endpoints pause ep --namespace ns"
    )
    assert pause_command("ep", "ns", "http://127.0.0.1:8765/v2").endswith(
        "--api-url http://127.0.0.1:8765/v2"
    )
