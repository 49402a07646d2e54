"""Is it the row or the endpoint? The failure classifier and the per-route circuit breaker.

A row's failure (a 400 for that row, a 500 once) goes to the errors file; an *endpoint-wide*
failure never does: the run stops and the rows stay pending for the next run. Endpoint-wide
classes (`endpoint_wide_class`): 401, 403, 404, 405, 407 (``http_401`` …), no connection at all
(refused, DNS, TLS: ``unreachable``) and a 2xx answer that cannot be decoded for the task
(``bad_response``). One such failure is a suspicion, not a verdict (`RouteHealth`):

- until a request on the route has succeeded, two failures of the same class on distinct
  requests trip it (one bad row alone never stops a run);
- after that, the last ``window`` settled requests on the route all failing with the same class
  trip it (a circuit breaker; ``window`` = ``[run] breaker_window``, by default
  max(8, concurrency / 4)).

Other trouble is told apart by `trouble_of`: *overload* (429, or 503 with Retry-After: hold the
pool that long), *waking* (a 503 before the endpoint has served: the scale-to-zero wake-up) and
*outage* (connection errors, 502, 504, a 503 without Retry-After after the endpoint has served,
and after it has served also ``unreachable``): the pool holds its dispatch and probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from batchrun.errors import (
    BadResponseError,
    InferenceConnectionError,
    InferenceError,
    InferenceStatusError,
)

__all__ = [
    "ENDPOINT_WIDE_STATUSES",
    "RouteHealth",
    "Trouble",
    "Verdict",
    "breaker_window",
    "endpoint_wide_class",
    "trouble_of",
]

ENDPOINT_WIDE_STATUSES = frozenset({401, 403, 404, 405, 407})
"""HTTP statuses that are the endpoint's (or the job's) fault when rows keep getting them."""

_WAYS_OUT = {
    "http_401": "fix the token and run again",
    "http_407": "fix the proxy credentials and run again",
    "http_403": "check that the token may use this endpoint, and run again",
    "http_404": "check [endpoint] url and [run] request_format (the route), and run again",
    "http_405": "check [endpoint] url and [run] request_format (the route), and run again",
    "unreachable": "check [endpoint] url and that the endpoint is up, and run again",
    "bad_response": (
        "check that [endpoint] task and [run] request_format match what the endpoint serves, "
        "and run again"
    ),
    "outage": "run again when the endpoint is back",
}


class Trouble(StrEnum):
    """Kinds of retryable trouble the pool treats differently."""

    OVERLOAD = "overload"
    WAKING = "waking"
    OUTAGE = "outage"


def breaker_window(configured: int, concurrency: int) -> int:
    """The breaker's window: `configured`, or max(8, concurrency / 4) when it is 0."""
    return configured if configured > 0 else max(8, concurrency // 4)


def endpoint_wide_class(error: InferenceError) -> str | None:
    """The endpoint-wide class of a failed attempt (``http_401``, ``unreachable``,
    ``bad_response``), or None for a failure that may be the row's alone."""
    if isinstance(error, InferenceStatusError):
        return error.status if error.http_status in ENDPOINT_WIDE_STATUSES else None
    if isinstance(error, BadResponseError):
        return "bad_response"
    if isinstance(error, InferenceConnectionError) and error.unreachable:
        return "unreachable"
    return None


def trouble_of(error: InferenceError, *, served: bool) -> Trouble | None:
    """What kind of retryable trouble `error` is, given whether the endpoint has served yet."""
    if isinstance(error, InferenceStatusError):
        status = error.http_status
        if status == 429 or (status == 503 and error.retry_after is not None):
            return Trouble.OVERLOAD
        if status == 503:
            return Trouble.OUTAGE if served else Trouble.WAKING
        if status in (502, 504):
            return Trouble.OUTAGE
        return None
    if isinstance(error, InferenceConnectionError):
        if error.unreachable and not served:
            return None  # endpoint-wide: the breaker's, not a hold's
        return Trouble.OUTAGE
    return None


@dataclass(slots=True, kw_only=True, frozen=True)
class Verdict:
    """Why a pool stopped on its own.

    Attributes:
        failure: the class (``http_401``, ``unreachable``, ``bad_response``, ``outage``) or
            ``stalled``.
        url: the data-plane URL.
        message: the last failure's message (the server's words, token scrubbed).
        requests: distinct requests that failed that way.
    """

    failure: str
    url: str
    message: str
    requests: int = 0

    @property
    def stalled(self) -> bool:
        return self.failure == "stalled"

    def line(self) -> str:
        """The one line the CLI prints: what, where, the server's words, the way out."""
        what = self.failure.removeprefix("http_") if self.failure.startswith("http_") else ""
        way_out = _WAYS_OUT.get(self.failure, "run again")
        if what:
            return f"{what} from {self.url}: {self.message}; {way_out}"
        if self.failure == "unreachable":
            return f"cannot reach {self.url}: {self.message}; {way_out}"
        if self.failure == "bad_response":
            return f"undecodable answers from {self.url}: {self.message}; {way_out}"
        return f"{self.failure} at {self.url}: {self.message}; {way_out}"


class RouteHealth:
    """The breaker of one route; see the module docstring.

    Feed it every settled attempt: `ok` for a success, `failed` for a failure. `failed` says
    whether the route is now judged broken.

    Args:
        window: settled requests that must all fail the same way, once one has succeeded.
    """

    __slots__ = ("_suspects", "served", "streak", "streak_class", "window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.served = False  # a request on this route has succeeded
        self.streak = 0  # consecutive settled requests failing with streak_class (once served)
        self.streak_class: str | None = None
        self._suspects: dict[str, set[int]] = {}  # before served: class -> distinct requests

    def ok(self) -> None:
        """A request succeeded: every suspicion is cleared."""
        self.served = True
        self.streak = 0
        self.streak_class = None
        if self._suspects:
            self._suspects.clear()

    def failed(self, request: int, failure: str | None) -> bool:
        """A request (`request`: its identity) failed with class `failure` (None: the row's);
        whether that trips the breaker."""
        if not self.served:
            if failure is None:
                return False  # only a success clears a suspicion before the first one
            seen = self._suspects.setdefault(failure, set())
            seen.add(request)
            return len(seen) >= 2
        if failure is None:
            self.streak, self.streak_class = 0, None
            return False
        if failure == self.streak_class:
            self.streak += 1
        else:
            self.streak, self.streak_class = 1, failure
        return self.streak >= self.window

    def suspected(self, failure: str) -> bool:
        """Whether a failure of class `failure` may still turn out endpoint-wide (its rows are
        then held back rather than written to the errors file)."""
        if not self.served:
            return failure in self._suspects
        return failure == self.streak_class

    def distinct(self, failure: str) -> int:
        """Distinct requests seen failing with `failure` in the current suspicion."""
        if not self.served:
            return len(self._suspects.get(failure, ()))
        return self.streak if failure == self.streak_class else 0
