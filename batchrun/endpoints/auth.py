"""Where the token, the API base URL and the whoami host come from (DESIGN.md, "Where things live").

- Token: explicit, else `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the file
  `$HF_HOME/token` (default `~/.cache/huggingface/token`), as `hf auth login` writes it.
- API base: explicit, else `BATCHRUN_ENDPOINTS_API`, else Hugging Face's; a URL without a
  path gets `/v2` (`http://127.0.0.1:8791` is `http://127.0.0.1:8791/v2`).
- whoami host: explicit, else Hugging Face's hub (`HF_ENDPOINT` or https://huggingface.co) when
  the API is Hugging Face's, else the origin of the API URL (the local service answers
  `/api/whoami-v2` itself).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchrun.errors import JobError
from batchrun.job import check_token

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_HUB_URL",
    "TOKEN_HELP",
    "namespace_from_whoami",
    "normalize_api_url",
    "resolve_api_url",
    "resolve_hub_url",
    "resolve_token",
    "token_file",
]

DEFAULT_API_URL = "https://api.endpoints.huggingface.cloud/v2"
DEFAULT_HUB_URL = "https://huggingface.co"
TOKEN_HELP = (
    "set HF_TOKEN, or run `hf auth login` (it writes $HF_HOME/token), or pass a token explicitly"
)


def token_file() -> Path:
    """The token file: `$HF_HOME/token`, HF_HOME defaulting to `~/.cache/huggingface`."""
    home = os.environ.get("HF_HOME") or str(Path("~/.cache/huggingface"))
    return Path(home).expanduser() / "token"


def resolve_token(explicit: str | None = None) -> str | None:
    """The token to send, or None when there is none anywhere.

    Args:
        explicit: a token given by the caller; it wins when non-empty.

    Raises:
        JobError: the token holds a line break or a control character (it would inject headers).
    """
    for where, value in (
        ("the token given", explicit),
        ("the token in $HF_TOKEN", os.environ.get("HF_TOKEN")),
        ("the token in $HUGGING_FACE_HUB_TOKEN", os.environ.get("HUGGING_FACE_HUB_TOKEN")),
    ):
        if value and value.strip():
            check_token(value.strip(), where)
            return value.strip()
    path = token_file()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text:
        check_token(text, f"the token file {path}")
    return text or None


def normalize_api_url(url: str) -> str:
    """`url` without a trailing slash, with `/v2` added when it has no path.

    Raises:
        JobError: the URL is not http(s).
    """
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise JobError(f"endpoints API URL must be http(s)://host[:port]/path, got {url!r}")
    url = url.rstrip("/")
    return url if parts.path.strip("/") else url + "/v2"


def resolve_api_url(explicit: str | None = None) -> str:
    """The control-plane base URL, without a trailing slash (`/v2` added when it has no path).

    Args:
        explicit: a base URL given by the caller (e.g. "http://127.0.0.1:8791/v2").

    Raises:
        JobError: the URL is not http(s), or `BATCHRUN_ENDPOINTS_API` is the word `local`
            (only `batchrun endpoints` resolves it: this home's local service).
    """
    env = os.environ.get("BATCHRUN_ENDPOINTS_API", "").strip()
    if not explicit and env.lower() == "local":
        raise JobError(
            "BATCHRUN_ENDPOINTS_API=local names this home's local service, which only "
            "`batchrun endpoints` resolves; pass the service's api_url explicitly"
        )
    return normalize_api_url(explicit or env or DEFAULT_API_URL)


def _is_hugging_face(api_url: str) -> bool:
    host = (urlsplit(api_url).hostname or "").lower()
    return host == "huggingface.cloud" or host.endswith(".huggingface.cloud")


def resolve_hub_url(api_url: str, explicit: str | None = None) -> str:
    """Where `/api/whoami-v2` is asked for this API, without a trailing slash.

    Args:
        api_url: the control-plane base URL.
        explicit: a hub URL given by the caller; it wins.
    """
    if explicit:
        return explicit.rstrip("/")
    if _is_hugging_face(api_url):
        return (os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_URL).rstrip("/")
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}"


def namespace_from_whoami(info: dict[str, Any]) -> str:
    """The default namespace: the user's name from a whoami-v2 answer.

    Args:
        info: the decoded `/api/whoami-v2` JSON.

    Raises:
        JobError: the token is not a user's (e.g. an organization token), so there is no default.
    """
    name = info.get("name")
    kind = info.get("type", "user")
    if kind != "user" or not isinstance(name, str) or not name:
        raise JobError(
            f"cannot tell the default namespace: the token belongs to a {kind!s} "
            f"({name!s}), not a user; pass a namespace explicitly (--namespace, "
            "[endpoint] namespace)"
        )
    return name
