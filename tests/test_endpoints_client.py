"""EndpointsClient against Hugging Face's API shapes, through httpx.MockTransport.

The fake below answers as api.endpoints.huggingface.cloud and huggingface.co do (paths, bodies,
error shapes); tests script faults into it (5xx, dropped connections, 4xx bodies) and check the
requests the client actually sent.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.endpoints import (
    ControlRetryPolicy,
    Endpoint,
    EndpointsClient,
    EndpointState,
    SyncEndpointsClient,
    resolve_token,
)
from batchrun.errors import (
    APIClientError,
    APIConnectionError,
    APIServerError,
    AuthenticationError,
    ConflictError,
    EndpointFailedError,
    EndpointNotDeployedError,
    EndpointNotRunningError,
    EndpointTimeoutError,
    JobError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableError,
)

TOKEN = "hf_SeCrEtTokenValue1234567890"
API = "https://api.endpoints.huggingface.cloud/v2"
FAST = ControlRetryPolicy(attempts=4, backoff_initial=0.001, backoff_max=0.01, retry_after_max=0.05)

# A running endpoint as the API returns it (DESIGN.md, from huggingface_hub's tests).
RUNNING: dict[str, Any] = {
    "name": "my-endpoint",
    "type": "protected",
    "accountId": None,
    "healthRoute": "/health",
    "provider": {"vendor": "aws", "region": "us-east-1"},
    "compute": {
        "accelerator": "cpu",
        "instanceType": "intel-icl",
        "instanceSize": "x2",
        "scaling": {"minReplica": 0, "maxReplica": 1, "scaleToZeroTimeout": 15},
    },
    "model": {
        "repository": "gpt2",
        "revision": "11c5a3d5811f50298f278a704980280950aedb10",
        "task": "text-generation",
        "framework": "pytorch",
        "image": {"huggingface": {}},
        "env": {},
    },
    "status": {
        "state": "running",
        "message": "Endpoint is ready",
        "url": "https://abc123.us-east-1.aws.endpoints.huggingface.cloud",
        "createdAt": "2023-10-26T12:41:53.263Z",
        "updatedAt": "2023-10-26T12:41:53.263Z",
        "createdBy": {"id": "6273f303f6d63a28483fde12", "name": "alice"},
        "updatedBy": {"id": "6273f303f6d63a28483fde12", "name": "alice"},
        "private": None,
        "readyReplica": 1,
        "targetReplica": 1,
    },
}

Fault = Callable[[httpx.Request], httpx.Response | None]


class FakeHF:
    """Hugging Face's control plane and hub, in memory. `faults` run first, in order."""

    def __init__(self) -> None:
        self.endpoints: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.faults: list[Fault] = []
        self.user = "alice"
        self.orgs = ["acme", "bigco"]
        self.health: list[int] = []
        self.states: dict[str, list[str]] = {}

    def add(self, namespace: str, raw: dict[str, Any]) -> None:
        self.endpoints[(namespace, raw["name"])] = copy.deepcopy(raw)

    def calls(self, method: str, suffix: str = "") -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path.endswith(suffix))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for fault in list(self.faults):
            response = fault(request)
            if response is not None:
                return response
        return self.answer(request)

    def answer(self, request: httpx.Request) -> httpx.Response:
        """What the server does with a request, faults aside."""
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(
                401, json={"error": "Invalid credentials in Authorization header"}
            )
        path = request.url.path
        if request.url.host == "huggingface.co" and path == "/api/whoami-v2":
            orgs = [{"name": o, "type": "org"} for o in self.orgs]
            return httpx.Response(200, json={"type": "user", "name": self.user, "orgs": orgs})
        if request.url.host != "api.endpoints.huggingface.cloud":
            return httpx.Response(self.health.pop(0) if self.health else 200, text="ok")
        parts = path.removeprefix("/v2/").split("/")
        if parts[0] == "provider":
            return httpx.Response(200, json=PROVIDER)
        ns = parts[1]
        if len(parts) == 2 and request.method == "GET":
            items = [e for (n, _), e in self.endpoints.items() if n == ns]
            return httpx.Response(200, json={"items": items})
        if len(parts) == 2 and request.method == "POST":
            body = json.loads(request.content)
            if (ns, body["name"]) in self.endpoints:
                return httpx.Response(409, json={"error": "Endpoint name already exists"})
            raw = {
                "name": body["name"],
                "type": body["type"],
                "healthRoute": "/health",
                "provider": body["provider"],
                "compute": body["compute"],
                "model": body["model"],
                "status": {"state": "pending", "createdAt": "2026-01-01T00:00:00Z"},
            }
            self.endpoints[(ns, body["name"])] = raw
            return httpx.Response(202, json=raw)
        key = (ns, parts[2])
        if key not in self.endpoints:
            return httpx.Response(404, json={"error": "Endpoint not found"})
        raw = self.endpoints[key]
        if len(parts) == 3 and request.method == "GET":
            script = self.states.get(parts[2])
            if script:
                state = script.pop(0) if len(script) > 1 else script[0]
                raw["status"]["state"] = state
                raw["status"]["message"] = f"state is {state}"
            return httpx.Response(200, json=raw)
        if len(parts) == 3 and request.method == "PUT":
            return httpx.Response(200, json={**raw, "_put": json.loads(request.content)})
        if len(parts) == 3 and request.method == "DELETE":
            del self.endpoints[key]
            return httpx.Response(200)
        action = parts[3]
        if action == "resume" and raw["status"]["state"] == "running":
            return httpx.Response(400, json={"error": "Endpoint is already running"})
        raw["status"]["state"] = {
            "pause": "paused",
            "resume": "pending",
            "scale-to-zero": "scaledToZero",
        }[action]
        return httpx.Response(200, json=raw)


