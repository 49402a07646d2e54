"""How rows become one HTTP request, and how the answer becomes per-row result fields.

One `RequestCodec` per `[run] request_format`, built from the job by `codec_for`:

| format | request | result fields |
| --- | --- | --- |
| ``inputs`` | ``POST {url}`` ``{"inputs": text or [texts], "parameters": {...}}`` | by task, below |
| ``chat`` | ``POST {url}/v1/chat/completions`` (OpenAI; ``max_new_tokens`` → ``max_tokens``) | ``content``, ``finish_reason``, ``usage`` |
| ``completions`` | ``POST {url}/v1/completions`` ``{"prompt", "model", ...}`` (parameters as chat) | ``text``, ``finish_reason``, ``usage`` |
| ``embeddings`` | ``POST {url}/v1/embeddings`` ``{"input": text or [texts], "model"}`` | ``embedding`` |
| ``raw`` | ``POST {url}`` with the row's field as the body (dict/list as JSON, str as is) | ``response`` |
| ``openai-batch`` | each line's ``url`` (``POST {url}{line.url}``) with its ``body`` (`batchrun.openai_batch`) | ``status_code``, ``request_id``, ``body`` |

With ``inputs``, the task names the answer's field: text-generation (and text2text-generation)
``generated_text`` (and ``finish_reason`` when TGI's ``details`` carry it), summarization ``summary_text``, translation ``translation_text``,
text-classification ``labels`` (a list of ``{"label", "score"}``), feature-extraction (and
sentence-similarity, sentence-embeddings) ``embedding``, any other task ``response`` (the
answer as is). An answer of an unexpected shape is a `BadResponseError` (status
``bad_response``) for every row of the request; a row the job cannot render is a
`RowInputError` (status ``bad_input``) for that row only.

The per-row work is one dict lookup or a ``str.format_map`` and one ``orjson.dumps``: the
client must never be the bottleneck.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from batchrun.errors import BadResponseError, InputError, JobError, RowInputError
from batchrun.job import Job
from batchrun.net import excerpt
from batchrun.ratelimit import TokenUsage

__all__ = [
    "ChatCodec",
    "CompletionsCodec",
    "EmbeddingsCodec",
    "InputsCodec",
    "RawCodec",
    "RequestCodec",
    "codec_for",
    "request_url",
]


def request_url(base: str, path: str) -> str:
    """The URL a codec's requests go to.

    ``path`` "" or "/" means the endpoint URL itself (Hugging Face's default container answers
    at its root; a URL with a path, such as TGI's ``.../generate``, is used as given). An
    OpenAI-style base URL ending in ``/v1`` does not get a second ``/v1``.
    """
    if path in ("", "/"):
        return base if urlsplit(base).path not in ("", "/") else base.rstrip("/") + "/"
    base = base.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):  # an OpenAI base URL, ".../v1"
        base = base[:-3]
    return base + path


class RequestCodec:
    """Rows → one request body; the answer → one dict of result fields per row.

    Attributes:
        path: appended to the endpoint URL (see `request_url`).
        result_fields: the fields each decoded row holds.
        content_type: the request body's content type.
        reshapes: True when `result_row` / `error_row` change the rows (the runner calls them
            only then).
    """

    path: str = ""
    result_fields: tuple[str, ...] = ("response",)
    content_type: str = "application/json"
    reshapes: bool = False

    def __init__(self, job: Job) -> None:
        self.field = job.input.field
        self.template = job.input.template
        self.parameters: dict[str, Any] = dict(job.run.parameters)
        self.model = job.run.model
        self.batch_size = job.run.batch_size
        self.source = job.input.path
        self.id_field = job.input.id_field

    # --- rows -> request -------------------------------------------------------------

    def default_field(self) -> str:
        """The field read when the job names neither ``field`` nor ``template``."""
        return "text"

    def render(self, record: dict[str, Any]) -> Any:
        """What this row contributes to a request (a text, a messages list, a raw body).

        Raises:
            RowInputError: the row lacks the field or a template field, or it is null.
        """
        if self.template is not None:
            try:
                return self.template.format_map(record)
            except KeyError as e:
                raise RowInputError(f"template field {e.args[0]!r} missing from the row") from e
            except (IndexError, ValueError, AttributeError, TypeError) as e:
                raise RowInputError(f"template cannot be filled from the row: {e}") from e
        name = self.field or self.default_field()
        try:
            value = record[name]
        except KeyError:
            raise RowInputError(f"field {name!r} missing from the row") from None
        if value is None:
            raise RowInputError(f"field {name!r} is null")
        return value

    def encode_rendered(self, items: Sequence[Any]) -> bytes:
        """One request body for already rendered rows (1..batch_size of them)."""
        raise NotImplementedError

    def encode_row(self, record: dict[str, Any]) -> bytes:
        """The body of a request of this one row (`batch_size = 1`): `render`, then encode.

        Raises:
            RowInputError: as `render`.
        """
        return self.encode_rendered((self.render(record),))

    def route_of(self, items: Sequence[Any]) -> str | None:
        """The path this request goes to when it is not `path` (a per-row route), else None."""
        return None

    def result_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A results-file row as written (`reshapes`: the output has a shape of its own)."""
        return row

    def error_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """An errors-file row as written (see `result_row`)."""
        return row

    def check_first_row(self, record: dict[str, Any]) -> None:
        """Check that the input's first row has what the job reads, before anything is sent.

        `record` is the row as read (with its `id_field`, if any). An `id_field` missing from
        the first row is most likely a typo in the job: every row would fail.

        Raises:
            InputError: naming the missing field (or `[input] id_field`) and the input file.
        """
        fields = ", ".join(repr(k) for k in list(record)[:20]) or "none"
        if self.id_field is not None and self.id_field not in record:
            raise InputError(
                f"{self.source}: first row: [input] id_field {self.id_field!r} is not one of "
                f"its fields ({fields})"
            )
        try:
            self.render(record)
        except RowInputError as e:
            raise InputError(f"{self.source}: first row: {e} (its fields: {fields})") from None

    # --- answer -> rows ----------------------------------------------------------------

    def decode(self, payload: Any, n: int) -> list[dict[str, Any]]:
        """Per-row result fields from a parsed answer to a request of `n` rows.

        Raises:
            BadResponseError: the answer does not have the shape this task answers with.
        """
        if n == 1:
            return [{"response": payload}]
        if isinstance(payload, list) and len(payload) == n:
            return [{"response": item} for item in payload]
        raise _bad_shape(payload, f"a list of {n} answers")

    def decode_body(self, body: bytes, n: int) -> list[dict[str, Any]]:
        """Per-row result fields from a raw 200 answer.

        Raises:
            BadResponseError: not JSON, or not the shape this task answers with.
        """
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadResponseError(
                f"the endpoint answered 200 with non-JSON: {excerpt(body)}"
            ) from None
        return self.decode(payload, n)

    # --- tokens, for [run] max_tokens_per_minute (batchrun.ratelimit) ---------------------

    def prompt_size(self, body: bytes) -> tuple[int, int | None]:
        """A request body's prompt characters and completion cap in tokens (None: it sets
        none): ``max_tokens`` / ``max_completion_tokens`` / ``parameters.max_new_tokens``,
        times the prompts it carries and ``n``."""
        return _prompt_size(body)

    def usage_tokens(self, payload: Any) -> TokenUsage | None:
        """The tokens a parsed 200 answer says it used (None: it does not say): OpenAI's
        ``usage``, or the sum of TGI's ``details.generated_tokens``."""
        return _usage_of(payload)

    def decode_answer(
        self, body: bytes, n: int, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Per-row result fields from a 200 answer and its headers (default: the body alone).

        Raises:
            BadResponseError: see `decode_body`.
        """
        return self.decode_body(body, n)


class InputsCodec(RequestCodec):
    """Hugging Face's default container (and TGI's ``/generate``): ``{"inputs", "parameters"}``."""

    path = "/"

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self._field_name = self.field or self.default_field()
        task = job.task
        self.task = task
        if task in ("text-generation", "text2text-generation"):
            self.key: str | None = "generated_text"
        elif task == "summarization":
            self.key = "summary_text"
        elif task == "translation":
            self.key = "translation_text"
        else:
            self.key = None
        if self.key is not None:
            self.result_fields = (self.key,)
        elif task == "text-classification":
            self.result_fields = ("labels",)
        elif task in _EMBEDDING_TASKS:
            self.result_fields = ("embedding",)

    def encode_rendered(self, items: Sequence[Any]) -> bytes:
        inputs = items[0] if self.batch_size == 1 and len(items) == 1 else list(items)
        if self.parameters:
            return orjson.dumps({"inputs": inputs, "parameters": self.parameters})
        return orjson.dumps({"inputs": inputs})

    def encode_row(self, record: dict[str, Any]) -> bytes:
        # The hot path of a run without a template: one call a row, `render` only for errors.
        value = record.get(self._field_name) if self.template is None else None
        if value is None:
            return super().encode_row(record)
        if self.parameters:
            return orjson.dumps({"inputs": value, "parameters": self.parameters})
        return orjson.dumps({"inputs": value})

    def decode_body(self, body: bytes, n: int) -> list[dict[str, Any]]:
        key = self.key
        if key is not None and n == 1:  # the usual answer, [{"generated_text": "..."}], first
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                return super().decode_body(body, n)  # says what is wrong
            if type(payload) is list and len(payload) == 1 and type(payload[0]) is dict:
                text = payload[0].get(key)
                if type(text) is str and "details" not in payload[0]:
                    return [{key: text}]
            return self._decode_text(payload, n, key)
        return super().decode_body(body, n)

    def decode(self, payload: Any, n: int) -> list[dict[str, Any]]:
        if self.key is not None:
            return self._decode_text(payload, n, self.key)
        if "labels" in self.result_fields:
            return self._decode_labels(payload, n)
        if "embedding" in self.result_fields:
            return self._decode_embeddings(payload, n)
        return super().decode(payload, n)

    @staticmethod
    def _decode_text(payload: Any, n: int, key: str) -> list[dict[str, Any]]:
        # [{"generated_text"}], {"generated_text"} (TGI /generate), [[{"generated_text"}]]
        items = [payload] if isinstance(payload, dict) else payload
        if not isinstance(items, list) or len(items) != n:
            raise _bad_shape(payload, f'a list of {n} {{"{key}": ...}}')
        out = []
        for item in items:
            if isinstance(item, list) and len(item) >= 1:
                item = item[0]
            if not isinstance(item, dict) or not isinstance(item.get(key), str):
                raise _bad_shape(payload, f'a list of {n} {{"{key}": "..."}}')
            details = item.get("details")
            if isinstance(details, dict) and "finish_reason" in details:  # TGI, details=true
                out.append({key: item[key], "finish_reason": details["finish_reason"]})
            else:
                out.append({key: item[key]})
        return out

    @staticmethod
    def _decode_labels(payload: Any, n: int) -> list[dict[str, Any]]:
        if isinstance(payload, dict):  # one input, top label only
            payload = [payload]
        if not isinstance(payload, list) or not payload:
            raise _bad_shape(payload, 'a list of {"label", "score"}')
        if n == 1:
            # [{"label", "score"}, ...] (one input, its labels) or [[...]] (a batch of one)
            labels = payload[0] if isinstance(payload[0], list) and len(payload) == 1 else payload
            rows = [labels]
        elif len(payload) == n:
            # [[...], [...]] (all labels per input) or [{...}, {...}] (top label per input)
            rows = [item if isinstance(item, list) else [item] for item in payload]
        else:
            raise _bad_shape(payload, f'a list of {n} lists of {{"label", "score"}}')
        for labels in rows:
            if not all(isinstance(x, dict) and "label" in x for x in labels):
                raise _bad_shape(payload, 'lists of {"label", "score"}')
        return [{"labels": labels} for labels in rows]

    @staticmethod
    def _decode_embeddings(payload: Any, n: int) -> list[dict[str, Any]]:
        if not isinstance(payload, list) or not payload:
            raise _bad_shape(payload, "a list of floats (or one per input)")
        if n == 1:
            if isinstance(payload[0], int | float):
                return [{"embedding": payload}]  # [f, f, ...]
            if len(payload) == 1 and isinstance(payload[0], list):
                return [{"embedding": payload[0]}]  # [[f, f, ...]]: a batch of one
            return [{"embedding": payload}]  # token embeddings of one input
        if len(payload) != n or not all(isinstance(item, list) for item in payload):
            raise _bad_shape(payload, f"a list of {n} embeddings")
        return [{"embedding": item} for item in payload]


_EMBEDDING_TASKS = frozenset({"feature-extraction", "sentence-similarity", "sentence-embeddings"})


class ChatCodec(RequestCodec):
    """OpenAI chat completions (TGI, vLLM, ...): messages from ``system`` + the text, or a
    ``messages`` column."""

    path = "/v1/chat/completions"
    result_fields = ("content", "finish_reason", "usage")

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self.system = job.input.system
        params = dict(self.parameters)
        if "max_new_tokens" in params:
            max_new = params.pop("max_new_tokens")
            params.setdefault("max_tokens", max_new)
        self.extra = params

    def render(self, record: dict[str, Any]) -> Any:
        if self.field is None and self.template is None and "messages" in record:
            messages = record["messages"]
            if not isinstance(messages, list) or not messages:
                raise RowInputError("column 'messages' must be a non-empty list of messages")
            if self.system is not None and not (
                isinstance(messages[0], dict) and messages[0].get("role") == "system"
            ):
                messages = [{"role": "system", "content": self.system}, *messages]
            return messages
        text = super().render(record)
        user = {"role": "user", "content": text if isinstance(text, str) else str(text)}
        if self.system is not None:
            return [{"role": "system", "content": self.system}, user]
        return [user]

    def encode_rendered(self, items: Sequence[Any]) -> bytes:
        return self._body("messages", items[0])

    def _body(self, key: str, value: Any) -> bytes:
        """An OpenAI-style body: `value` under `key`, then `model` and the mapped parameters."""
        body: dict[str, Any] = {key: value}
        if self.model:
            body["model"] = self.model
        if self.extra:
            body.update(self.extra)
        return orjson.dumps(body)

    def decode(self, payload: Any, n: int) -> list[dict[str, Any]]:
        try:
            message = payload["choices"][0]["message"]
            content = message["content"]
        except (KeyError, IndexError, TypeError):
            raise _bad_shape(payload, '{"choices": [{"message": {"content": ...}}]}') from None
        if content is not None and not isinstance(content, str):
            raise _bad_shape(payload, "a string message content")
        usage = payload.get("usage")
        return [
            {
                "content": content,
                "finish_reason": payload["choices"][0].get("finish_reason"),
                "usage": usage if isinstance(usage, dict) else None,
            }
        ]


class CompletionsCodec(ChatCodec):
    """OpenAI completions (vLLM, TGI, ``transformers serve``, ...): the text as ``prompt``,
    ``parameters`` mapped as `ChatCodec` maps them (``max_new_tokens`` → ``max_tokens``)."""

    path = "/v1/completions"
    result_fields = ("text", "finish_reason", "usage")

    def render(self, record: dict[str, Any]) -> Any:
        text = RequestCodec.render(self, record)
        return text if isinstance(text, str) else str(text)

    def encode_rendered(self, items: Sequence[Any]) -> bytes:
        return self._body("prompt", items[0])

    def decode(self, payload: Any, n: int) -> list[dict[str, Any]]:
        try:
            choice = payload["choices"][0]
            text = choice["text"]
        except (KeyError, IndexError, TypeError):
            raise _bad_shape(payload, '{"choices": [{"text": ...}]}') from None
        if not isinstance(text, str):
            raise _bad_shape(payload, "a string choices[0].text")
        usage = payload.get("usage")
        return [
            {
                "text": text,
                "finish_reason": choice.get("finish_reason") if isinstance(choice, dict) else None,
                "usage": usage if isinstance(usage, dict) else None,
            }
        ]


class EmbeddingsCodec(RequestCodec):
    """OpenAI embeddings (TEI, vLLM, ...): ``{"input": text or [texts], "model"}``."""

    path = "/v1/embeddings"
    result_fields = ("embedding",)

    def encode_rendered(self, items: Sequence[Any]) -> bytes:
        body: dict[str, Any] = {
            "input": items[0] if self.batch_size == 1 and len(items) == 1 else list(items)
        }
        if self.model:
            body["model"] = self.model
        if self.parameters:
            body.update(self.parameters)
        return orjson.dumps(body)

    def decode(self, payload: Any, n: int) -> list[dict[str, Any]]:
        try:
            data = payload["data"]
            if len(data) != n:
                raise ValueError
            if n > 1:
                data = sorted(data, key=lambda d: d.get("index", 0))
            return [{"embedding": d["embedding"]} for d in data]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _bad_shape(payload, f'{{"data": [{n} x {{"embedding": [...]}}]}}') from None


class RawCodec(RequestCodec):
    """The row's field posted as the body (a dict or list as JSON, a str as is)."""

    path = ""

    def encode_rendered(self, items: Sequence[Any]) -> bytes:
        value = items[0]
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, bytes):
            return value
        return orjson.dumps(value)

    def decode_body(self, body: bytes, n: int) -> list[dict[str, Any]]:
        try:
            payload: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = body.decode("utf-8", "replace")
        return [{"response": payload}]


