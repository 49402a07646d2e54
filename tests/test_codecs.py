"""Request codecs: bodies per request format, answers per task, and a real round trip each."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from batchrun.codecs import (
    ChatCodec,
    EmbeddingsCodec,
    InputsCodec,
    RawCodec,
    RequestCodec,
    codec_for,
    request_url,
)
from batchrun.errors import BadResponseError, InputError, JobError, RowInputError
from batchrun.job import Job
from batchrun.pool import Outcome, Pool, Request
from tests.support.endpoint_app import (
    EndpointApp,
    expected_embedding,
    expected_generated_text,
    expected_labels,
)


def make_job(
    *, task: str = "text-generation", inp: dict[str, Any] | None = None, **run: Any
) -> Job:
    return Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": "http://127.0.0.1:1", "task": task},
            "input": {"path": "data/in.jsonl", **(inp or {})},
            "output": {"path": "out.jsonl"},
            "run": run,
        }
    )


def encode(codec: RequestCodec, records: Sequence[dict[str, Any]]) -> bytes:
    """A request body built the way the runner builds it: each row rendered, then encoded."""
    return codec.encode_rendered([codec.render(r) for r in records])


def body(codec: RequestCodec, *records: dict[str, Any]) -> Any:
    return orjson.loads(encode(codec, list(records)))


# --- requests -----------------------------------------------------------------------------


def test_codec_for_each_format() -> None:
    assert type(codec_for(make_job())) is InputsCodec
    assert type(codec_for(make_job(request_format="chat"))) is ChatCodec
    assert type(codec_for(make_job(request_format="embeddings"))) is EmbeddingsCodec
    assert type(codec_for(make_job(request_format="raw"))) is RawCodec


def test_codec_for_refuses_batches_of_chat_or_raw() -> None:
    job = make_job(request_format="chat")
    job = dataclasses.replace(job, run=dataclasses.replace(job.run, batch_size=4))
    with pytest.raises(JobError, match='batch_size > 1 does not work with request_format "chat"'):
        codec_for(job)


def test_inputs_body_single_and_batched() -> None:
    codec = codec_for(make_job(parameters={"max_new_tokens": 8}))
    assert codec.path == "/"
    assert body(codec, {"text": "hi"}) == {"inputs": "hi", "parameters": {"max_new_tokens": 8}}
    batched = codec_for(make_job(batch_size=3))
    assert body(batched, {"text": "a"}, {"text": "b"}) == {"inputs": ["a", "b"]}
    assert body(batched, {"text": "a"}) == {"inputs": ["a"]}  # a short last batch stays a list


def test_field_and_template() -> None:
    codec = codec_for(make_job(inp={"field": "prompt"}))
    assert body(codec, {"prompt": "p", "text": "t"}) == {"inputs": "p"}
    codec = codec_for(make_job(inp={"template": "Summarize: {title}\n{body}"}))
    assert body(codec, {"title": "T", "body": "B"}) == {"inputs": "Summarize: T\nB"}


def test_a_row_missing_its_field_is_a_row_input_error() -> None:
    codec = codec_for(make_job(inp={"template": "{title}: {body}"}))
    with pytest.raises(RowInputError, match="template field 'body' missing from the row") as e:
        codec.render({"title": "T"})
    assert e.value.status == "bad_input"
    with pytest.raises(RowInputError, match="field 'text' missing"):
        codec_for(make_job()).render({"other": 1})
    with pytest.raises(RowInputError, match="field 'text' is null"):
        codec_for(make_job()).render({"text": None})


def test_check_first_row_names_the_field_and_the_file() -> None:
    job = make_job(inp={"template": "{title}: {body}"})
    codec_for(job).check_first_row({"title": "T", "body": "B"})
    with pytest.raises(InputError) as e:
        codec_for(job).check_first_row({"title": "T", "text": "x"})
    message = str(e.value)
    assert "data/in.jsonl" in message and "'body'" in message and "'title', 'text'" in message


def test_chat_body() -> None:
    job = make_job(
        request_format="chat",
        model="tgi",
        parameters={"max_new_tokens": 16, "temperature": 0.2},
        inp={"system": "You are terse."},
    )
    codec = codec_for(job)
    assert codec.path == "/v1/chat/completions"
    assert body(codec, {"text": "hello"}) == {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello"},
        ],
        "model": "tgi",
        "max_tokens": 16,
        "temperature": 0.2,
    }


def test_chat_from_a_messages_column() -> None:
    codec = codec_for(make_job(request_format="chat", inp={"system": "S"}))
    messages = [{"role": "user", "content": "q"}]
    assert body(codec, {"messages": messages}) == {
        "messages": [{"role": "system", "content": "S"}, *messages]
    }
    with pytest.raises(RowInputError, match="'messages' must be a non-empty list"):
        codec.render({"messages": "nope"})


def test_embeddings_body() -> None:
    codec = codec_for(make_job(request_format="embeddings", model="bge", batch_size=2))
    assert codec.path == "/v1/embeddings"
    assert body(codec, {"text": "a"}, {"text": "b"}) == {"input": ["a", "b"], "model": "bge"}
    single = codec_for(make_job(request_format="embeddings"))
    assert body(single, {"text": "a"}) == {"input": "a"}


def test_raw_body() -> None:
    codec = codec_for(make_job(request_format="raw", inp={"field": "payload"}))
    assert codec.path == ""
    assert encode(codec, [{"payload": {"inputs": "x", "k": [1]}}]) == b'{"inputs":"x","k":[1]}'
    assert encode(codec, [{"payload": '{"already": "json"}'}]) == b'{"already": "json"}'


def test_request_url() -> None:
    assert request_url("http://h:8080", "/") == "http://h:8080/"
    assert request_url("http://h:8080/", "") == "http://h:8080/"
    assert request_url("http://h/generate", "/") == "http://h/generate"
    assert request_url("http://h/", "/v1/embeddings") == "http://h/v1/embeddings"
    assert request_url("http://h:8000/v1/", "/v1/chat/completions") == (
        "http://h:8000/v1/chat/completions"
    )


# --- answers --------------------------------------------------------------------------------


def test_decode_generated_text_shapes() -> None:
    codec = codec_for(make_job())
    expected = [{"generated_text": "x"}]
    assert codec.decode([{"generated_text": "x"}], 1) == expected
    assert codec.decode({"generated_text": "x", "details": None}, 1) == expected  # TGI /generate
    assert codec.decode([[{"generated_text": "x"}]], 1) == expected
    assert codec.decode([[{"generated_text": "a"}], {"generated_text": "b"}], 2) == [
        {"generated_text": "a"},
        {"generated_text": "b"},
    ]
    with pytest.raises(BadResponseError, match="expected a list of 2") as e:
        codec.decode([{"generated_text": "a"}], 2)
    assert e.value.status == "bad_response"
    with pytest.raises(BadResponseError):
        codec.decode([{"text": "a"}], 1)


def test_decode_summary_text() -> None:
    codec = codec_for(make_job(task="summarization"))
    assert codec.result_fields == ("summary_text",)
    assert codec.decode([{"summary_text": "s"}], 1) == [{"summary_text": "s"}]


def test_decode_labels_shapes() -> None:
    codec = codec_for(make_job(task="text-classification", batch_size=2))
    pos, neg = {"label": "POS", "score": 0.9}, {"label": "NEG", "score": 0.1}
    assert codec.decode([pos, neg], 1) == [{"labels": [pos, neg]}]
    assert codec.decode([[pos, neg]], 1) == [{"labels": [pos, neg]}]
    assert codec.decode(pos, 1) == [{"labels": [pos]}]
    assert codec.decode([[pos, neg], [neg, pos]], 2) == [
        {"labels": [pos, neg]},
        {"labels": [neg, pos]},
    ]
    assert codec.decode([pos, neg], 2) == [{"labels": [pos]}, {"labels": [neg]}]  # top-1 each
    with pytest.raises(BadResponseError):
        codec.decode([[pos]], 2)
    with pytest.raises(BadResponseError):
        codec.decode([["POS"]], 1)


def test_decode_embedding_shapes() -> None:
    codec = codec_for(make_job(task="feature-extraction", batch_size=2))
    assert codec.decode([0.1, 0.2], 1) == [{"embedding": [0.1, 0.2]}]
    assert codec.decode([[0.1, 0.2]], 1) == [{"embedding": [0.1, 0.2]}]
    tokens = [[0.1, 0.2], [0.3, 0.4]]
    assert codec.decode(tokens, 1) == [{"embedding": tokens}]
    assert codec.decode(tokens, 2) == [{"embedding": [0.1, 0.2]}, {"embedding": [0.3, 0.4]}]
    with pytest.raises(BadResponseError):
        codec.decode([0.1, 0.2], 2)
    with pytest.raises(BadResponseError):
        codec.decode({"embedding": [1]}, 1)


def test_decode_chat() -> None:
    codec = codec_for(make_job(request_format="chat"))
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    choice = {"message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}
    answer = {"choices": [choice], "usage": usage}
    assert codec.decode(answer, 1) == [{"content": "hi", "finish_reason": "length", "usage": usage}]
    assert codec.decode({"choices": [{"message": {"content": "x"}}]}, 1) == [
        {"content": "x", "finish_reason": None, "usage": None}
    ]
    with pytest.raises(BadResponseError, match="choices"):
        codec.decode({"choices": []}, 1)


def test_completions_body_and_answer() -> None:
    codec = codec_for(
        make_job(
            request_format="completions",
            model="m",
            parameters={"max_new_tokens": 5, "temperature": 0.0},
            inp={"template": "Q: {q}"},
        )
    )
    item = codec.render({"q": "why"})
    assert orjson.loads(codec.encode_rendered([item])) == {
        "prompt": "Q: why",
        "model": "m",
        "max_tokens": 5,
        "temperature": 0.0,
    }
    usage = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    answer = {"choices": [{"text": "because", "finish_reason": "stop"}], "usage": usage}
    assert codec.decode(answer, 1) == [{"text": "because", "finish_reason": "stop", "usage": usage}]
    with pytest.raises(BadResponseError, match="choices"):
        codec.decode({"choices": [{"message": {}}]}, 1)


def test_tgi_details_finish_reason_is_kept() -> None:
    codec = codec_for(make_job())
    with_details = b'[{"generated_text": "a", "details": {"finish_reason": "eos_token"}}]'
    assert codec.decode_body(with_details, 1) == [
        {"generated_text": "a", "finish_reason": "eos_token"}
    ]
    tgi = b'{"generated_text": "b", "details": {"finish_reason": "length", "tokens": []}}'
    assert codec.decode_body(tgi, 1) == [{"generated_text": "b", "finish_reason": "length"}]
    assert codec.decode_body(b'[{"generated_text": "c"}]', 1) == [{"generated_text": "c"}]


def test_decode_openai_embeddings_in_index_order() -> None:
    codec = codec_for(make_job(request_format="embeddings", batch_size=2))
    answer = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    assert codec.decode(answer, 2) == [{"embedding": [1.0]}, {"embedding": [2.0]}]
    with pytest.raises(BadResponseError):
        codec.decode(answer, 3)


def test_decode_body_not_json() -> None:
    with pytest.raises(BadResponseError, match="non-JSON: <html>oops"):
        codec_for(make_job()).decode_body(b"<html>oops</html>", 1)
    raw = codec_for(make_job(request_format="raw"))
    assert raw.decode_body(b"plain text", 1) == [{"response": "plain text"}]
    assert raw.decode_body(b'{"a": 1}', 1) == [{"response": {"a": 1}}]


def test_unknown_task_keeps_the_answer_as_response() -> None:
    codec = codec_for(make_job(task="question-answering"))
    assert codec.decode({"answer": "42"}, 1) == [{"response": {"answer": "42"}}]


# --- a real round trip per format and task ----------------------------------------------------


def _expected(field: str, text: str) -> Any:
    if field == "generated_text" or field == "content":
        return expected_generated_text(text)
    if field == "embedding":
        return expected_embedding(text)
    return expected_labels(text)


@pytest.mark.parametrize(
    ("fmt", "task", "batch_size", "field"),
    [
        ("inputs", "text-generation", 1, "generated_text"),
        ("inputs", "text-generation", 4, "generated_text"),
        ("inputs", "text-classification", 1, "labels"),
        ("inputs", "text-classification", 3, "labels"),
        ("inputs", "feature-extraction", 1, "embedding"),
        ("inputs", "feature-extraction", 5, "embedding"),
        ("chat", "text-generation", 1, "content"),
        ("embeddings", "feature-extraction", 1, "embedding"),
        ("embeddings", "feature-extraction", 4, "embedding"),
    ],
)
def test_round_trip_against_a_real_server(
    endpoint_app: EndpointApp, fmt: str, task: str, batch_size: int, field: str
) -> None:
    endpoint_app.configure(task=task)
    codec = codec_for(make_job(task=task, request_format=fmt, batch_size=batch_size))
    rows = [{"text": f"row number {i}"} for i in range(23)]
    requests = [
        Request(
            list(range(i, min(i + batch_size, len(rows)))), encode(codec, rows[i : i + batch_size])
        )
        for i in range(0, len(rows), batch_size)
    ]
    for r in requests:
        r.n = len(r.key)
    outcomes: list[Outcome] = []
    pool = Pool(url=endpoint_app.url, codec=codec, concurrency=4, request_timeout=5, max_attempts=2)
    asyncio.run(pool.run(requests, outcomes.append))
    assert len(outcomes) == len(requests)
    seen = 0
    for outcome in outcomes:
        assert outcome.error is None, outcome.error
        assert outcome.results is not None and len(outcome.results) == outcome.request.n
        for i, result in zip(outcome.request.key, outcome.results, strict=True):
            assert result[field] == _expected(field, rows[i]["text"])
            seen += 1
        if fmt == "chat":
            usage = outcome.results[0]["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert seen == len(rows)
    assert endpoint_app.stats()["requests"] == len(requests)


def test_raw_round_trip(endpoint_app: EndpointApp) -> None:
    codec = codec_for(make_job(request_format="raw", inp={"field": "payload"}))
    records = [{"payload": {"inputs": f"r{i}", "parameters": {"x": i}}} for i in range(5)]
    requests = [Request(i, encode(codec, [r])) for i, r in enumerate(records)]
    outcomes: list[Outcome] = []
    pool = Pool(url=endpoint_app.url, codec=codec, concurrency=2, request_timeout=5, max_attempts=1)
    asyncio.run(pool.run(requests, outcomes.append))
    for outcome in outcomes:
        assert outcome.results == [
            {"response": [{"generated_text": expected_generated_text(f"r{outcome.request.key}")}]}
        ]


def test_tgi_generate_route_with_the_inputs_format(endpoint_app: EndpointApp) -> None:
    codec = codec_for(make_job())
    outcomes: list[Outcome] = []
    pool = Pool(
        url=endpoint_app.url + "/generate",
        codec=codec,
        concurrency=2,
        request_timeout=5,
        max_attempts=1,
    )
    asyncio.run(pool.run([Request(0, encode(codec, [{"text": "tgi"}]))], outcomes.append))
    assert outcomes[0].results == [{"generated_text": expected_generated_text("tgi")}]
    assert endpoint_app.stats()["routes"] == {"/generate": 1}
