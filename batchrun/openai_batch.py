"""OpenAI batch files in and out: ``[run] request_format = "openai-batch"``.

Input: one request per JSONL line, as OpenAI's Batch API defines it::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

``custom_id`` is the row id (``[input] id_field`` is ``custom_id``; a duplicate goes to the
errors file as ``duplicate_id``), the line's ``url`` (one of `BATCH_ROUTES`) is joined to the
endpoint's base URL (`batchrun.codecs.request_url`: a base ending in ``/v1`` gets no second
one), ``body`` is posted as is, with ``model`` filled from ``[run] model`` when it has none. The
first line is checked before anything is sent (`InputError`, exit 2); a later bad line is a
``bad_input`` row, its ``source`` naming the line.

Output (``[output] format = "openai-batch"``, the default for this request format; JSONL only):
each line is OpenAI's batch output line, batchrun's own fields under ``"batchrun"``::

    {"id": "batch_req_…", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "…", "body": {...}}, "error": null,
     "batchrun": {"status": "ok", "attempts": 1, "latency_ms": 12.5}}

An errors-file line has ``"response"`` null (no answer, or a bad line) or the final status with
the server's message as its body, and ``"error": {"code", "message"}``; its ``"batchrun"``
holds ``status``, ``attempts``, ``source`` and ``row``, which is what ``--retry-errors``,
``batchrun errors`` and ``errors_by_status`` read (`batchrun.io.errors_file.own_fields`). The
``id`` is derived from ``custom_id`` (the same across resumes); ``request_id`` is the server's
``x-request-id`` header when it sends one, else generated.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from batchrun.codecs import RequestCodec, _bad_shape
from batchrun.errors import BadResponseError, InputError, RowInputError
from batchrun.job import Job
from batchrun.net import excerpt

__all__ = ["BATCH_ROUTES", "OpenAIBatchCodec", "batch_request_id"]

BATCH_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
"""The routes a line may name: those the servers batchrun targets all serve."""


def batch_request_id(custom_id: Any) -> str:
    """The output line's ``id``: ``batch_req_`` and 24 hex digits derived from `custom_id`."""
    digest = hashlib.blake2b(str(custom_id).encode("utf-8"), digest_size=12).hexdigest()
    return f"batch_req_{digest}"


def _generated_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class OpenAIBatchCodec(RequestCodec):
    """Each line's ``body`` posted to its ``url``; the answer kept whole (see the module)."""

    path = ""
    result_fields = ("status_code", "request_id", "body")

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self.reshapes = job.output_shape == "openai-batch"

    # --- rows -> request -------------------------------------------------------------

    def render(self, record: dict[str, Any]) -> Any:
        """``(route, body)`` of a line, `body` with ``model`` filled in.

        Raises:
            RowInputError: not a POST to one of `BATCH_ROUTES` with an object ``body``.
        """
        method = record.get("method", "POST")
        if method != "POST":
            raise RowInputError(f"method must be POST, got {_short(method)}")
        route = record.get("url")
        if route not in BATCH_ROUTES:
            raise RowInputError(
                f"url must be one of {', '.join(BATCH_ROUTES)}, got {_short(route)}"
            )
        body = record.get("body")
        if not isinstance(body, dict):
            raise RowInputError(f"body must be a JSON object, got {_short(body)}")
        if self.model and "model" not in body:
            body = {**body, "model": self.model}
        return route, body

    def encode_rendered(self, items: Sequence[Any]) -> bytes:
        return orjson.dumps(items[0][1])

    def route_of(self, items: Sequence[Any]) -> str | None:
        route: str = items[0][0]
        return route

    def check_first_row(self, record: dict[str, Any]) -> None:
        where = f"{self.source}: line 1"
        custom_id = record.get("custom_id")
        if custom_id is None:
            raise InputError(f"{where}: no custom_id (an OpenAI batch line needs one)")
        if not isinstance(custom_id, str | int):
            raise InputError(f"{where}: custom_id must be a string, got {_short(custom_id)}")
        try:
            self.render(record)
        except RowInputError as e:
            raise InputError(f"{where}: {e}") from None

    # --- answer -> rows ----------------------------------------------------------------

    def decode_answer(
        self, body: bytes, n: int, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadResponseError(
                f"the endpoint answered 200 with non-JSON: {excerpt(body)}"
            ) from None
        if not isinstance(payload, dict):
            raise _bad_shape(payload, "a JSON object")
        request_id = headers.get("x-request-id") or _generated_request_id()
        return [{"status_code": 200, "request_id": request_id, "body": payload}]

    def decode_body(self, body: bytes, n: int) -> list[dict[str, Any]]:
        return self.decode_answer(body, n, {})

    # --- rows as written ----------------------------------------------------------------

    def result_row(self, row: dict[str, Any]) -> dict[str, Any]:
        own = dict(row)
        custom_id = own.pop("id")
        response = {
            "status_code": own.pop("status_code"),
            "request_id": own.pop("request_id"),
            "body": own.pop("body"),
        }
        return {
            "id": batch_request_id(custom_id),
            "custom_id": custom_id,
            "response": response,
            "error": None,
            "batchrun": {"status": "ok", **own},
        }

    def error_row(self, row: dict[str, Any]) -> dict[str, Any]:
        own = dict(row)
        custom_id = own.pop("id")
        message = str(own.pop("error"))
        status = str(own.get("status"))
        response = None
        if status.startswith("http_") and status[5:].isdigit():
            response = {
                "status_code": int(status[5:]),
                "request_id": _generated_request_id(),
                "body": {"error": {"message": message, "type": status}},
            }
        elif status in ("bad_input", "duplicate_id"):
            message = f"{own.get('source')}: {message}"  # names the line
        return {
            "id": batch_request_id(custom_id),
            "custom_id": custom_id,
            "response": response,
            "error": {"code": status, "message": message},
            "batchrun": own,
        }


def _short(value: Any) -> str:
    return excerpt(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS), limit=80)
