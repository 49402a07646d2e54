"""The index of runs under batchrun's home (`batchrun_home()/"runs"`), for `batchrun status`.

A run notes itself once it holds its output's lock: one small file per output,
`runs/<hash of the output's path>.json` (output, job file, pid, provider, endpoint, started),
written atomically, and removed by the run as it ends, while it still holds the lock. Whether
a noted run is live is never read from the file: it is live exactly while its output's run
state lock is held (`RunState.live_pid`), which the kernel drops however the process dies.
So a run killed with -9 leaves a stale file that reads as not live, a reused pid cannot make
it look live, and the next run on that output overwrites it. This covers every provider,
`url` runs included; the lease registry (`lifecycle/registry.py`) says which endpoint a run
holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from batchrun.home import batchrun_home
from batchrun.io.state import RunState

__all__ = ["RunEntry", "RunIndex"]

log = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class RunEntry:
    """What a run noted about itself. No token, ever.

    Attributes:
        output: the output's absolute path.
        job: the job file (or "<job>" for a job built in Python).
        pid: the process that noted it.
        provider: "hf", "local" or "url".
        endpoint: the endpoint's name, or the URL for `provider = "url"`.
        started: when it was noted (ISO 8601, UTC).
    """

    output: str
    job: str = ""
    pid: int = field(default_factory=os.getpid)
    provider: str = ""
    endpoint: str = ""
    started: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready data."""
        return asdict(self)


class RunIndex:
    """The run files under one directory (default `batchrun_home()/"runs"`)."""

    def __init__(self, root: Path | None = None) -> None:
        self._root = root

    @property
    def root(self) -> Path:
        """The directory of run files (finding the home may create it: `OSError`)."""
        if self._root is None:
            self._root = batchrun_home() / "runs"
        return self._root

    def path_for(self, output: str) -> Path:
        """The file of the run on `output`."""
        key = hashlib.sha256(str(Path(output).resolve()).encode()).hexdigest()[:20]
        return self.root / f"{key}.json"

    def note(self, entry: RunEntry) -> Path | None:
        """Write `entry` (call it while holding the output's lock); None if it could not be
        written: a run does not stop because `status` would not list it. A shard's run
        (`<output>.batchrun/shards/<k>/`) is not noted: its driver's run is the one listed."""
        parent = Path(entry.output).parent
        if parent.parent.name == "shards" and parent.parent.parent.name.endswith(".batchrun"):
            return None
        tmp: Path | None = None
        try:
            path = self.path_for(entry.output)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entry.to_json(), sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            log.debug("run not noted under batchrun's home: %s", e)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            return None
        return path

    @staticmethod
    def forget(path: Path | None) -> None:
        """Remove a file `note` wrote (call it before the output's lock is released)."""
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    def live(self) -> list[tuple[RunEntry, int]]:
        """Every noted run whose output's lock is held, with the pid holding it; oldest first."""
        out: list[tuple[RunEntry, int]] = []
        if not self.root.is_dir():
            return out
        known = {f.name for f in fields(RunEntry)}
        for path in sorted(self.root.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                entry = RunEntry(**{k: v for k, v in data.items() if k in known})
            except (OSError, ValueError, TypeError, AttributeError) as e:
                log.debug("skipping %s: %s", path, e)
                continue
            pid = RunState.live_pid(RunState.directory_for(entry.output))
            if pid is not None:
                out.append((entry, pid))
        out.sort(key=lambda item: item[0].started)
        return out
