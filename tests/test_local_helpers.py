"""Helpers for the local-service tests: an API client, endpoint bodies, waiting on states."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import LocalService

NS = "local"


def api(service: LocalService, *, token: str | None = "default") -> httpx.Client:
    """An httpx client on the service's /v2 with its token (or `token`, or none)."""
    headers = {}
    tok = service.token if token == "default" else token
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    return httpx.Client(base_url=service.api_url, headers=headers, timeout=30, trust_env=False)


def body(
    name: str,
    *,
    repository: str = "batchrun/echo",
    task: str | None = "text-generation",
    env: dict[str, str] | None = None,
    type: str = "protected",
    min_replica: int = 1,
    scale_to_zero_timeout: int | None = None,
) -> dict[str, Any]:
    """A create body as huggingface_hub sends it."""
    model: dict[str, Any] = {
        "framework": "pytorch",
        "repository": repository,
        "revision": None,
        "image": {"huggingface": {}},
    }
    if task is not None:
        model["task"] = task
    if env:
        model["env"] = env
    return {
        "compute": {
            "accelerator": "cpu",
            "instanceSize": "x2",
            "instanceType": "intel-icl",
            "scaling": {
                "maxReplica": 1,
                "minReplica": min_replica,
                "scaleToZeroTimeout": scale_to_zero_timeout,
            },
        },
        "model": model,
        "name": name,
        "provider": {"region": "us-east-1", "vendor": "aws"},
        "type": type,
    }


def wait_state(
    client: httpx.Client,
    name: str,
    want: str | tuple[str, ...],
    *,
    timeout: float = 60.0,
    seen: list[str] | None = None,
) -> dict[str, Any]:
    """Poll GET until the endpoint is in one of `want`; record every state seen in `seen`."""
    wanted = (want,) if isinstance(want, str) else want
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/endpoint/{NS}/{name}")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        state = data["status"]["state"]
        if seen is not None and (not seen or seen[-1] != state):
            seen.append(state)
        if state in wanted:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: still {state!r} after {timeout}s: {data['status']}")
        time.sleep(0.03)


def create_running(client: httpx.Client, name: str, **kwargs: Any) -> dict[str, Any]:
    r = client.post(f"/endpoint/{NS}", json=body(name, **kwargs))
    assert r.status_code == 200, r.text
    return wait_state(client, name, "running")


def data_client(token: str | None, timeout: float = 10.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(headers=headers, timeout=timeout, trust_env=False)
