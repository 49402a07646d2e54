"""The echo model's data plane: every route and task, and each seeded fault from model.env."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LocalService, start_local_service
from tests.test_local_helpers import NS, api, create_running, data_client, wait_state


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    service = start_local_service(tmp_path_factory.mktemp("echo") / "state")
    try:
        yield service
    finally:
        service.stop()


def _url(svc: LocalService, name: str, **kwargs: object) -> str:
    with api(svc) as c:
        return str(create_running(c, name, **kwargs)["status"]["url"])  # type: ignore[arg-type]


def _delete(svc: LocalService, name: str) -> None:
    with api(svc) as c:
        c.delete(f"/endpoint/{NS}/{name}")


def test_text_generation_routes(svc: LocalService) -> None:
    url = _url(svc, "gen")
    with data_client(svc.token) as d:
        r = d.post(url + "/", json={"inputs": "one two three", "parameters": {"max_new_tokens": 2}})
        assert r.json() == [{"generated_text": "echo: one two"}]
        r = d.post(url + "/", json={"inputs": ["a b", "c"]})
        assert r.json() == [[{"generated_text": "echo: a b"}], [{"generated_text": "echo: c"}]]
        r = d.post(url + "/generate", json={"inputs": "hello there", "parameters": {}})
        out = r.json()
        assert out["generated_text"] == "echo: hello there"
        assert out["details"]["generated_tokens"] == 3
        r = d.post(
            url + "/v1/chat/completions",
            json={
                "model": "tgi",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "say hi"},
                ],
                "max_tokens": 16,
            },
        )
        chat = r.json()
        assert chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"] == {"role": "assistant", "content": "echo: say hi"}
        assert chat["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
        assert d.get(url + "/health").status_code == 200
        info = d.get(url + "/info").json()
        assert info["model_id"] == "batchrun/echo" and info["backend"] == "echo"
        bad = d.post(url + "/", json={"nope": 1})
        assert bad.status_code == 400
        assert bad.json()["error_type"] == "validation" and "inputs" in bad.json()["error"]
        bad = d.post(url + "/", content=b"not json")
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    _delete(svc, "gen")


def test_embeddings_are_deterministic_unit_vectors(svc: LocalService) -> None:
    url = _url(svc, "emb", task="feature-extraction", env={"BATCHRUN_ECHO_DIM": "24"})
    with data_client(svc.token) as d:
        one = d.post(url + "/", json={"inputs": "same text"}).json()
        assert len(one) == 24
        assert math.isclose(sum(v * v for v in one), 1.0, rel_tol=1e-9)
        many = d.post(url + "/", json={"inputs": ["same text", "other"]}).json()
        assert many[0] == one and many[1] != one
        oai = d.post(url + "/v1/embeddings", json={"input": ["same text", "x y"], "model": "m"})
        data = oai.json()
        assert data["object"] == "list"
        assert [e["index"] for e in data["data"]] == [0, 1]
        assert data["data"][0]["embedding"] == one
        assert data["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
        single = d.post(url + "/v1/embeddings", json={"input": "same text"}).json()
        assert single["data"][0]["embedding"] == one
        assert d.post(url + "/embed", json={"inputs": "same text"}).json() == [one]
    _delete(svc, "emb")


def test_classification_returns_fixed_labels(svc: LocalService) -> None:
    url = _url(svc, "cls", task="text-classification")
    with data_client(svc.token) as d:
        labels = d.post(url + "/", json={"inputs": "great movie"}).json()
        assert {x["label"] for x in labels} == {"POSITIVE", "NEGATIVE"}
        assert math.isclose(sum(x["score"] for x in labels), 1.0, abs_tol=1e-6)
        assert labels[0]["score"] >= labels[1]["score"]
        again = d.post(url + "/", json={"inputs": ["great movie", "bad"]}).json()
        assert again[0] == labels and len(again) == 2
    _delete(svc, "cls")


def _statuses(d: httpx.Client, url: str, n: int) -> list[int]:
    return [d.post(url + "/", json={"inputs": f"r{i}"}).status_code for i in range(n)]


def test_error_rate_is_seeded_and_repeatable(svc: LocalService) -> None:
    env = {"BATCHRUN_ECHO_ERROR_RATE": "0.3", "BATCHRUN_ECHO_SEED": "7"}
    a = _url(svc, "err-a", env=env)
    b = _url(svc, "err-b", env=env)
    with data_client(svc.token) as d:
        first = _statuses(d, a, 40)
        second = _statuses(d, b, 40)
        assert first == second
        assert set(first) == {200, 500}
        assert 4 <= first.count(500) <= 24
        r = d.post(a + "/", json={"inputs": "x"})
        while r.status_code != 500:
            r = d.post(a + "/", json={"inputs": "x"})
        assert "BATCHRUN_ECHO_ERROR_RATE" in r.json()["error"]
    _delete(svc, "err-a")
    _delete(svc, "err-b")


def test_rate_limit_answers_429_with_retry_after(svc: LocalService) -> None:
    url = _url(svc, "rl", env={"BATCHRUN_ECHO_RATE_LIMIT_RATE": "1"})
    with data_client(svc.token) as d:
        r = d.post(url + "/", json={"inputs": "x"})
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error_type"] == "rate_limit"
        assert d.get(url + "/health").status_code == 200  # health is never faulted
    _delete(svc, "rl")


def test_hang_never_answers(svc: LocalService) -> None:
    url = _url(svc, "hang", env={"BATCHRUN_ECHO_HANG_RATE": "1"})
    with data_client(svc.token, timeout=0.5) as d, pytest.raises(httpx.ReadTimeout):
        d.post(url + "/", json={"inputs": "x"})
    _delete(svc, "hang")


def test_latency_is_added(svc: LocalService) -> None:
    url = _url(svc, "slow", env={"BATCHRUN_ECHO_LATENCY_MS": "250"})
    with data_client(svc.token) as d:
        start = time.monotonic()
        assert d.post(url + "/", json={"inputs": "x"}).status_code == 200
        assert time.monotonic() - start >= 0.25
    _delete(svc, "slow")


def test_crash_after_fails_the_endpoint(svc: LocalService) -> None:
    url = _url(svc, "crash", env={"BATCHRUN_ECHO_CRASH_AFTER": "3"})
    with data_client(svc.token) as d:
        assert _statuses(d, url, 3) == [200, 200, 200]
        with pytest.raises(httpx.TransportError):
            d.post(url + "/", json={"inputs": "boom"})
    with api(svc) as c:
        ep = wait_state(c, "crash", "failed")
        assert "exited unexpectedly" in ep["status"]["message"]
        assert ep["status"]["url"] is None
        # resume starts a fresh worker, whose count starts again
        c.post(f"/endpoint/{NS}/crash/resume")
        wait_state(c, "crash", "running")
    with data_client(svc.token) as d:
        assert _statuses(d, url, 3) == [200, 200, 200]
    _delete(svc, "crash")


def test_start_delay_keeps_it_initializing(svc: LocalService) -> None:
    with api(svc) as c:
        c.post(
            f"/endpoint/{NS}",
            json={
                "name": "startdelay",
                "type": "protected",
                "model": {
                    "repository": "batchrun/echo",
                    "framework": "pytorch",
                    "task": "text-generation",
                    "image": {"huggingface": {}},
                    "env": {"BATCHRUN_ECHO_START_DELAY_MS": "1500"},
                },
            },
        )
        ep = wait_state(c, "startdelay", "initializing")
        started = time.monotonic()
        url = ep["status"]["url"]
        with data_client(svc.token) as d:
            assert d.get(url + "/health").status_code == 503
            assert d.post(url + "/", json={"inputs": "early"}).status_code == 503
        wait_state(c, "startdelay", "running")
        assert time.monotonic() - started >= 0.5
        c.delete(f"/endpoint/{NS}/startdelay")


def test_bad_fault_value_fails_the_endpoint(svc: LocalService) -> None:
    with api(svc) as c:
        c.post(
            f"/endpoint/{NS}",
            json={
                "name": "badenv",
                "model": {
                    "repository": "batchrun/echo",
                    "image": {"huggingface": {}},
                    "env": {"BATCHRUN_ECHO_ERROR_RATE": "lots"},
                },
            },
        )
        ep = wait_state(c, "badenv", "failed")
        assert "BATCHRUN_ECHO_ERROR_RATE" in ep["status"]["message"]
        c.delete(f"/endpoint/{NS}/badenv")
