"""Shared fixtures. Every test runs with a clean environment and its own batchrun home."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test inference endpoint (tests/endpoint_app.py): fixtures endpoint_app, endpoint_process.
pytest_plugins = ["tests.endpoint_app"]

_LEAKY_PREFIXES = ("HF_", "HUGGING_FACE_", "BATCHRUN_")
_LEAKY_NAMES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Strip tokens, batchrun settings and proxies, and give each test its own home dirs."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES) or name in _LEAKY_NAMES:
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "batchrun-home"
    monkeypatch.setenv("BATCHRUN_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield
