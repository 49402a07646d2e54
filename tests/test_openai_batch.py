"""OpenAI batch files in and out (`request_format = "openai-batch"`), against the test endpoint
app and the local service's echo model; the completions request format; finish_reason kept."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from batchrun.cli import main
from batchrun.errors import JobError
from batchrun.job import Job, load_job
from batchrun.openai_batch import BATCH_ROUTES, batch_request_id
from batchrun.runner import run_job
from tests.conftest import LocalService
from tests.support.endpoint_app import EndpointApp, expected_generated_text
from tests.support.run import read_jsonl, write_job, write_jsonl
from tests.support.waiting import wait_for
from tests.test_local_helpers import api, create_running

_BATCH_ID = re.compile(r"batch_req_[0-9a-f]{24}")


def _line(i: int, *, model: bool = False, word: str = "hello") -> dict[str, Any]:
    route = BATCH_ROUTES[i % 3]
    text = f"{word} {i}"
    if route == "/v1/chat/completions":
        body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": 8}
    elif route == "/v1/completions":
        body = {"prompt": text, "max_tokens": 8}
    else:
        body = {"input": text}
    if model:
        body["model"] = "mine"
    return {"custom_id": f"c{i}", "method": "POST", "url": route, "body": body}


def _job(tmp_path: Path, url: str, **endpoint: Any) -> Path:
    """A job with only an [endpoint], an [output] and a model: the input is --openai-batch's."""
    return write_job(
        tmp_path / "job.toml",
        {
            "endpoint": {"url": url, **endpoint},
            "output": {"path": str(tmp_path / "out.jsonl")},
            "run": {"model": "filled", "concurrency": 4, "max_attempts": 2, "backoff_max": 0.05},
        },
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    result = CliRunner().invoke(main, ["run", "--quiet", *args], env=env)
    out = result.stdout.strip()
    return result.exit_code, orjson.loads(out) if out.startswith("{") else {}, result.stderr


def _check_output_line(line: dict[str, Any], *, echo: bool) -> dict[str, Any]:
    """One output line in the layout OpenAI documents for a batch output file; its body."""
    assert list(line) == ["id", "custom_id", "response", "error", "batchrun"]
    assert _BATCH_ID.fullmatch(line["id"]) and line["id"] == batch_request_id(line["custom_id"])
    assert line["error"] is None
    response = line["response"]
    assert list(response) == ["status_code", "request_id", "body"]
    assert response["status_code"] == 200
    assert isinstance(response["request_id"], str) and response["request_id"]
    assert line["batchrun"]["status"] == "ok" and line["batchrun"]["attempts"] >= 1
    i = int(line["custom_id"][1:])
    body = response["body"]
    expected = expected_generated_text(f"hello {i}") if not echo else f"echo: hello {i}"
    route = BATCH_ROUTES[i % 3]
    if route == "/v1/chat/completions":
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == expected
        assert body["choices"][0]["finish_reason"] == "stop"
    elif route == "/v1/completions":
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == expected
    else:
        assert body["object"] == "list"
        vector = body["data"][0]["embedding"]
        assert vector and all(isinstance(x, float) for x in vector)
    assert isinstance(body["usage"], dict)
    return body


def test_three_routes_against_the_test_endpoint(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    lines = [_line(i, model=i % 2 == 0) for i in range(12)]
    lines.append({"custom_id": "c12", "method": "POST", "url": "/v1/responses", "body": {}})
    lines.append(_line(0))  # custom_id c0 again
    lines.append({**_line(14), "method": "GET"})
    write_jsonl(tmp_path / "in.jsonl", lines)
    job = _job(tmp_path, endpoint_app.url + "/v1")  # an OpenAI base URL: no second /v1
    code, summary, err = _cli(str(job), "--openai-batch", str(tmp_path / "in.jsonl"))
    assert code == 3, err
    assert summary["succeeded"] == 12 and summary["failed"] == 3
    assert endpoint_app.stats()["routes"] == {route: 4 for route in BATCH_ROUTES}

    out = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(line["custom_id"] for line in out) == [
        f"c{i}" for i in sorted(range(12), key=str)
    ]
    request_ids = set()
    for line in out:
        body = _check_output_line(line, echo=False)
        i = int(line["custom_id"][1:])
        assert body["model"] == ("mine" if i % 2 == 0 else "filled")  # the app echoes it
        request_ids.add(line["response"]["request_id"])
    assert all(rid.startswith("req-") for rid in request_ids) and len(request_ids) == 12

    errors = {e["custom_id"]: e for e in read_jsonl(tmp_path / "out.errors.jsonl")}
    assert sorted(errors) == ["c0", "c12", "c14"]
    for e in errors.values():
        assert list(e) == ["id", "custom_id", "response", "error", "batchrun"]
        assert e["response"] is None and e["id"] == batch_request_id(e["custom_id"])
        assert e["batchrun"]["attempts"] == 0 and isinstance(e["batchrun"]["row"], int)
    assert errors["c12"]["error"]["code"] == "bad_input"
    assert errors["c12"]["error"]["message"].startswith("in.jsonl:13: url must be one of")
    assert errors["c14"]["error"]["message"].startswith("in.jsonl:15: method must be POST")
    assert errors["c0"]["error"]["code"] == "duplicate_id"
    assert summary["errors_by_status"]["bad_input"]["count"] == 2
    assert summary["errors_by_status"]["duplicate_id"]["count"] == 1

    shown = CliRunner().invoke(main, ["errors", str(tmp_path / "out.jsonl"), "--json"])
    assert shown.exit_code == 0, shown.output
    assert orjson.loads(shown.stdout)["by_status"]["bad_input"]["count"] == 2


def test_resume_and_retry_errors(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    lines = [_line(i, word="bad" if i in (4, 8) else "hello") for i in range(12)]
    write_jsonl(tmp_path / "in.jsonl", lines)
    job = _job(tmp_path, endpoint_app.url)
    batch = ("--openai-batch", str(tmp_path / "in.jsonl"))
    endpoint_app.configure(reject_match="bad", reject_status=400)
    code, summary, err = _cli(str(job), *batch, "--limit", "6")
    assert code == 3 and summary["succeeded"] == 5 and summary["failed"] == 1, err
    code, summary, err = _cli(str(job), *batch)  # resume: only the 6 rows never sent
    assert code == 3 and summary["skipped_done"] == 6 and summary["rows"] == 6, err
    assert endpoint_app.stats()["requests"] == 12
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == ["c4", "c8"]
    for e in errors:
        assert e["error"]["code"] == "http_400" and "input rejected" in e["error"]["message"]
        assert e["response"]["status_code"] == 400
        assert "input rejected" in e["response"]["body"]["error"]["message"]

    endpoint_app.configure(reject_match="")
    code, summary, err = _cli(str(job), *batch, "--retry-errors")
    assert code == 0 and summary["retried_errors"] == 2, err
    assert endpoint_app.stats()["requests"] == 14
    assert read_jsonl(tmp_path / "out.errors.jsonl") == []
    out = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(line["custom_id"] for line in out) == sorted(f"c{i}" for i in range(12))
    code, summary, err = _cli(str(job), *batch)
    assert code == 0 and summary["rows"] == 0 and endpoint_app.stats()["requests"] == 14, err


@pytest.mark.parametrize(
    ("first", "said"),
    [
        ({"method": "POST", "url": "/v1/completions", "body": {}}, "no custom_id"),
        ({"custom_id": "a", "url": "/v1/completions"}, "body must be a JSON object"),
        ({"custom_id": "a", "method": "PUT", "url": "/v1/completions", "body": {}}, "method"),
        ({"custom_id": "a", "url": "/v1/responses", "body": {}}, "url must be one of"),
    ],
)
def test_a_bad_first_line_is_exit_2_before_anything_is_sent(
    tmp_path: Path, endpoint_app: EndpointApp, first: dict[str, Any], said: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [first, _line(1)])
    job = _job(tmp_path, endpoint_app.url)
    code, _, err = _cli(str(job), "--openai-batch", str(tmp_path / "in.jsonl"))
    assert code == 2
    assert "in.jsonl: line 1: " in err and said in err
    assert endpoint_app.stats()["requests"] == 0


def test_a_route_the_endpoint_does_not_serve_trips_its_own_breaker(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    # every embeddings line gets a 404 (as from a server without /v1/embeddings); chat and
    # completions succeed around them, yet the embeddings route is judged on its own
    write_jsonl(
        tmp_path / "in.jsonl", [_line(i, word="nope" if i % 3 == 2 else "hello") for i in range(30)]
    )
    endpoint_app.configure(reject_match="nope", reject_status=404)
    job = _job(tmp_path, endpoint_app.url)
    code, summary, err = _cli(str(job), "--openai-batch", str(tmp_path / "in.jsonl"))
    assert code == 5, err
    assert f"{endpoint_app.url}/v1/embeddings" in summary["error"]
    assert read_jsonl(tmp_path / "out.errors.jsonl") == []  # its rows stay pending
    assert summary["pending"] >= 10


@pytest.mark.parametrize(
    ("sections", "said"),
    [
        ({"input": {"path": "in.csv"}}, "reads a .jsonl input"),
        ({"input": {"path": "in.jsonl", "id_field": "id"}}, "drop [input] id_field"),
        ({"input": {"path": "in.jsonl", "field": "body"}}, "drop [input] field and template"),
        ({"run": {"request_format": "chat"}}, 'needs [run] request_format = "openai-batch"'),
    ],
)
def test_job_keys_that_do_not_go_with_openai_batch(
    sections: dict[str, dict[str, Any]], said: str
) -> None:
    data: dict[str, dict[str, Any]] = {
        "endpoint": {"url": "http://127.0.0.1:1"},
        "input": {"path": "in.jsonl"},
        "output": {"path": "out.jsonl", "format": "openai-batch"},
        "run": {"request_format": "openai-batch"},
    }
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    with pytest.raises(JobError, match=re.escape(said)):
        Job.from_dict(data, source="job.toml")


def test_openai_batch_job_defaults() -> None:
    job = Job.from_dict(
        {
            "endpoint": {"url": "http://127.0.0.1:1"},
            "input": {"path": "in.jsonl"},
            "output": {"path": "out.jsonl"},
            "run": {"request_format": "openai-batch"},
        }
    )
    assert job.input.id_field == "custom_id" and job.output_shape == "openai-batch"


def test_batchrun_shaped_output_of_an_openai_batch_file(
    tmp_path: Path, endpoint_app: EndpointApp
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [_line(i) for i in range(3)])
    job = _job(tmp_path, endpoint_app.url)
    args = ("--openai-batch", str(tmp_path / "in.jsonl"), "--set", "output.format=batchrun")
    code, _, err = _cli(str(job), *args)
    assert code == 0, err
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == ["c0", "c1", "c2"]
    assert list(rows[0]) == ["id", "status_code", "request_id", "body", "attempts", "latency_ms"]


def test_parquet_output_is_exit_2(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    write_jsonl(tmp_path / "in.jsonl", [_line(0)])
    job = _job(tmp_path, endpoint_app.url)
    args = ("--openai-batch", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.parquet"))
    code, _, err = _cli(str(job), *args)
    assert code == 2 and 'format = "openai-batch" is JSONL' in err


def test_three_routes_against_the_local_echo_model(
    tmp_path: Path, local_service: LocalService
) -> None:
    with api(local_service) as client:
        url = str(create_running(client, "obatch")["status"]["url"])
    write_jsonl(tmp_path / "in.jsonl", [_line(i) for i in range(9)])
    job = _job(tmp_path, url, token_env="ECHO_TOKEN")
    env = {"ECHO_TOKEN": local_service.token}
    code, summary, err = _cli(str(job), "--openai-batch", str(tmp_path / "in.jsonl"), env=env)
    assert code == 0 and summary["succeeded"] == 9, err
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == 9
    for line in out:
        body = _check_output_line(line, echo=True)
        assert body["model"] == "filled"


def test_completions_format_and_finish_reason(tmp_path: Path, endpoint_app: EndpointApp) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "q": f"question {i}"} for i in range(6)])
    sections: dict[str, dict[str, Any]] = {
        "endpoint": {"url": endpoint_app.url},
        "input": {"path": str(tmp_path / "in.jsonl"), "template": "Q: {q}", "id_field": "id"},
        "output": {"path": str(tmp_path / "c.jsonl")},
        "run": {"request_format": "completions", "parameters": {"max_new_tokens": 4}},
    }
    summary = run_job(load_job(write_job(tmp_path / "c.toml", sections)), progress=False)
    assert summary.exit_code == 0 and summary.succeeded == 6
    for row in read_jsonl(tmp_path / "c.jsonl"):
        i = int(row["id"][1:])
        assert row["text"] == expected_generated_text(f"Q: question {i}")
        assert row["finish_reason"] == "length"
        assert row["usage"]["prompt_tokens"] == 3
    assert endpoint_app.stats()["routes"] == {"/v1/completions": 6}

    sections["run"] = {"request_format": "chat"}
    sections["output"] = {"path": str(tmp_path / "chat.jsonl")}
    sections["input"] = {"path": str(tmp_path / "in.jsonl"), "field": "q"}
    summary = run_job(load_job(write_job(tmp_path / "chat.toml", sections)), progress=False)
    assert summary.exit_code == 0
    rows = read_jsonl(tmp_path / "chat.jsonl")
    assert [r["finish_reason"] for r in rows] == ["stop"] * 6
    assert list(rows[0]) == ["id", "content", "finish_reason", "usage", "attempts", "latency_ms"]


# --- a server nobody here wrote: `transformers serve` with a tiny random GPT-2 -----------------


_SERVE_TINY_GPT2 = """
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

root = Path(sys.argv[1])
words = ["the", "a", "cat", "dog", "hello", "world", "batch", "run", "user", "assistant", ":"]
vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
vocab.update({w: i + 4 for i, w in enumerate(words)})
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
    eos_token="[EOS]",
)
fast.chat_template = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
torch.manual_seed(0)
config = GPT2Config(
    vocab_size=len(vocab), n_positions=128, n_embd=16, n_layer=1, n_head=2, bos_token_id=2,
    eos_token_id=3, pad_token_id=0,
)
GPT2LMHeadModel(config).save_pretrained(root)
fast.save_pretrained(root)

from transformers.cli.transformers import main

sys.argv = ["transformers", "serve", str(root), "--host", "127.0.0.1", "--port", sys.argv[2]]
main()
"""
"""Builds a randomly initialised 1-layer GPT-2 with a word-level tokenizer and a chat template
in argv[1] (nothing is downloaded), then runs `transformers serve` on it on port argv[2]: one
process, so torch is imported once."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


_SERVE_TEST = "test_transformers_serve_with_a_tiny_random_gpt2"
_SERVING_MODULES = ("torch", "transformers", "tokenizers", "fastapi", "uvicorn", "openai")


@dataclass(slots=True, frozen=True, kw_only=True)
class _Serve:
    process: subprocess.Popen[bytes]
    url: str
    model: Path
    log: Path


@pytest.fixture(scope="module", autouse=True)
def tiny_gpt2_serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Serve | None]:
    """`transformers serve` started with the module's first test, when its test is selected:
    its start (~10 s, nearly all importing torch and transformers) overlaps the other tests."""
    selected = any(item.name == _SERVE_TEST for item in request.session.items)
    if not selected or any(importlib.util.find_spec(m) is None for m in _SERVING_MODULES):
        yield None
        return
    root = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with (root / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVE_TINY_GPT2, str(root / "tiny-gpt2"), str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        yield _Serve(
            process=process,
            url=f"http://127.0.0.1:{port}",
            model=root / "tiny-gpt2",
            log=root / "serve.log",
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.models
def test_transformers_serve_with_a_tiny_random_gpt2(
    tmp_path: Path, tiny_gpt2_serve: _Serve | None
) -> None:
    if tiny_gpt2_serve is None:
        pytest.skip(
            f"one of {', '.join(_SERVING_MODULES)} is not installed (transformers[serving])"
        )
    server, url, model = tiny_gpt2_serve.process, tiny_gpt2_serve.url, tiny_gpt2_serve.model
    wait_for(lambda: _answers(url) or server.poll() is not None, 90, "transformers serve")
    assert server.poll() is None, tiny_gpt2_serve.log.read_text()[-2000:]
    lines = [_line(i) for i in range(6) if BATCH_ROUTES[i % 3] != "/v1/embeddings"]
    write_jsonl(tmp_path / "in.jsonl", lines)
    job = write_job(
        tmp_path / "job.toml",
        {
            "endpoint": {"url": url},
            "output": {"path": str(tmp_path / "out.jsonl")},
            "run": {"model": str(model), "concurrency": 2, "request_timeout": 60},
        },
    )
    code, summary, err = _cli(str(job), "--openai-batch", str(tmp_path / "in.jsonl"))
    assert code == 0 and summary["succeeded"] == 4, err
    for line in read_jsonl(tmp_path / "out.jsonl"):
        assert list(line) == ["id", "custom_id", "response", "error", "batchrun"]
        assert line["id"] == batch_request_id(line["custom_id"]) and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert response["request_id"] == body["id"]  # its x-request-id header
        choice = body["choices"][0]
        if body["object"] == "chat.completion":
            assert isinstance(choice["message"]["content"], str)
        else:
            assert body["object"] == "text_completion" and isinstance(choice["text"], str)
        assert choice["finish_reason"] in ("length", "stop")
        assert body["usage"]["completion_tokens"] <= 8
