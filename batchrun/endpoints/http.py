"""The one place where the control plane's httpx responses and errors become batchrun's errors.

Every call of `EndpointsClient` goes through `send`, which maps:

| what happened                          | raised                                 |
| -------------------------------------- | -------------------------------------- |
| 401                                    | AuthenticationError (says how to set a token) |
| 403                                    | PermissionDeniedError                  |
| 404                                    | NotFoundError (names endpoint and namespace) |
| 409                                    | ConflictError                          |
| 422                                    | UnprocessableError                     |
| other 4xx                              | APIClientError                         |
| 5xx, or a 2xx that is not JSON         | APIServerError                         |
| connection error, timeout              | APIConnectionError                     |

Each carries the status and the server's message (`error`, `error_description`,
`errors[].message`, `X-Error-Message`, else a short body excerpt, as Hugging Face sends them).
The token is scrubbed from every message, and `ControlRetryPolicy` is the one retry policy of
the control plane (the data plane's is `batchrun.pool.RetryPolicy`): connection errors, 5xx and
429 retry with exponential backoff, honouring `Retry-After`, logged as `retry n/max` at WARNING.
Retry-After parsing, the excerpt, the backoff and the retry line are `batchrun.net`'s, shared
with the data plane.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from batchrun.endpoints.auth import TOKEN_HELP
from batchrun.errors import (
    APIClientError,
    APIConnectionError,
    APIError,
    APIServerError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableError,
)
from batchrun.home import batchrun_home
from batchrun.net import backoff, excerpt, parse_retry_after, retry_line, scrub_secrets

__all__ = ["ControlRetryPolicy", "error_for_response", "probe", "retryable", "scrub", "send"]

logger = logging.getLogger(__name__)

_BY_STATUS: dict[int, type[APIClientError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableError,
}


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by `***`.

    Args:
        text: a message that may echo a token.
        secret: the token (None or empty: nothing to scrub).
    """
    return scrub_secrets(text, [secret]) if secret else text


def _server_message(response: httpx.Response) -> str:
    """The server's own words, as Hugging Face's APIs put them, on one line."""
    parts: list[str] = []
    header = response.headers.get("X-Error-Message")
    if header:
        parts.append(header)
    try:
        data: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        description = data.get("error_description")
        if isinstance(error, list):
            parts.extend(str(e) for e in error)
        elif error is not None and description is not None:
            parts.append(f"{error}: {description}")
        elif error is not None:
            parts.append(str(error))
        elif description is not None:
            parts.append(str(description))
        for item in data.get("errors") or []:
            if isinstance(item, dict) and "message" in item:
                parts.append(str(item["message"]))
        if not parts:
            for key in ("message", "detail"):
                if key in data:
                    parts.append(str(data[key]))
    elif data is None:
        content_type = response.headers.get("Content-Type", "").lower()
        if response.content and "html" not in content_type:
            parts.append(excerpt(response.text))
    cleaned = list(dict.fromkeys(" ".join(str(p).split()) for p in parts if str(p).strip()))
    return "; ".join(cleaned)


def _token_help(host: str) -> str:
    """Where the token comes from: a service on this machine is batchrun's local service, whose
    token lives in its home, not Hugging Face's."""
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        return (
            "a batchrun local service wants its own token: this home's is in "
            f"{batchrun_home() / 'local' / 'token'} (`batchrun endpoints ... --local` reads it); "
            "a service started with --token or --token-file wants that one (--token, HF_TOKEN)"
        )
    return TOKEN_HELP


