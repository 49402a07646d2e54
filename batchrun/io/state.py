"""The run state next to the output (`<output>.batchrun/`): the truth about what is committed.

One SQLite database in WAL mode (`state.sqlite`, `synchronous=FULL`) holds:

- `meta`: the fingerprint (input files and the job fields that change results), the committed
  low watermark (every row below it is committed) with a position to seek to, the committed
  output offsets (JSONL bytes / Parquet part count, errors-file bytes), and counters;
- `done`: the committed rows above the watermark (few: bounded by the dispatch window);
- `ids`: the on-disk index of `id_field` values (first position wins), for `duplicate_id`;
- `retry_done`: rows of the errors file settled by an interrupted `--retry-errors`;
- `input_blocks`, and `cover.<file index>` keys in `meta`: for each input file holding
  committed rows, the committed byte extent, the size and mtime when it was last hashed, the
  hash of each whole 64 KiB block of the extent and of its partial last block (see
  `batchrun.io.coverage`), written in the commit's transaction (a commit rewrites the `meta`
  entry; a block row only when a block fills, so the write-ahead log grows no faster).

Beside it, `last_run.json` keeps the last run's summary (for `batchrun plan` and `status`).
This module is the only code that knows the directory's layout: reports read it through
`RunState.peek`, `RunState.live_pid` and `RunState.last_run`, without taking the lock.

A commit is one transaction, made after the outputs were flushed and fsynced, so the outputs are
never behind the state; on resume the outputs are cut back to the state. A transaction that
fails (disk full, I/O error) is rolled back explicitly, so the state stays at the last good
commit and the next one starts a fresh transaction. A `lock` file held with `flock` keeps a
second live run off the same output; the kernel drops it when the process dies.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import OutputWriteError, RunLockedError, RunStateError
from batchrun.io.writers import write_atomic

__all__ = [
    "Committed",
    "CoverUpdate",
    "FileCover",
    "RunState",
    "StateView",
    "clear",
    "describe_changes",
    "fingerprint_files",
    "lock",
    "unlock",
]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS done (seq INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retry_done (seq INTEGER PRIMARY KEY, ok INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS input_blocks (
    idx INTEGER NOT NULL, block INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (idx, block)
) WITHOUT ROWID;
"""
_HASH_SPAN = 64 * 1024
_LOOKUP_CHUNK = 500  # ids per SELECT ... IN (...), well under SQLite's variable limit
STATE_VERSION = 1
STATE_SUFFIX = ".batchrun"
"""The run state of output `x` lives in the directory `x.batchrun`."""
_DB = "state.sqlite"
_LOCK = "lock"
_LAST_RUN = "last_run.json"
_ORDER_LOG = "order.seqs"
_COVER = "cover."
_INDEXED_TOP = "indexed_top"
"""`meta` key: the highest row in the id index (written with its entries)."""
"""`meta` key prefix of an input file's cover (then its index)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Committed:
    """What the state says is committed: where outputs end and where reading resumes.

    Frozen: a commit builds a new one (`dataclasses.replace`), and `RunState` swaps it in only
    once its transaction has committed, so `RunState.committed` is always the last good commit.

    Attributes:
        watermark: every row with a lower sequence number is committed.
        anchor_seq: the sequence number of the row at `anchor_pos` (<= watermark).
        anchor_pos: a reader `Position` to seek to; None means the start of the input.
        done_above: committed rows at or above the watermark.
        results_offset: committed bytes of a JSONL results file.
        parts: the highest committed Parquet part number.
        live_parts: the committed Parquet part numbers (None: 1..parts).
        errors_offset: committed bytes of the errors file.
        results_count / errors_count: committed rows in each.
        retry_offset: committed bytes of the retry file during `--retry-errors`, or None.
        swap_size: the size of the rewritten errors file while it is being swapped in, or None.
        ordered: the outputs are in input order (`[output] order = "input"`); a commit that
            adds rows clears it.
        reorder_sizes: while an input-order rewrite is swapped in, the sizes of its temporary
            results file (-1: none, or Parquet, whose new part the state lists already), errors
            file (-1: none) and order side file; None otherwise.
    """

    watermark: int = 0
    anchor_seq: int = 0
    anchor_pos: tuple[int, int, int, int] | None = None
    done_above: frozenset[int] = frozenset()
    results_offset: int = 0
    parts: int = 0
    live_parts: tuple[int, ...] | None = None
    errors_offset: int = 0
    results_count: int = 0
    errors_count: int = 0
    retry_offset: int | None = None
    swap_size: int | None = None
    ordered: bool = False
    reorder_sizes: tuple[int, int, int] | None = None

    def is_done(self, seq: int) -> bool:
        """Whether row `seq` is committed."""
        return seq < self.watermark or seq in self.done_above

    def meta(self) -> dict[str, Any]:
        """The scalar fields, as stored in `meta`."""
        return {
            "watermark": self.watermark,
            "anchor_seq": self.anchor_seq,
            "anchor_pos": list(self.anchor_pos) if self.anchor_pos is not None else None,
            "results_offset": self.results_offset,
            "parts": self.parts,
            "live_parts": list(self.live_parts) if self.live_parts is not None else None,
            "errors_offset": self.errors_offset,
            "results_count": self.results_count,
            "errors_count": self.errors_count,
            "retry_offset": self.retry_offset,
            "swap_size": self.swap_size,
            "ordered": self.ordered,
            "reorder_sizes": list(self.reorder_sizes) if self.reorder_sizes is not None else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FileCover:
    """The committed part of one input file, as the run state records it.

    Attributes:
        index: the file's place in the input's sorted file list.
        path: its path relative to the input's root (as in glob row ids).
        size / mtime_ns: what `stat` said when it was last hashed or checked; a resume whose
            `stat` says the same skips the hash.
        extent: bytes [0, extent) hold every committed row of the file (and are hashed).
        tail: the hash of the extent's partial last block (b"" when it ends on a block).
    """

    index: int
    path: str
    size: int
    mtime_ns: int
    extent: int
    tail: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class CoverUpdate:
    """A file's new cover and the hashes of its whole blocks from `first_block` on."""

    cover: FileCover
    first_block: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateView:
    """A read-only look at a run state (`RunState.peek`).

    Attributes:
        committed: what it says is committed.
        created_at: when it was made (ISO time), if it says.
    """

    committed: Committed
    created_at: str | None