PROVIDER = {
    "vendors": [
        {
            "name": "aws",
            "regions": [
                {
                    "name": "us-east-1",
                    "computes": [
                        {
                            "id": "aws-us-east-1-cpu-intel-icl-x2",
                            "accelerator": "cpu",
                            "instanceType": "intel-icl",
                            "instanceSize": "x2",
                            "architecture": "Intel Ice Lake",
                            "numAccelerators": 1,
                            "numCpus": 2,
                            "memoryGb": 4,
                            "pricePerHour": 0.067,
                            "status": "available",
                            "quota": {"maxAccelerators": 4, "usedAccelerators": 0},
                        },
                        {
                            "id": "aws-us-east-1-nvidia-l4-x1",
                            "accelerator": "gpu",
                            "instanceType": "nvidia-l4",
                            "instanceSize": "x1",
                            "architecture": "Nvidia L4",
                            "numAccelerators": 1,
                            "memoryGb": 30,
                            "gpuMemoryGb": 24,
                            "pricePerHour": 0.8,
                            "status": "available",
                            "quota": {"maxAccelerators": 2, "usedAccelerators": 0},
                        },
                    ],
                }
            ],
        }
    ]
}


def status_once(status: int, *, method: str, suffix: str, times: int = 1, **kw: Any) -> Fault:
    """A fault answering `status` to the first `times` matching requests."""
    left = [times]

    def fault(request: httpx.Request) -> httpx.Response | None:
        if request.method == method and request.url.path.endswith(suffix) and left[0] > 0:
            left[0] -= 1
            return httpx.Response(status, **kw)
        return None

    return fault


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def hf() -> FakeHF:
    fake = FakeHF()
    fake.add("alice", RUNNING)
    return fake


def client(hf: FakeHF, **kw: Any) -> EndpointsClient:
    kw.setdefault("token", TOKEN)
    kw.setdefault("retry", FAST)
    return EndpointsClient(transport=hf.transport(), **kw)


async def use(hf: FakeHF, fn: Callable[[EndpointsClient], Any], **kw: Any) -> Any:
    async with client(hf, **kw) as c:
        return await fn(c)


# -- parsing ------------------------------------------------------------------------------