_CODECS: dict[str, type[RequestCodec]] = {
    "inputs": InputsCodec,
    "chat": ChatCodec,
    "completions": CompletionsCodec,
    "embeddings": EmbeddingsCodec,
    "raw": RawCodec,
}


def codec_for(job: Job) -> RequestCodec:
    """The codec for the job's request format and task.

    Raises:
        JobError: a combination batchrun cannot send (e.g. batch_size > 1 with chat or raw).
    """
    fmt = job.run.request_format
    if fmt == "openai-batch":
        from batchrun.openai_batch import OpenAIBatchCodec  # it builds on this module

        return OpenAIBatchCodec(job)
    try:
        cls = _CODECS[fmt]
    except KeyError:
        raise JobError(
            f"{job.source}: [run] request_format must be one of {', '.join(_CODECS)}, "
            f"openai-batch, got {fmt!r}"
        ) from None
    if job.run.batch_size > 1 and fmt in ("chat", "completions", "raw"):
        raise JobError(
            f'{job.source}: [run] batch_size > 1 does not work with request_format "{fmt}"'
        )
    return cls(job)


def _bad_shape(payload: Any, expected: str) -> BadResponseError:
    shown = excerpt(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS))
    return BadResponseError(f"unexpected answer: expected {expected}, got {shown}")