class RunState:
    """The SQLite run state of one output, held under an exclusive lock.

    Use `RunState.open`; call `close` (or use it as a context manager) when done.
    """

    def __init__(self, directory: Path, db: sqlite3.Connection, lock_fd: int) -> None:
        self.directory = directory
        self._db = db
        self._lock_fd = lock_fd
        self._in_tx = False
        self.committed = self._load()
        self.created = not bool(self._get("fingerprint"))
        self.stored_fingerprint: dict[str, Any] | None = None
        """The fingerprint the state was made with (set by `open`)."""
        indexed = self._get(_INDEXED_TOP)
        self._indexed_top = int(indexed) if indexed is not None else None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        fingerprint: dict[str, Any] | None,
        output: str,
        lock_fd: int | None = None,
    ) -> RunState:
        """Lock the run state and check it against this job's fingerprint.

        A missing state is created with `fingerprint`. To start over, `clear` it first under
        its lock and pass that lock as `lock_fd`.

        Args:
            directory: the state directory, `<output>.batchrun`.
            fingerprint: `fingerprint_files(...)` plus the job's `fingerprint_fields()`;
                None opens the state as it is, without checking (to report what it holds).
            output: the output path, named in messages.
            lock_fd: the state's lock, already taken with `lock`; the state releases it.

        Raises:
            RunLockedError: another live run holds the lock; the message names its pid.
            RunStateError: the state belongs to a different input or job (the message names
                what changed), or it cannot be read.
            OutputWriteError: a new state cannot be written (disk full, I/O error).
        """
        if lock_fd is None:
            directory.mkdir(parents=True, exist_ok=True)
            lock_fd = lock(directory, output)
        try:
            db = _connect(directory / _DB)
            state = cls(directory, db, lock_fd)
        except sqlite3.Error as e:
            unlock(lock_fd)
            if _is_write_failure(e):
                raise _write_error(directory, "cannot write the run state", e) from e
            raise RunStateError(f"{directory}: cannot read the run state: {e}") from e
        except BaseException:
            unlock(lock_fd)
            raise
        stored = state._get("fingerprint")
        state.stored_fingerprint = stored
        if fingerprint is None:
            return state
        if stored is None:
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            try:
                state._set_many(
                    {"fingerprint": fingerprint, "version": STATE_VERSION, "created_at": now}
                )
                state._commit_tx()
            except sqlite3.Error as e:
                state._abort()
                state.close()
                raise _write_error(directory, "cannot write the run state", e) from e
            return state
        changes = describe_changes(stored, fingerprint)
        if changes:
            state.close()
            raise RunStateError(
                f"{output}: the run state was made for a different "
                f"{'input' if any(c.startswith('input') for c in changes) else 'job'}: "
                + "; ".join(changes)
                + ". Run again with --restart to start over (discards the results so far)."
            )
        return state

    @staticmethod
    def directory_for(output: str) -> Path:
        """The run state directory of the output at `output`."""
        return Path(output + STATE_SUFFIX)

    @staticmethod
    def database(directory: Path) -> Path:
        """The SQLite database of the run state in `directory` (SQLite adds `-wal`, `-shm`
        and `-journal` beside it)."""
        return directory / _DB

    @staticmethod
    def order_log(directory: Path) -> Path:
        """The results' input row numbers in output order (`[output] order = "input"`)."""
        return directory / _ORDER_LOG

    @staticmethod
    def lock_path(directory: Path) -> Path:
        """The lock file of the run state in `directory`."""
        return directory / _LOCK

    @staticmethod
    def exists(directory: Path) -> bool:
        """Whether `directory` holds a run state (its database)."""
        return (directory / _DB).exists()

    @staticmethod
    def peek(directory: Path) -> StateView | None:
        """What a run state holds, read-only and without its lock (for reports, or a caller
        that holds the lock); None when there is none or it cannot be read."""
        path = directory / _DB
        if not path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
                created_at = str(orjson.loads(row[0])) if row else None
                return StateView(committed=_load(db), created_at=created_at)
            finally:
                db.close()
        except (sqlite3.Error, orjson.JSONDecodeError) as e:
            log.warning("cannot read %s: %s", path, e)
            return None

    @staticmethod
    def live_pid(directory: Path) -> int | None:
        """The pid of the live run holding the state's lock (-1 if it wrote none), or None."""
        try:
            fd = os.open(directory / _LOCK, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            return None
        finally:
            os.close(fd)

    @staticmethod
    def remember_run(directory: Path, summary: dict[str, Any]) -> None:
        """Keep a run's summary (with the time it finished) in `last_run.json`, for the next
        `batchrun plan` and `status`; a run state that is gone, or a full disk, skips it."""
        if not directory.is_dir():
            return
        data = dict(summary)
        data["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        tmp = directory / f".{_LAST_RUN}.{os.getpid()}.tmp"
        try:
            write_atomic(directory / _LAST_RUN, json.dumps(data, sort_keys=True).encode(), tmp=tmp)
        except OSError as e:
            # after an exit 7 the run's own error line already says the disk is full
            level = logging.DEBUG if summary.get("exit_code") == 7 else logging.WARNING
            log.log(level, "cannot write %s: %s", directory / _LAST_RUN, e)

    @staticmethod
    def last_run(directory: Path) -> dict[str, Any] | None:
        """The summary `remember_run` kept, or None."""
        try:
            data = json.loads((directory / _LAST_RUN).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def created_at(self) -> str | None:
        """When the state was made (ISO time)."""
        value = self._get("created_at")
        return str(value) if value is not None else None

    def first_seqs(self, rows: Sequence[tuple[Any, int]]) -> list[int | None]:
        """Record each (id value, seq) in the id index, in seq order; for each, the earlier row
        holding the same id (a duplicate), else None.

        Indexing is idempotent: the first position of each id depends on the input alone, so
        entries made for rows that were never committed stay true after a crash, as long as
        the input beyond its committed part is as it was (else see `forget_ids_above`). One
        insert per
        chunk of rows, and a lookup only when the insert met ids already indexed (a duplicate,
        or rows indexed by an interrupted run), keeps the index off the per-row hot path. The
        index is written in the transaction of the next commit.

        Raises:
            sqlite3.Error: the index could not be written (the transaction is rolled back).
        """
        dumps = orjson.dumps
        keys = [dumps(value, default=str) for value, _ in rows]
        firsts: dict[bytes, int] = {}
        if not rows:
            return []
        try:
            self._begin()
            top = rows[-1][1]
            if self._indexed_top is None or top > self._indexed_top:
                self._set_many({_INDEXED_TOP: top})
                self._indexed_top = top
            inserted = self._db.executemany(
                "INSERT OR IGNORE INTO ids (id, seq) VALUES (?, ?)",
                zip(keys, [seq for _, seq in rows], strict=True),
            ).rowcount
            if inserted == len(keys):  # every id is new: each row is its id's first
                return [None] * len(keys)
            for i in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[i : i + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                firsts.update(
                    self._db.execute(f"SELECT id, seq FROM ids WHERE id IN ({marks})", chunk)
                )
        except sqlite3.Error:
            self._abort()
            raise
        return [
            None if firsts[key] >= seq else int(firsts[key])
            for key, (_, seq) in zip(keys, rows, strict=True)
        ]

    def forget_ids_above(self, top: int) -> None:
        """Drop the id index entries of rows after `top` (the highest committed row): the input
        after the committed part may have changed since an interrupted run indexed them. Costs
        a scan of the index only when such entries exist.

        Raises:
            sqlite3.Error: the transaction failed and was rolled back.
        """
        if self._indexed_top is None or self._indexed_top <= top:
            return
        try:
            self._begin()
            self._db.execute("DELETE FROM ids WHERE seq > ?", (top,))
            self._set_many({_INDEXED_TOP: top})
            self._commit_tx()
        except sqlite3.Error:
            self._abort()
            raise
        self._indexed_top = top

    def commit(
        self,
        committed: Committed,
        *,
        retry_settled: Iterable[tuple[int, bool]] = (),
        covers: Sequence[CoverUpdate] = (),
    ) -> None:
        """Record one commit in one transaction (the outputs were fsynced before); only then
        does `committed` become `self.committed`.

        Args:
            committed: the new committed offsets, watermark, rows above it, anchor, counters.
            retry_settled: (seq, succeeded) for errors-file rows settled by `--retry-errors`.
            covers: input files whose committed extent moved, with their new block hashes.

        Raises:
            sqlite3.Error: the transaction failed and was rolled back; `self.committed` is
                still the last good commit.
        """
        added = committed.done_above - self.committed.done_above
        try:
            self._begin()
            db = self._db
            if committed.watermark != self.committed.watermark:
                db.execute("DELETE FROM done WHERE seq < ?", (committed.watermark,))
            db.executemany("INSERT OR IGNORE INTO done (seq) VALUES (?)", ((s,) for s in added))
            db.executemany(
                "INSERT OR REPLACE INTO retry_done (seq, ok) VALUES (?, ?)",
                ((s, int(ok)) for s, ok in retry_settled),
            )
            self._write_covers(covers)
            self._set_many(committed.meta())
            self._commit_tx()
        except sqlite3.Error:
            self._abort()
            raise
        self.committed = committed

    def covers(self) -> list[FileCover]:
        """The recorded input files holding committed rows, in input order."""
        rows = self._db.execute(
            "SELECT key, value FROM meta WHERE key LIKE ?", (_COVER + "%",)
        ).fetchall()
        covers = []
        for key, value in rows:
            path, size, mtime_ns, extent, tail = orjson.loads(value)
            covers.append(
                FileCover(
                    index=int(key[len(_COVER) :]),
                    path=str(path),
                    size=int(size),
                    mtime_ns=int(mtime_ns),
                    extent=int(extent),
                    tail=bytes.fromhex(tail),
                )
            )
        return sorted(covers, key=lambda c: c.index)

    def block_hashes(self, index: int) -> list[bytes]:
        """The block hashes of input file `index`, block 0 first."""
        rows = self._db.execute(
            "SELECT hash FROM input_blocks WHERE idx = ? ORDER BY block", (index,)
        ).fetchall()
        return [bytes(h) for (h,) in rows]

    def update_covers(self, covers: Sequence[CoverUpdate]) -> None:
        """Record covers outside a commit (a resume that found a file touched but unchanged
        notes its new mtime, so the next resume skips the hash again).

        Raises:
            sqlite3.Error: the transaction failed and was rolled back.
        """
        if not covers:
            return
        try:
            self._begin()
            self._write_covers(covers)
            self._commit_tx()
        except sqlite3.Error:
            self._abort()
            raise

    def _write_covers(self, covers: Sequence[CoverUpdate]) -> None:
        db = self._db
        for update in covers:
            c = update.cover
            self._set_many(
                {f"{_COVER}{c.index}": [c.path, c.size, c.mtime_ns, c.extent, c.tail.hex()]}
            )
            if update.hashes:
                db.executemany(
                    "INSERT OR REPLACE INTO input_blocks (idx, block, hash) VALUES (?, ?, ?)",
                    ((c.index, update.first_block + k, h) for k, h in enumerate(update.hashes)),
                )

    def retry_settled(self) -> dict[int, bool]:
        """Errors-file rows settled by an interrupted `--retry-errors` (seq -> succeeded)."""
        rows = self._db.execute("SELECT seq, ok FROM retry_done").fetchall()
        return {int(s): bool(ok) for s, ok in rows}

    def clear_retry(self, committed: Committed) -> None:
        """Forget a finished `--retry-errors` and store `committed` in the same transaction.

        Raises:
            sqlite3.Error: the transaction failed and was rolled back.
        """
        try:
            self._begin()
            self._db.execute("DELETE FROM retry_done")
            self._set_many(committed.meta())
            self._commit_tx()
        except sqlite3.Error:
            self._abort()
            raise
        self.committed = committed

    def reload(self) -> Committed:
        """Read the committed state again from the database (after a failed commit).

        Raises:
            sqlite3.Error: it cannot be read.
        """
        self.committed = self._load()
        return self.committed

    def close(self) -> None:
        """Commit an open id-index transaction, close the database and release the lock.

        The id index is true whether or not its rows were committed; if it cannot be written
        now (disk full), it is rolled back and the next run indexes those rows again.
        """
        try:
            if self._in_tx:
                try:
                    self._commit_tx()
                except sqlite3.Error as e:
                    log.info("%s: id index not saved (%s); rebuilt next run", self.directory, e)
                    self._abort()
            self._db.close()
        finally:
            unlock(self._lock_fd)

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def _commit_tx(self) -> None:
        self._db.execute("COMMIT")
        self._in_tx = False

    def _abort(self) -> None:
        """Roll back after a failed statement or COMMIT; SQLite may have done so already."""
        self._in_tx = False
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as e:
                log.warning("%s: rollback failed: %s", self.directory, e)

    def _get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def _set_many(self, values: dict[str, Any]) -> None:
        self._begin()
        self._db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            ((k, orjson.dumps(v).decode()) for k, v in values.items()),
        )

    def _load(self) -> Committed:
        return _load(self._db)


def _load(db: sqlite3.Connection) -> Committed:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    fields: dict[str, Any] = {}
    for key in Committed.__dataclass_fields__:
        if key in meta and key != "done_above":
            value = orjson.loads(meta[key])
            if key in ("anchor_pos", "live_parts", "reorder_sizes") and value is not None:
                value = tuple(value)
            fields[key] = value
    done = frozenset(int(s) for (s,) in db.execute("SELECT seq FROM done"))
    return Committed(done_above=done, **fields)


def clear(directory: Path) -> None:
    """Delete everything in a run state directory but its lock (for `--restart`).

    The caller holds the lock (`lock`), so no other run can start on the output meanwhile.
    """
    if not directory.exists():
        return
    for entry in directory.iterdir():
        if entry.name == _LOCK:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def fingerprint_files(files: list[Path], relpaths: list[str]) -> list[dict[str, Any]]:
    """Path, size, mtime and a hash of the head and tail of each input file: how states made
    before content checks (`batchrun.io.coverage`) fingerprinted the input; such a state is
    compared with it once, then gets covers."""
    out = []
    for path, rel in zip(files, relpaths, strict=True):
        st = path.stat()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(_HASH_SPAN))
            if st.st_size > 2 * _HASH_SPAN:
                f.seek(st.st_size - _HASH_SPAN)
            h.update(f.read(_HASH_SPAN))
        out.append(
            {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": h.hexdigest()}
        )
    return out


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints; empty when they match."""
    changes: list[str] = []
    # Input files are checked on content by `batchrun.io.coverage`; a fingerprint lists them
    # only in states made before that, and both sides must list them to be compared here.
    both = "files" in old and "files" in new
    old_files = {f["path"]: f for f in old.get("files", [])} if both else {}
    new_files = {f["path"]: f for f in new.get("files", [])} if both else {}
    for path in sorted(old_files.keys() - new_files.keys()):
        changes.append(f"input file {path} is gone")
    for path in sorted(new_files.keys() - old_files.keys()):
        changes.append(f"input file {path} is new")
    for path in sorted(old_files.keys() & new_files.keys()):
        a, b = old_files[path], new_files[path]
        if a["size"] != b["size"]:
            changes.append(f"input file {path} changed size ({a['size']} -> {b['size']} bytes)")
        elif a["hash"] != b["hash"]:
            changes.append(f"input file {path} changed content")
    if old.get("input") != new.get("input"):
        changes.append(f"input path changed ({old.get('input')!r} -> {new.get('input')!r})")
    old_job, new_job = old.get("job", {}), new.get("job", {})
    # `limit` only says how far to read: a raised one extends the run (see the ledger)
    for key in sorted((set(old_job) | set(new_job)) - {"limit"}):
        if old_job.get(key) != new_job.get(key):
            changes.append(f"job {key} changed ({old_job.get(key)!r} -> {new_job.get(key)!r})")
    return changes


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


def _is_write_failure(e: sqlite3.Error) -> bool:
    """Whether SQLite failed to write (disk full, I/O error), not to read a bad database."""
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def _write_error(directory: Path, what: str, e: BaseException) -> OutputWriteError:
    path = directory / _DB
    return OutputWriteError(f"{path}: {what}: {e}; free space and run again", path=str(path))


def lock(directory: Path, output: str) -> int:
    """Take the exclusive lock of a run state directory (it must exist); return its fd.

    Raises:
        RunLockedError: another live run holds it; the message names its pid.
    """
    path = directory / _LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise RunLockedError(
            f"{output}: another run is live on this output (pid {pid}); "
            "wait for it to end or stop it first"
        ) from e
    try:  # the pid is for the message above; a full disk must not stop the run here
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        log.info("%s: pid not written (%s)", path, e)
    return fd


def unlock(fd: int) -> None:
    """Release a lock taken with `lock`."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