def test_from_raw_reads_every_field_of_the_api_shape() -> None:
    e = Endpoint.from_raw(copy.deepcopy(RUNNING), "alice", token=TOKEN)
    assert (e.name, e.namespace, e.repository, e.task, e.framework) == (
        "my-endpoint",
        "alice",
        "gpt2",
        "text-generation",
        "pytorch",
    )
    assert e.state is EndpointState.RUNNING and e.state == "running"
    assert e.url == "https://abc123.us-east-1.aws.endpoints.huggingface.cloud"
    assert (e.vendor, e.region, e.accelerator, e.instance_type, e.instance_size) == (
        "aws",
        "us-east-1",
        "cpu",
        "intel-icl",
        "x2",
    )
    assert (e.min_replica, e.max_replica, e.scale_to_zero_timeout) == (0, 1, 15)
    assert (e.ready_replica, e.target_replica) == (1, 1)
    assert e.health_route == "/health" and e.message == "Endpoint is ready"
    assert e.created_at is not None and e.created_at.year == 2023 and e.created_at.tzinfo
    assert e.raw["accountId"] is None
    assert TOKEN not in repr(e) and "raw" not in repr(e)


def test_unknown_state_is_kept_verbatim_and_counts_as_pending() -> None:
    raw = copy.deepcopy(RUNNING)
    raw["status"]["state"] = "deleting"
    e = Endpoint.from_raw(raw, "alice")
    assert e.state is EndpointState.PENDING and e.state_text == "deleting"


def test_endpoint_clients_need_a_url_and_carry_base_url_and_auth() -> None:
    raw = copy.deepcopy(RUNNING)
    raw["status"]["url"] = None
    with pytest.raises(EndpointNotDeployedError, match="wait"):
        _ = Endpoint.from_raw(raw, "alice", token=TOKEN).client
    e = Endpoint.from_raw(copy.deepcopy(RUNNING), "alice", token=TOKEN)
    with e.client as http:
        assert str(http.base_url).startswith("https://abc123.us-east-1")
        assert http.headers["authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in repr(http.headers)

    async def check() -> None:
        async with e.async_client as http:
            assert http.headers["authorization"] == f"Bearer {TOKEN}"

    run(check())


# -- token, hub and namespace ---------------------------------------------------------------


def test_token_order_explicit_env_then_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert resolve_token() is None
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    (hf_home / "token").write_text("from-file\n")
    assert resolve_token() == "from-file"
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "legacy")
    assert resolve_token() == "legacy"
    monkeypatch.setenv("HF_TOKEN", "modern")
    assert resolve_token() == "modern"
    assert resolve_token("explicit") == "explicit"


def test_namespace_is_asked_once_at_the_hub(hf: FakeHF) -> None:
    async def go(c: EndpointsClient) -> None:
        await asyncio.gather(c.get("my-endpoint"), c.list(), c.pause("my-endpoint"))
        await c.resume("my-endpoint")
        assert await c.namespace() == "alice"

    run(use(hf, go))
    whoami = [r for r in hf.requests if r.url.path == "/api/whoami-v2"]
    assert len(whoami) == 1 and whoami[0].url.host == "huggingface.co"
    assert hf.calls("GET", "/v2/endpoint/alice/my-endpoint") == 1


def test_hub_follows_hf_endpoint_for_hf_api_and_the_origin_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org/")
    assert EndpointsClient(token=TOKEN).hub_url == "https://hub.example.org"
    local = EndpointsClient(api_url="http://127.0.0.1:8765/v2/")
    assert local.api_url == "http://127.0.0.1:8765/v2"
    assert local.hub_url == "http://127.0.0.1:8765"
    monkeypatch.setenv("BATCHRUN_ENDPOINTS_API", "http://127.0.0.1:9/v2")
    assert EndpointsClient().api_url == "http://127.0.0.1:9/v2"
    with pytest.raises(JobError, match="http"):
        EndpointsClient(api_url="ftp://x/v2")


def test_explicit_namespace_skips_whoami(hf: FakeHF) -> None:
    hf.add("acme", {**RUNNING, "name": "org-ep"})
    e = run(use(hf, lambda c: c.get("org-ep"), namespace="acme"))
    assert e.namespace == "acme"
    assert not [r for r in hf.requests if r.url.path == "/api/whoami-v2"]


