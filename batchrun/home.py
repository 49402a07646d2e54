"""batchrun's home: the local service's state and the registry of live leases.

`$BATCHRUN_HOME`, else the user data directory (`~/.local/share/batchrun` on Linux,
`~/Library/Application Support/batchrun` on macOS).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["batchrun_home"]


def batchrun_home() -> Path:
    """The home directory, created if missing."""
    env = os.environ.get("BATCHRUN_HOME")
    home = Path(env).expanduser() if env else Path(platformdirs.user_data_dir("batchrun"))
    home.mkdir(parents=True, exist_ok=True)
    return home
