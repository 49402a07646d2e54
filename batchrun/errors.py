"""batchrun's exceptions: one tree, each class carrying the CLI exit code it maps to.

```
BatchrunError (exit 1)
├── JobError (exit 2)                      bad job file, option or input, found before anything is sent
│   ├── InputError                         a missing/unreadable input file, an empty glob, a bad first row
│   ├── RunStateError                      the run state does not match the job (changed input, changed job)
│   ├── EndpointDriftError                 the endpoint differs from the job's creation keys (see --update-endpoint)
│   └── RunningLoopError                   `run_job` called inside a running event loop (use `await arun_job`)
├── RunLockedError (exit 8)                another live run holds this output (busy: try later)
├── APIError (exit 1)                      the endpoints control plane answered with an HTTP error
│   ├── APIClientError (exit 2; 1 for 429 and other odd 4xx)  4xx: the API refused
│   │   ├── AuthenticationError            401
│   │   ├── PermissionDeniedError          403
│   │   ├── NotFoundError                  404
│   │   ├── ConflictError                  409
│   │   └── UnprocessableError             422
│   └── APIServerError                     5xx
├── APIConnectionError (exit 5)            the control plane could not be reached (connection, DNS, TLS, timeout)
├── EndpointError (exit 5)                 the endpoint is not usable
│   ├── EndpointFailedError                state failed / updateFailed, or it died mid-run
│   ├── EndpointTimeoutError (TimeoutError)  not ready in time
│   ├── EndpointNotRunningError            paused / scaledToZero where running was needed
│   ├── EndpointNotDeployedError           no URL yet
│   └── EndpointUnusableError              failed endpoint-wide mid-run (401/403/404, unreachable,
│                                          undecodable answers, an outage past outage_timeout)
├── EndpointRestError (exit 6)             the endpoint could not be put in its on_exit state
├── NotAtRestYetError                      on_exit's read-back did not show the state asked for in time
│                                          (tried again; never escapes `apply_on_exit`)
├── RunStalledError (exit 1)               rows pending with nothing in flight (a bug); what settled is committed
├── OutputWriteError (exit 7)              an output could not be written (disk full, I/O error); resumable
├── RowInputError                          one row cannot become a request (status bad_input; recorded per row)
└── InferenceError (exit 1)                one data-plane request failed (never escapes the pool)
    ├── InferenceStatusError               an HTTP status from the endpoint; carries status, message, retry_after
    ├── InferenceConnectionError           connection refused/reset, or the per-request timeout
    ├── ResponseTooLargeError              an answer over `[run] max_response_bytes` (not retried)
    └── BadResponseError                   a 200 whose body cannot be read for the task (status bad_response)
```

Budget and deadline stops, SIGINT and SIGTERM are not errors: `run_job` returns a `RunSummary`
for them (exit 4, 130, 143).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIClientError",
    "APIConnectionError",
    "APIError",
    "APIServerError",
    "AuthenticationError",
    "BadResponseError",
    "BatchrunError",
    "ConflictError",
    "EndpointDriftError",
    "EndpointError",
    "EndpointFailedError",
    "EndpointNotDeployedError",
    "EndpointNotRunningError",
    "EndpointRestError",
    "EndpointTimeoutError",
    "EndpointUnusableError",
    "InferenceConnectionError",
    "InferenceError",
    "InferenceStatusError",
    "InputError",
    "JobError",
    "NotAtRestYetError",
    "NotFoundError",
    "OutputWriteError",
    "PermissionDeniedError",
    "ResponseTooLargeError",
    "RowInputError",
    "RunLockedError",
    "RunStalledError",
    "RunStateError",
    "RunningLoopError",
    "UnprocessableError",
]


class BatchrunError(Exception):
    """Root of batchrun's exceptions; `exit_code` is what the CLI exits with.

    Attributes:
        summary: the run's `RunSummary` when `arun_job` raised this error (exit 2, 5, 6, 7,
            8: what was known when it stopped, with `error` and `exit_code` set), else None.
    """

    exit_code: int = 1
    summary: Any = None


class JobError(BatchrunError):
    """The job file, an option or the input is wrong; found before anything is sent."""

    exit_code = 2


class InputError(JobError):
    """An input file is missing, unreadable, or does not fit the job."""


class RunStateError(JobError):
    """The run state next to the output does not match this job or its input."""


class EndpointDriftError(JobError):
    """The existing endpoint differs from the creation keys the job sets; nothing was touched."""


class RunningLoopError(JobError):
    """`run_job` was called where an event loop is already running (Jupyter, an async app);
    `await batchrun.arun_job(job)` is the way there. Nothing was started."""


class RunLockedError(BatchrunError):
    """Another live run holds this output: busy, not a bad job, so a scheduler can try later."""

    exit_code = 8


class APIError(BatchrunError):
    """The endpoints API answered with an HTTP error status.

    Attributes:
        status: the HTTP status code.
        message: the whole message (what was asked, and the server's words).
        retry_after: seconds from the answer's ``Retry-After`` header, if any.
        server_message: the server's own words alone (token scrubbed), or "".
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retry_after: float | None = None,
        server_message: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.server_message = server_message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class APIClientError(APIError):
    """The API refused the call (4xx).

    The CLI exits 2 for a refusal the caller can fix (400, 401, 403, 404, 409, 422) and 1 for
    any other 4xx (a 429 rate limit, say), as DESIGN.md's exit codes for `batchrun endpoints` say.
    """

    _REFUSALS = frozenset({400, 401, 403, 404, 409, 422})

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 2 if self.status in self._REFUSALS else 1


class AuthenticationError(APIClientError):
    """401: no token, or a token the API does not accept."""


class PermissionDeniedError(APIClientError):
    """403: the token may not do this."""


class NotFoundError(APIClientError):
    """404: no such endpoint or namespace."""


class ConflictError(APIClientError):
    """409: the name is taken, or the call conflicts with the endpoint's state."""


class UnprocessableError(APIClientError):
    """422: the request body was rejected."""


class APIServerError(APIError):
    """5xx from the endpoints API."""


class APIConnectionError(BatchrunError):
    """The endpoints API could not be reached or did not answer in time (connection, DNS, TLS).

    Not a bug and not the job's fault: exit 5, like an endpoint that cannot serve, for
    `batchrun run` and `batchrun endpoints` alike.
    """

    exit_code = 5


class EndpointError(BatchrunError):
    """The endpoint cannot serve the run."""

    exit_code = 5


class EndpointFailedError(EndpointError):
    """The endpoint is in state failed or updateFailed, or died during the run."""


class EndpointTimeoutError(EndpointError, TimeoutError):
    """The endpoint did not become ready in time."""


class EndpointNotRunningError(EndpointError):
    """The endpoint is paused or scaled to zero where a running one was needed."""


class EndpointNotDeployedError(EndpointError):
    """The endpoint has no URL yet."""


class EndpointUnusableError(EndpointError):
    """Requests failed the same way across rows (a bad token, a wrong URL or route, answers that
    cannot be decoded, an outage past `[run] outage_timeout`): the run stopped, the failed
    rows stay pending (not in the errors file) and a rerun sends them.

    Attributes:
        url: the data-plane URL the requests went to.
        failure: the failure class, e.g. ``http_401``, ``unreachable``, ``bad_response``,
            ``outage``.
        summary: the run's `RunSummary` (set by `arun_job` before it raises), else None.
    """

    def __init__(
        self, message: str, *, url: str = "", failure: str = "", summary: Any = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.failure = failure
        self.summary = summary


class RunStalledError(BatchrunError):
    """Rows were pending with nothing in flight and no hold for 2 × `[run] request_timeout`: a
    request left the pool without an outcome (a bug). What settled is committed; a rerun sends
    the rest.

    Attributes:
        summary: the run's `RunSummary` (set by `arun_job` before it raises), else None.
    """

    def __init__(self, message: str, *, summary: Any = None) -> None:
        super().__init__(message)
        self.summary = summary


class EndpointRestError(BatchrunError):
    """The endpoint could not be put in its on_exit state; it may still be billing."""

    exit_code = 6


class NotAtRestYetError(BatchrunError):
    """The read-back after an on_exit call did not show the state asked for in time."""


class OutputWriteError(BatchrunError):
    """An output, the errors file or the run state could not be written (disk full, I/O error).

    Nothing past the last good commit is recorded, so a rerun after space is freed resumes and
    sends the uncommitted rows again.

    Attributes:
        path: the file that could not be written.
        summary: the run's `RunSummary` (set by `arun_job` before it raises), else None.
    """

    exit_code = 7

    def __init__(self, message: str, *, path: str = "", summary: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.summary = summary


class InferenceError(BatchrunError):
    """One data-plane request failed. Raised inside the pool, recorded per row."""

    status: str = "error"


class InferenceStatusError(InferenceError):
    """The endpoint answered with an HTTP error status.

    Attributes:
        http_status: the HTTP status code.
        message: the server's message (its ``error`` field), or a short body excerpt.
        retry_after: seconds from a ``Retry-After`` header, if any.
    """

    def __init__(self, message: str, *, http_status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.retry_after = retry_after

    @property
    def status(self) -> str:  # type: ignore[override]
        return f"http_{self.http_status}"


class InferenceConnectionError(InferenceError):
    """The connection failed, was dropped, or the per-request timeout passed.

    Attributes:
        unreachable: no connection could be made at all (refused, DNS, TLS), as opposed to one
            dropped or timed out mid-request.
    """

    status = "connection_error"

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class ResponseTooLargeError(InferenceError):
    """The answer is larger than `[run] max_response_bytes`; final for the request's rows."""

    status = "response_too_large"


class BadResponseError(InferenceError):
    """The endpoint answered 200 with a body batchrun cannot read for this task."""

    status = "bad_response"


class RowInputError(BatchrunError):
    """A row cannot become a request (a missing template field, a null value): status bad_input.

    Met mid-run, the row goes to the errors file and the run goes on.
    """

    status = "bad_input"