# -- request bodies --------------------------------------------------------------------------


def test_create_sends_the_reference_body(hf: FakeHF) -> None:
    async def go(c: EndpointsClient) -> Endpoint:
        return await c.create(
            "tgi-ep",
            repository="HuggingFaceH4/zephyr-7b-beta",
            task="text-generation",
            accelerator="gpu",
            instance_size="x1",
            instance_type="nvidia-a10g",
            type="protected",
            custom_image={
                "health_route": "/health",
                "env": {"MAX_INPUT_LENGTH": "1024", "MODEL_ID": "/repository"},
                "url": "ghcr.io/huggingface/text-generation-inference:1.1.0",
                "port": 80,
            },
            env={"EXTRA": "1"},
            secrets={"API_KEY": "s"},
            tags=["batch"],
        )

    e = run(use(hf, go))
    assert e.state is EndpointState.PENDING and e.namespace == "alice"
    post = next(r for r in hf.requests if r.method == "POST")
    assert post.url.path == "/v2/endpoint/alice"
    assert json.loads(post.content) == {
        "name": "tgi-ep",
        "type": "authenticated",
        "provider": {"vendor": "aws", "region": "us-east-1"},
        "compute": {
            "accelerator": "gpu",
            "instanceType": "nvidia-a10g",
            "instanceSize": "x1",
            "scaling": {"minReplica": 1, "maxReplica": 1, "scaleToZeroTimeout": None},
        },
        "model": {
            "repository": "HuggingFaceH4/zephyr-7b-beta",
            "framework": "pytorch",
            "revision": None,
            "task": "text-generation",
            "image": {
                "custom": {
                    "healthRoute": "/health",
                    "url": "ghcr.io/huggingface/text-generation-inference:1.1.0",
                    "port": 80,
                }
            },
            "env": {"MAX_INPUT_LENGTH": "1024", "MODEL_ID": "/repository", "EXTRA": "1"},
            "secrets": {"API_KEY": "s"},
        },
        "tags": ["batch"],
    }


def test_create_default_image_and_no_task_key_when_none(hf: FakeHF) -> None:
    run(
        use(hf, lambda c: c.create("plain", repository="gpt2", task=None, scale_to_zero_timeout=15))
    )
    body = json.loads(next(r for r in hf.requests if r.method == "POST").content)
    assert body["model"]["image"] == {"huggingface": {}}
    assert "task" not in body["model"] and "env" not in body["model"]
    assert body["compute"]["scaling"]["scaleToZeroTimeout"] == 15
    with pytest.raises(JobError, match="type"):
        run(use(hf, lambda c: c.create("x", repository="gpt2", task="t", type="secret")))


def test_update_sends_only_the_keys_given(hf: FakeHF) -> None:
    e = run(use(hf, lambda c: c.update("my-endpoint", min_replica=2, repository="gpt2-large")))
    assert e.raw["_put"] == {
        "compute": {"scaling": {"minReplica": 2}},
        "model": {"repository": "gpt2-large"},
    }
    with pytest.raises(JobError, match="nothing to change"):
        run(use(hf, lambda c: c.update("my-endpoint")))


