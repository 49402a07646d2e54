"""huggingface_hub's own client, pointed at `batchrun serve`, runs the seed's whole flow.

`HfApi(endpoint=...)` moves its whoami call; the Inference Endpoints base URL is the module
constant `constants.INFERENCE_ENDPOINTS_ENDPOINT`, set here. HF_HUB_OFFLINE (set for every
test) would block all of huggingface_hub's HTTP calls, so it is lifted for these tests only:
every call goes to 127.0.0.1.
"""

from __future__ import annotations

import pytest

hub = pytest.importorskip("huggingface_hub")

from huggingface_hub import HfApi, constants  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    HfHubHTTPError,
    InferenceEndpointError,
    InferenceEndpointTimeoutError,
)

from tests.conftest import LocalService  # noqa: E402


@pytest.fixture
def hf(local_service: LocalService, monkeypatch: pytest.MonkeyPatch) -> HfApi:
    monkeypatch.setattr(constants, "INFERENCE_ENDPOINTS_ENDPOINT", local_service.api_url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # InferenceEndpoint objects call back through a default HfApi(), which finds the token
    # the way a logged-in user's would: HF_TOKEN.
    monkeypatch.setenv("HF_TOKEN", local_service.token)
    return HfApi(endpoint=local_service.origin, token=local_service.token)


def _create(hf: HfApi, name: str, **kwargs: object) -> object:
    args: dict[str, object] = {
        "repository": "batchrun/echo",
        "framework": "pytorch",
        "task": "text-generation",
        "accelerator": "cpu",
        "vendor": "aws",
        "region": "us-east-1",
        "type": "authenticated",
        "instance_size": "x2",
        "instance_type": "intel-icl",
    }
    args.update(kwargs)
    return hf.create_inference_endpoint(name, **args)  # type: ignore[arg-type]


def test_seed_flow_with_huggingface_hub(hf: HfApi) -> None:
    assert hf.whoami()["name"] == "local"
    endpoint = hf.create_inference_endpoint(
        "hf-echo",
        repository="batchrun/echo",
        framework="pytorch",
        task="text-generation",
        accelerator="cpu",
        vendor="aws",
        region="us-east-1",
        type="authenticated",
        instance_size="x2",
        instance_type="intel-icl",
    )
    assert endpoint.status in ("pending", "initializing")
    assert endpoint.namespace == "local"
    endpoint.wait(timeout=60, refresh_every=1)
    assert endpoint.status == "running" and endpoint.url is not None
    assert endpoint.client.text_generation("hello world") == "echo: hello world"

    got = hf.get_inference_endpoint("hf-echo")
    assert got.status == "running" and got.repository == "batchrun/echo"
    assert got.task == "text-generation" and got.framework == "pytorch"
    assert got.created_at <= got.updated_at
    assert [e.name for e in hf.list_inference_endpoints()] == ["hf-echo"]
    assert [e.name for e in hf.list_inference_endpoints(namespace="*")] == ["hf-echo"]

    endpoint.pause()
    assert endpoint.status == "paused" and endpoint.url is None
    endpoint.resume()
    assert endpoint.status in ("pending", "initializing")
    endpoint.wait(timeout=60, refresh_every=1)
    endpoint.resume()  # running_ok=True: answers with the running endpoint
    assert endpoint.status == "running"
    with pytest.raises(HfHubHTTPError) as refused:
        endpoint.resume(running_ok=False)
    assert refused.value.response.status_code == 400

    url = endpoint.url
    endpoint.scale_to_zero()
    assert endpoint.status == "scaledToZero" and endpoint.url == url

    endpoint.update(min_replica=0, max_replica=2)
    assert endpoint.raw["compute"]["scaling"]["maxReplica"] == 2
    endpoint.wait(timeout=60, refresh_every=1)
    assert endpoint.status == "running"
    assert endpoint.raw["compute"]["scaling"]["minReplica"] == 0

    endpoint.delete()
    with pytest.raises(HfHubHTTPError) as missing:
        hf.get_inference_endpoint("hf-echo")
    assert missing.value.response.status_code == 404


def test_feature_extraction_and_custom_image(hf: HfApi) -> None:
    emb = _create(hf, "hf-emb", task="feature-extraction", env={"BATCHRUN_ECHO_DIM": "8"})
    custom = _create(
        hf,
        "hf-tgi",
        custom_image={
            "health_route": "/health",
            "env": {"MAX_INPUT_LENGTH": "1024", "MODEL_ID": "/repository"},
            "url": "ghcr.io/huggingface/text-generation-inference:1.1.0",
        },
    )
    emb.wait(timeout=60, refresh_every=1)  # type: ignore[attr-defined]
    vector = emb.client.feature_extraction("some text")  # type: ignore[attr-defined]
    assert vector.shape == (8,)
    custom.wait(timeout=60, refresh_every=1)  # type: ignore[attr-defined]
    assert custom.raw["model"]["image"]["custom"]["url"].startswith("ghcr.io/")  # type: ignore[attr-defined]
    assert custom.health_route == "/health"  # type: ignore[attr-defined]
    assert custom.client.text_generation("a b c") == "echo: a b c"  # type: ignore[attr-defined]
    hardware = hf.list_inference_endpoints_hardware()
    assert any(h.instance_type == "intel-icl" and h.price_per_hour > 0 for h in hardware)
    for ep in (emb, custom):
        ep.delete()  # type: ignore[attr-defined]


def test_protected_is_refused_by_this_client_version(hf: HfApi) -> None:
    # huggingface_hub 2.4 refuses type="protected" before sending; the service accepts it as an
    # alias of "authenticated" for older clients (see test_local_service).
    with pytest.raises(ValueError, match="protected"):
        _create(hf, "hf-protected", type="protected")


def test_wait_times_out_and_reports_failures(hf: HfApi) -> None:
    slow = _create(hf, "hf-slow", env={"BATCHRUN_ECHO_START_DELAY_MS": "60000"})
    with pytest.raises(InferenceEndpointTimeoutError):
        slow.wait(timeout=1, refresh_every=1)  # type: ignore[attr-defined]
    broken = _create(hf, "hf-broken", repository="gpt2")
    with pytest.raises(InferenceEndpointError, match="failed to deploy"):
        broken.wait(timeout=60, refresh_every=1)  # type: ignore[attr-defined]
    assert (
        "nothing is downloaded" in hf.get_inference_endpoint("hf-broken").raw["status"]["message"]
    )
    for ep in (slow, broken):
        ep.delete()  # type: ignore[attr-defined]