def _prompt_size(body: bytes) -> tuple[int, int | None]:
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return len(body.decode("utf-8", "replace")), None
    if not isinstance(value, dict):
        return _chars(value), None
    prompts = 1
    chars = 0
    for key in ("messages", "prompt", "inputs", "input"):
        if key in value:
            part = value[key]
            chars += _chars(part)
            if key != "messages" and isinstance(part, list) and part:
                prompts = len(part)
    cap = value.get("max_tokens", value.get("max_completion_tokens"))
    parameters = value.get("parameters")
    if cap is None and isinstance(parameters, dict):
        cap = parameters.get("max_new_tokens")
    if type(cap) is not int:
        return chars, None
    n = value.get("n")
    return chars, cap * prompts * (n if type(n) is int and n > 0 else 1)


def _chars(value: Any) -> int:
    """The characters of the text in a prompt: strings, message contents, content parts."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        if "content" in value:
            return _chars(value["content"])
        text = value.get("text")
        return len(text) if isinstance(text, str) else 0
    return 0


def _usage_of(payload: Any) -> TokenUsage | None:
    if isinstance(payload, dict):
        usage = payload.get("usage")
        if isinstance(usage, dict):
            found = {
                name: value
                for name, key in (
                    ("prompt", "prompt_tokens"),
                    ("completion", "completion_tokens"),
                    ("total", "total_tokens"),
                )
                if type(value := usage.get(key)) is int and value >= 0
            }
            return TokenUsage(**found) if found else None
        payload = [payload]
    if not isinstance(payload, list):
        return None
    generated = 0
    for item in payload:
        if isinstance(item, list) and item:
            item = item[0]
        details = item.get("details") if isinstance(item, dict) else None
        tokens = details.get("generated_tokens") if isinstance(details, dict) else None
        if type(tokens) is not int:
            return None
        generated += tokens
    return TokenUsage(completion=generated) if payload else None