def error_for_response(
    response: httpx.Response,
    *,
    name: str | None = None,
    namespace: str | None = None,
    secret: str | None = None,
) -> APIError:
    """The batchrun error for an HTTP error response (status >= 400).

    Args:
        response: the response.
        name: the endpoint the call was about, for the message.
        namespace: the namespace the call was about, for the message.
        secret: the token, scrubbed from the message.
    """
    status = response.status_code
    server = _server_message(response)
    request = response.request
    call = f"{request.method} {request.url.copy_with(query=None)}"
    what = (
        f"endpoint {name!r} in namespace {namespace!r}"
        if name and namespace
        else f"namespace {namespace!r}"
        if namespace
        else call
    )
    if status == 401:
        lead = f"not authorized for {what}; {_token_help(request.url.host)}"
    elif status == 403:
        lead = f"permission denied for {what}; the token may not do this"
    elif status == 404:
        lead = f"{what} not found" if (name or namespace) else f"not found: {call}"
    elif status == 409:
        lead = f"conflict on {what}"
    elif status >= 500:
        lead = f"server error on {call}"
    else:
        lead = f"{call} refused"
    message = scrub(f"{lead}: {server}" if server else lead, secret)
    cls: type[APIError] = (
        APIServerError if status >= 500 else _BY_STATUS.get(status, APIClientError)
    )
    return cls(
        message,
        status=status,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        server_message=scrub(server, secret),
    )


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    name: str | None = None,
    namespace: str | None = None,
    secret: str | None = None,
) -> Any:
    """One control-plane call: the decoded JSON of a 2xx answer (None when it has no body).

    Args:
        http: the client's one AsyncClient (its timeout applies).
        method: the HTTP method.
        url: the absolute URL.
        headers: extra headers (the Authorization header).
        json_body: the JSON body, if any.
        name: the endpoint the call is about, for error messages.
        namespace: the namespace the call is about, for error messages.
        secret: the token, scrubbed from every message.

    Raises:
        APIError: an HTTP error status (a subclass per status, see the module docstring).
        APIConnectionError: the API could not be reached or did not answer in time.
    """
    try:
        response = await http.request(method, url, headers=headers, json=json_body)
    except httpx.TimeoutException as e:
        raise APIConnectionError(
            scrub(f"{method} {url}: no answer in time ({type(e).__name__})", secret)
        ) from e
    except httpx.HTTPError as e:
        detail = str(e) or type(e).__name__
        raise APIConnectionError(scrub(f"{method} {url}: cannot connect: {detail}", secret)) from e
    logger.debug("%s %s -> %d", method, url, response.status_code)
    if response.status_code >= 400:
        raise error_for_response(response, name=name, namespace=namespace, secret=secret)
    if not response.content:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        quoted = excerpt(response.text, secrets=[secret] if secret else [])
        raise APIServerError(
            f"{method} {url} answered {response.status_code} with a body that is not JSON: {quoted!r}",
            status=response.status_code,
        ) from e


async def probe(
    http: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None, timeout: float
) -> int | None:
    """GET `url` once; its status code, or None when it could not be reached.

    Args:
        http: the client's AsyncClient.
        url: the absolute URL (an endpoint's health route).
        headers: the Authorization header.
        timeout: seconds for this one request.
    """
    try:
        response = await http.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        logger.debug("health probe %s: %s", url, type(e).__name__)
        return None
    return response.status_code


def retryable(error: BaseException) -> bool:
    """Whether an idempotent call may be repeated after `error`: connection errors, 5xx, 429."""
    if isinstance(error, APIConnectionError | APIServerError):
        return True
    return isinstance(error, APIError) and error.status == 429


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlRetryPolicy:
    """How idempotent control-plane calls retry.

    Attributes:
        attempts: tries in all, the first included.
        backoff_initial: seconds before the first retry (doubling, with jitter, up to backoff_max).
        backoff_max: the longest wait between two tries.
        retry_after_max: the longest `Retry-After` honoured, in seconds.
    """

    attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    retry_after_max: float = 60.0

    def retrying(self, what: str) -> AsyncRetrying:
        """A tenacity controller for one call: `async for attempt in policy.retrying(...)`.

        Args:
            what: the call, for the `retry n/max` log line (e.g. "GET /endpoint/me/x").
        """

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, APIError) and error.retry_after is not None:
                return min(error.retry_after, self.retry_after_max)
            return backoff(state.attempt_number, initial=self.backoff_initial, cap=self.backoff_max)

        def log(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            sleep = state.next_action.sleep if state.next_action else 0.0
            line = retry_line(state.attempt_number, self.attempts - 1, sleep)
            logger.warning("%s: %s after: %s", what, line, error)

        return AsyncRetrying(
            stop=stop_after_attempt(max(1, self.attempts)),
            wait=wait,
            retry=retry_if_exception(retryable),
            before_sleep=log,
            reraise=True,
        )
