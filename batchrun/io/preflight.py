"""Checks that the output location can be used, made before anything is sent or written.

A run writes four kinds of things next to `[output] path`: the results (a JSONL file or a
Parquet directory), the errors file (and its `.retry` and `.tmp` siblings), and the run-state
directory `<output>.batchrun/` with its `lock` and `state.sqlite` (plus SQLite's `-wal`,
`-shm` and `-journal` files). Without these checks a bad location shows up as an `OSError` deep
in a writer, some of them only after requests were sent and paid for.

The checks are pure: they look at the path (its components and length), ask the filesystem
for its limits (`os.pathconf` NAME_MAX and PATH_MAX of the nearest existing directory), and
look at the types of the entries that already exist. They create nothing, so a refused job
leaves no `<output>.batchrun/` behind.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import JobError
from batchrun.io.state import STATE_SUFFIX, RunState
from batchrun.job import Job

__all__ = ["check_output_location"]

SQLITE_MAX_PATH = 504
"""The longest database path SQLite opens: its unix VFS allows 512 bytes, and the journal
(`state.sqlite-journal`) adds 8 to the database's path."""

_STATE_SUFFIXES = (".jsonl" + STATE_SUFFIX, ".parquet" + STATE_SUFFIX)
_RESULTS = "the results"
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(slots=True, frozen=True)
class _Entry:
    """One path a run writes: what it is for, and whether it is a directory."""

    path: Path
    what: str
    is_dir: bool


def check_output_location(job: Job) -> None:
    """Refuse an `[output] path` whose results, errors file or run state cannot be written.

    Refused: a NUL byte in the path; a name longer than the filesystem's NAME_MAX or a path
    longer than its PATH_MAX (or than SQLite allows for the run state's database); a path under
    an existing file; a path inside a run-state directory (`out/r.jsonl.batchrun/x.jsonl`); an
    existing entry of the wrong type (JSONL results, the errors file, `lock` or `state.sqlite`
    that is not a regular file; a Parquet output or the run-state directory that is not a
    directory); a directory the run would write in that this process cannot write to.

    Raises:
        JobError: naming `[output] path`, the path at fault and what is wrong with it.
    """
    out = job.output
    prefix = f"{job.source}: [output] path {out.path!r}"
    if "\0" in out.path:
        raise JobError(f"{prefix} contains a NUL byte")
    if not out.path.strip():
        raise JobError(f"{prefix} is empty")
    state = Path(out.state_dir)
    db = RunState.database(state)
    entries = [
        _Entry(Path(out.path), _RESULTS, out.output_format == "parquet"),
        _Entry(Path(out.errors_path), "the errors file", False),
        _Entry(Path(out.errors_path + ".retry"), "the errors file's retry file", False),
        _Entry(Path(out.errors_path + ".tmp"), "the errors file's rewrite", False),
        _Entry(state, "the run-state directory", True),
        _Entry(RunState.lock_path(state), "the run state's lock", False),
        _Entry(db, "the run state's database", False),
        *(_Entry(Path(f"{db}{s}"), "the run state's database", False) for s in _SQLITE_SIDE_FILES),
    ]
    _check_not_in_state_dir(Path(out.path), prefix)
    for entry in entries:
        _check_entry(entry, prefix)
    db_len = len(os.fsencode(os.path.abspath(db)))
    if db_len > SQLITE_MAX_PATH:
        raise JobError(
            f"{prefix}: the run state's database ({db.parent.name}/{db.name}) would have a path "
            f"of {db_len} bytes; SQLite opens at most {SQLITE_MAX_PATH}: choose a shorter path"
        )


def _check_not_in_state_dir(output: Path, prefix: str) -> None:
    """A run-state directory belongs to its run: an output inside one is lost by `--restart`."""
    here = Path(os.path.abspath(output))
    for parent in here.parents:
        if parent.name.endswith(_STATE_SUFFIXES):
            if here.relative_to(parent).parts[0] == "shards":
                continue  # a shard's own output, which that run's plan owns (batchrun.shards)
            raise JobError(
                f"{prefix} is inside the run-state directory {str(parent)!r} of another output; "
                "choose a path outside it"
            )


def _check_entry(entry: _Entry, prefix: str) -> None:
    path = entry.path
    raw = os.fsencode(path)
    existing = _nearest_existing(path)
    name_max, path_max = _limits(existing)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            shown = part if len(part) <= 40 else part[:37] + "..."
            raise JobError(
                f"{prefix}: the path of {entry.what} has a name of {size} bytes ({shown!r}), "
                f"longer than this filesystem allows ({name_max})"
            )
    full = len(os.fsencode(os.path.abspath(path)))
    if full >= path_max or len(raw) >= path_max:
        raise JobError(
            f"{prefix}: the path of {entry.what} would be {full} bytes, longer than this "
            f"filesystem allows ({path_max - 1})"
        )
    if existing != path:
        if not stat.S_ISDIR(os.stat(existing).st_mode):
            raise JobError(
                f"{prefix}: {str(existing)!r} is a file, so {entry.what} cannot be created under it"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise JobError(
                f"{prefix}: cannot create {entry.what} ({str(path)!r}): no write permission "
                f"in {str(existing)!r}"
            )
        return
    mode = os.stat(path).st_mode
    is_dir = stat.S_ISDIR(mode)
    kind = "a directory" if is_dir else "a file" if stat.S_ISREG(mode) else "a special file"
    if entry.what == _RESULTS and entry.is_dir != is_dir:
        raise JobError(
            f"{prefix}: Parquet output must be a directory, found {kind}"
            if entry.is_dir
            else f"{prefix}: JSONL output must be a file, found {kind}"
        )
    if entry.is_dir and not is_dir:
        raise JobError(f"{prefix}: {entry.what} {str(path)!r} exists and is {kind}")
    if not entry.is_dir and not stat.S_ISREG(mode):
        raise JobError(f"{prefix}: {entry.what} {str(path)!r} exists and is {kind}")
    if not os.access(path, os.W_OK | (os.X_OK if entry.is_dir else 0)):
        raise JobError(f"{prefix}: {entry.what} {str(path)!r} is not writable")


def _nearest_existing(path: Path) -> Path:
    """`path` if it exists, else its nearest ancestor that does (which may be a file)."""
    current = path
    while True:
        try:
            os.stat(current)
            return current
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError:  # ENAMETOOLONG, ELOOP: go up until the filesystem answers
            pass
        parent = current.parent
        if parent == current:
            return current
        current = parent


def _limits(existing: Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX of the filesystem holding `existing` (Linux's defaults if unknown)."""
    directory = existing if existing.is_dir() else existing.parent
    try:
        name_max = os.pathconf(directory, "PC_NAME_MAX")
        path_max = os.pathconf(directory, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096
    return (name_max if name_max > 0 else 255), (path_max if path_max > 0 else 4096)