def test_hardware_flattens_vendors_regions_computes_with_prices(hf: FakeHF) -> None:
    every = run(use(hf, lambda c: c.hardware()))
    assert [(h.instance_type, h.price_per_hour) for h in every] == [
        ("intel-icl", 0.067),
        ("nvidia-l4", 0.8),
    ]
    gpu = run(use(hf, lambda c: c.hardware(accelerator="GPU", vendor="aws")))
    assert len(gpu) == 1 and gpu[0].num_gpus == 1 and gpu[0].region == "us-east-1"
    assert gpu[0].gpu_memory_gb == 24 and gpu[0].id == "aws-us-east-1-nvidia-l4-x1"
    assert any(r.url.path == "/v2/provider/alice" for r in hf.requests)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "cls", "words"),
    [
        (
            401,
            {"error": "Invalid credentials in Authorization header"},
            AuthenticationError,
            ["Invalid credentials", "HF_TOKEN", "hf auth login"],
        ),
        (
            403,
            {"error": "You don't have access to this namespace"},
            PermissionDeniedError,
            ["don't have access", "'alice'"],
        ),
        (
            404,
            {"error": "Endpoint not found"},
            NotFoundError,
            ["'nope'", "'alice'", "Endpoint not found"],
        ),
        (409, {"error": "Endpoint name already exists"}, ConflictError, ["already exists"]),
        (
            422,
            {"errors": [{"message": "model.task: unknown"}, {"message": "compute: bad"}]},
            UnprocessableError,
            ["model.task: unknown", "compute: bad"],
        ),
        (
            400,
            {"error": "invalid_request", "error_description": "bad size"},
            APIClientError,
            ["invalid_request: bad size"],
        ),
        (429, {"error": "rate limited"}, APIClientError, ["rate limited"]),
    ],
)
def test_http_errors_map_to_typed_errors_with_the_server_message(
    hf: FakeHF, status: int, body: dict[str, Any], cls: type[Exception], words: list[str]
) -> None:
    hf.faults.append(status_once(status, method="GET", suffix="/nope", times=99, json=body))
    with pytest.raises(cls) as info:
        run(use(hf, lambda c: c.get("nope"), retry=ControlRetryPolicy(attempts=1)))
    error = info.value
    assert type(error) is cls and error.status == status  # type: ignore[attr-defined]
    for word in words:
        assert word in str(error), (word, str(error))
    assert str(error).startswith(f"{status}: ") and "\n" not in str(error)
    expected_exit = 2 if status in (400, 401, 403, 404, 409, 422) else 1
    assert error.exit_code == expected_exit  # type: ignore[attr-defined]


def test_x_error_message_header_and_html_bodies(hf: FakeHF) -> None:
    hf.faults.append(
        status_once(
            502,
            method="GET",
            suffix="/my-endpoint",
            times=99,
            headers={"X-Error-Message": "upstream down", "Content-Type": "text/html"},
            text="<html><body>Bad Gateway</body></html>",
        )
    )
    with pytest.raises(APIServerError) as info:
        run(use(hf, lambda c: c.get("my-endpoint"), retry=ControlRetryPolicy(attempts=1)))
    assert "upstream down" in str(info.value) and "<html" not in str(info.value)
    assert info.value.status == 502 and info.value.exit_code == 1


def test_no_token_gives_401_telling_how_to_set_one(hf: FakeHF) -> None:
    with pytest.raises(AuthenticationError, match="HF_TOKEN") as info:
        run(use(hf, lambda c: c.list(), token=None))
    assert "whoami-v2" in str(info.value)
    assert "authorization" not in {k.lower() for k in hf.requests[0].headers}


def test_transport_errors_and_timeouts_become_api_connection_errors(hf: FakeHF) -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    hf.faults.append(drop)
    with pytest.raises(APIConnectionError, match="connection refused") as info:
        run(use(hf, lambda c: c.get("my-endpoint", namespace="alice")))
    assert hf.calls("GET") == FAST.attempts
    assert info.value.exit_code == 5  # unreachable is not a bug (exit 1) nor the job's fault (2)

    hf.faults[:] = []

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    hf.faults.append(slow)
    with pytest.raises(APIConnectionError, match="no answer in time"):
        run(use(hf, lambda c: c.get("my-endpoint", namespace="alice")))


# -- retries ---------------------------------------------------------------------------------


def test_get_pause_resume_retry_5xx_and_dropped_connections(
    hf: FakeHF, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="batchrun")
    hf.add("alice", {**copy.deepcopy(RUNNING), "name": "paused-ep"})
    hf.endpoints[("alice", "paused-ep")]["status"]["state"] = "paused"
    dropped = [0]

    def drop_first_resume(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/resume") and dropped[0] == 0:
            dropped[0] += 1
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        return None

    hf.faults += [
        status_once(503, method="GET", suffix="/my-endpoint", times=2, json={"error": "busy"}),
        status_once(500, method="POST", suffix="/pause", times=1),
        drop_first_resume,
    ]

    async def go(c: EndpointsClient) -> tuple[Endpoint, Endpoint, Endpoint]:
        got = await c.get("my-endpoint")
        paused = await c.pause("my-endpoint")
        resumed = await c.resume("paused-ep")
        return got, paused, resumed

    got, paused, resumed = run(use(hf, go))
    assert got.state is EndpointState.RUNNING
    assert paused.state is EndpointState.PAUSED
    assert resumed.state is EndpointState.PENDING
    assert hf.calls("GET", "/my-endpoint") == 3
    assert hf.calls("POST", "/pause") == 2
    assert hf.calls("POST", "/resume") == 2
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 4 and all(r.levelno == logging.WARNING for r in caplog.records)
    assert any("retry 1/3" in m and "503" in m and "busy" in m for m in retries)
    assert any("retry 2/3" in m for m in retries)


def test_retries_stop_after_the_policy_and_4xx_never_retries(hf: FakeHF) -> None:
    hf.faults.append(status_once(503, method="POST", suffix="/scale-to-zero", times=99))
    with pytest.raises(APIServerError):
        run(use(hf, lambda c: c.scale_to_zero("my-endpoint", namespace="alice")))
    assert hf.calls("POST", "/scale-to-zero") == FAST.attempts
    with pytest.raises(NotFoundError):
        run(use(hf, lambda c: c.pause("ghost", namespace="alice")))
    assert hf.calls("POST", "/ghost/pause") == 1


def test_retry_after_is_honoured_on_429(hf: FakeHF) -> None:
    hf.faults.append(
        status_once(429, method="GET", suffix="/my-endpoint", headers={"Retry-After": "0"})
    )
    e = run(use(hf, lambda c: c.get("my-endpoint", namespace="alice")))
    assert e.name == "my-endpoint" and hf.calls("GET", "/my-endpoint") == 2


def test_create_after_an_ambiguous_5xx_reads_back_instead_of_posting_again(
    hf: FakeHF, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="batchrun")

    def create_then_fail(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path == "/v2/endpoint/alice":
            hf.faults.remove(create_then_fail)
            hf.answer(request)  # the server did create it ...
            return httpx.Response(504, text="gateway timeout")  # ... but the answer was lost

        return None

    hf.faults.append(create_then_fail)
    e = run(use(hf, lambda c: c.create("new-ep", repository="gpt2", task="text-generation")))
    assert e.name == "new-ep" and e.namespace == "alice"
    assert hf.calls("POST", "/v2/endpoint/alice") == 1
    assert hf.calls("GET", "/v2/endpoint/alice/new-ep") == 1
    assert any("exists now" in r.getMessage() for r in caplog.records)


def test_create_after_a_connection_error_posts_again_only_once_it_is_known_missing(
    hf: FakeHF,
) -> None:
    def refuse_first_post(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST":
            hf.faults.remove(refuse_first_post)
            raise httpx.ConnectError("connection reset", request=request)
        return None

    hf.faults.append(refuse_first_post)
    e = run(use(hf, lambda c: c.create("new-ep", repository="gpt2", task="text-generation")))
    assert e.state is EndpointState.PENDING
    sequence = [
        (r.method, r.url.path) for r in hf.requests if "new-ep" in r.url.path or r.method == "POST"
    ]
    assert sequence == [
        ("POST", "/v2/endpoint/alice"),
        ("GET", "/v2/endpoint/alice/new-ep"),
        ("POST", "/v2/endpoint/alice"),
    ]


def test_create_after_an_ambiguous_failure_does_not_adopt_someone_elses_endpoint(
    hf: FakeHF,
) -> None:
    def someone_else_created_it(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST":
            hf.faults.remove(someone_else_created_it)
            hf.add("alice", {**RUNNING, "name": "new-ep"})  # repository gpt2
            return httpx.Response(502)
        return None

    hf.faults.append(someone_else_created_it)
    with pytest.raises(ConflictError, match="'gpt2', not 'distilgpt2'"):
        run(use(hf, lambda c: c.create("new-ep", repository="distilgpt2", task="t")))
    assert hf.calls("POST") == 1


def test_create_conflict_is_not_retried(hf: FakeHF) -> None:
    with pytest.raises(ConflictError, match="already exists"):
        run(use(hf, lambda c: c.create("my-endpoint", repository="gpt2", task="text-generation")))
    assert hf.calls("POST", "/v2/endpoint/alice") == 1


def test_delete_after_an_ambiguous_failure_confirms_by_reading_back(hf: FakeHF) -> None:
    def delete_then_fail(request: httpx.Request) -> httpx.Response | None:
        if request.method == "DELETE":
            hf.faults.remove(delete_then_fail)
            hf.answer(request)
            return httpx.Response(503)
        return None

    hf.faults.append(delete_then_fail)
    run(use(hf, lambda c: c.delete("my-endpoint")))
    assert ("alice", "my-endpoint") not in hf.endpoints
    assert hf.calls("DELETE") == 1 and hf.calls("GET", "/my-endpoint") == 1
    with pytest.raises(NotFoundError, match="'my-endpoint'"):
        run(use(hf, lambda c: c.delete("my-endpoint")))


def test_resume_of_a_running_endpoint(hf: FakeHF) -> None:
    e = run(use(hf, lambda c: c.resume("my-endpoint")))
    assert e.state is EndpointState.RUNNING and hf.calls("POST", "/resume") == 1
    with pytest.raises(APIClientError, match="already running") as info:
        run(use(hf, lambda c: c.resume("my-endpoint", running_ok=False)))
    assert info.value.status == 400


# -- list("*") -------------------------------------------------------------------------------


def test_list_star_covers_the_user_and_every_org(hf: FakeHF) -> None:
    hf.add("acme", {**RUNNING, "name": "acme-ep"})
    hf.add("bigco", {**RUNNING, "name": "big-ep"})
    found = run(use(hf, lambda c: c.list("*")))
    assert [(e.namespace, e.name) for e in found] == [
        ("alice", "my-endpoint"),
        ("acme", "acme-ep"),
        ("bigco", "big-ep"),
    ]


def test_list_star_raises_an_org_failure_instead_of_swallowing_it(hf: FakeHF) -> None:
    hf.faults.append(
        status_once(
            401, method="GET", suffix="/endpoint/bigco", times=99, json={"error": "no billing"}
        )
    )
    with pytest.raises(AuthenticationError, match=r"'bigco'.*no billing"):
        run(use(hf, lambda c: c.list("*")))


# -- wait ------------------------------------------------------------------------------------


def test_wait_polls_until_running_and_healthy(hf: FakeHF) -> None:
    hf.states["my-endpoint"] = ["pending", "initializing", "running"]
    hf.health = [503, 200]
    start = time.monotonic()
    e = run(use(hf, lambda c: c.wait("my-endpoint", timeout=10, refresh_every=0.01)))
    assert e.state is EndpointState.RUNNING and time.monotonic() - start < 5
    assert hf.calls("GET", "/my-endpoint") == 4
    probes = [r for r in hf.requests if r.url.path == "/health"]
    assert len(probes) == 2 and probes[0].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("state", "cls", "words"),
    [
        ("failed", EndpointFailedError, ["failed", "state is failed"]),
        ("updateFailed", EndpointFailedError, ["failed to update", "state is updateFailed"]),
        ("paused", EndpointNotRunningError, ["paused", "batchrun endpoints resume my-endpoint"]),
        ("scaledToZero", EndpointNotRunningError, ["scaled to zero", "X-Scale-Up-Timeout"]),
    ],
)
def test_wait_raises_at_once_on_states_that_will_not_become_running(
    hf: FakeHF, state: str, cls: type[Exception], words: list[str]
) -> None:
    hf.states["my-endpoint"] = ["initializing", state]
    start = time.monotonic()
    with pytest.raises(cls) as info:
        run(use(hf, lambda c: c.wait("my-endpoint", refresh_every=0.01)))
    assert time.monotonic() - start < 5
    for word in words:
        assert word in str(info.value)
    assert info.value.exit_code == 5  # type: ignore[attr-defined]


def test_wait_times_out_as_a_timeout_error_naming_the_last_state(hf: FakeHF) -> None:
    hf.states["my-endpoint"] = ["initializing"]
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        run(use(hf, lambda c: c.wait("my-endpoint", timeout=0.3, refresh_every=0.05)))
    assert 0.25 < time.monotonic() - start < 3
    assert isinstance(info.value, EndpointTimeoutError)
    assert "initializing" in str(info.value) and "0.3s" in str(info.value)

    hf.states["my-endpoint"] = ["running"]
    hf.health = [503] * 1000
    with pytest.raises(EndpointTimeoutError, match="health route /health gave HTTP 503"):
        run(use(hf, lambda c: c.wait("my-endpoint", timeout=0.2, refresh_every=0.05)))


def test_wait_rejects_bad_arguments(hf: FakeHF) -> None:
    with pytest.raises(JobError):
        run(use(hf, lambda c: c.wait("my-endpoint", refresh_every=0)))
    with pytest.raises(JobError):
        run(use(hf, lambda c: c.wait("my-endpoint", timeout=-1)))


# -- sync wrapper ----------------------------------------------------------------------------


def test_sync_client_runs_the_seed_flow(hf: FakeHF) -> None:
    with SyncEndpointsClient(token=TOKEN, transport=hf.transport(), retry=FAST) as c:
        created = c.create("batch-ep", repository="gpt2", task="text-generation")
        assert created.state is EndpointState.PENDING
        hf.states["batch-ep"] = ["initializing", "running"]
        hf.endpoints[("alice", "batch-ep")]["status"]["url"] = (
            "https://b.endpoints.huggingface.cloud"
        )
        ready = c.wait("batch-ep", timeout=5, refresh_every=0.01)
        assert ready.url and ready.state is EndpointState.RUNNING
        assert {e.name for e in c.list()} == {"my-endpoint", "batch-ep"}
        hf.states.clear()
        assert c.pause("batch-ep").state is EndpointState.PAUSED
        assert c.resume("batch-ep").state is EndpointState.PENDING
        assert c.scale_to_zero("batch-ep").state is EndpointState.SCALED_TO_ZERO
        assert c.update("batch-ep", max_replica=2).raw["_put"] == {
            "compute": {"scaling": {"maxReplica": 2}}
        }
        assert c.hardware(accelerator="cpu")[0].price_per_hour == 0.067
        c.delete("batch-ep")
        with pytest.raises(NotFoundError):
            c.get("batch-ep")
        assert TOKEN not in repr(c)


def test_sync_client_says_to_use_the_async_one_inside_a_loop(hf: FakeHF) -> None:
    c = SyncEndpointsClient(token=TOKEN, transport=hf.transport())

    async def inside() -> None:
        c.list()

    try:
        with pytest.raises(RuntimeError, match="EndpointsClient"):
            run(inside())
        assert not hf.requests
    finally:
        c.close()


# -- the token stays secret -------------------------------------------------------------------


def test_token_never_in_messages_reprs_or_logs(
    hf: FakeHF, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def echo_token(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/echo"):
            return httpx.Response(
                400, json={"error": f"bad header {request.headers['authorization']}"}
            )
        return None

    hf.faults.append(echo_token)
    hf.faults.append(status_once(503, method="GET", suffix="/flaky", times=99))

    async def go(c: EndpointsClient) -> None:
        seen.append(repr(c))
        for call in (
            lambda: c.get("echo"),
            lambda: c.get("flaky"),
            lambda: c.get("ghost"),
            lambda: c.wait("ghost", timeout=1),
        ):
            try:
                await call()
            except Exception as e:  # every error the client can raise
                seen.extend([str(e), repr(e), str(e.__cause__ or "")])
        e = await c.get("my-endpoint")
        seen.extend([repr(e), str(e)])

    run(use(hf, go))
    with pytest.raises(AuthenticationError) as info:
        run(use(hf, lambda c: c.list(), token="wrong-" + TOKEN))
    seen += [str(info.value), repr(info.value)]
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("bad header Bearer ***" in s for s in seen)
    assert len(seen) > 10
    for text in seen:
        assert TOKEN not in text
