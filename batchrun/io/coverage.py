"""Coverage: the bytes of each input file that hold committed rows, and the check a resume makes.

A resume must send only the rows never committed, and must refuse an input whose committed part
changed (results on disk would belong to other rows). Each input file holding committed rows has
a *cover* in the run state (`FileCover`): the extent [0, extent) holding all its committed rows,
its size and mtime when it was hashed, and a hash of every 64 KiB block of the extent (the last
one partial). The
ledger advances the covers in each commit's own transaction as the highest committed row moves,
hashing only the new bytes (and the last, partial block again), so a run never hashes its whole
input up front and a resume hashes only what it must verify.

A file's committed part, by format:

- plain JSONL: the bytes up to the end of its highest committed row; rows appended after it
  extend the run;
- CSV and gzipped JSONL (rows carry no raw byte offset): the whole file as it was when its first
  row was committed; rows appended to a CSV file, or gzip members appended to a ``.gz``, extend
  the run;
- Parquet: the whole file, which must stay as it was (its footer is at the end: new rows go in a
  new file after it).

Every covered file before the one holding the highest committed row is covered whole and must
keep its size: rows added there would move every later row. Files after the covered ones are
free: a new glob file sorting after them, or rows added to the last, extend the run.

A resume (`Coverage.check`) refuses, naming the file: a covered file gone, or a new file sorting
before one; a covered file shorter than its extent, or (but the last) longer; a block of the
extent that hashes differently (named by its bytes and first line); a committed last line
without a newline that was continued. A file whose size and mtime are as recorded is not hashed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from batchrun.errors import RunStateError
from batchrun.io.readers import InputReader, Position
from batchrun.io.state import CoverUpdate, FileCover

__all__ = ["BLOCK", "Coverage"]

log = logging.getLogger(__name__)

BLOCK = 64 * 1024
"""Bytes per hashed block: a changed committed part is named to within one block."""

_DIGEST = 16


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:_DIGEST]


class Coverage:
    """The covers of one run's input files: advanced by commits, checked by a resume.

    Args:
        reader: the job's input (its files in their sorted order).
        covers: what the run state recorded (`RunState.covers`), files 0..K-1.
    """

    def __init__(self, reader: InputReader, covers: list[FileCover]) -> None:
        self._files = reader.files
        self._relpaths = reader.relpaths
        self._format = reader.format
        self.covers = covers
        self._fds: dict[int, int] = {}

    @property
    def count(self) -> int:
        """How many files (the first ones) hold committed rows."""
        return len(self.covers)

    def _precise(self, index: int) -> bool:
        """Whether rows of file `index` carry raw byte offsets (plain JSONL)."""
        return self._format == "jsonl" and not self._files[index].name.lower().endswith(".gz")

    # -- during a run ------------------------------------------------------------------------
    def advance(self, pos: Position, next_pos: Position | None) -> list[CoverUpdate]:
        """The covers after a commit whose highest committed row is at `pos`.

        Args:
            pos: the position of the highest committed row.
            next_pos: the position of the row read after it, if any (its start ends the row).

        Returns:
            the covers that moved, with their new block hashes; apply them with `apply` once
            the state has recorded them.
        """
        last = pos[0]
        updates: list[CoverUpdate] = []
        for index in range(max(0, len(self.covers) - 1), last + 1):
            update = self._advance_file(index, pos, next_pos, whole=index < last)
            if update is not None:
                updates.append(update)
        return updates

    def _advance_file(
        self, index: int, pos: Position, next_pos: Position | None, *, whole: bool
    ) -> CoverUpdate | None:
        old = self.covers[index] if index < len(self.covers) else None
        try:
            fd = self._fd(index)
            st = os.fstat(fd)  # before hashing: a later change moves the mtime past this one
            if whole or not self._precise(index):
                target = st.st_size
            elif next_pos is not None and next_pos[0] == index:
                target = next_pos[2]
            else:
                target = _line_end(fd, pos[2])
            start = old.extent if old is not None else 0
            if old is not None and target <= start:
                return None
            extent, hashes, tail = _hash_blocks(fd, start, target)
        except OSError as e:
            log.warning("%s: cannot hash the committed rows (%s)", self._files[index], e)
            return None
        if extent < target:
            log.warning("%s: shorter than the rows read from it", self._files[index])
        size, mtime = st.st_size, st.st_mtime_ns
        if old is not None and old.extent and (old.size, old.mtime_ns) != (size, mtime):
            # changed since its last hash: keep the old stat, so a resume hashes it all again
            size, mtime = old.size, old.mtime_ns
        cover = FileCover(
            index=index,
            path=self._relpaths[index],
            size=size,
            mtime_ns=mtime,
            extent=extent,
            tail=tail,
        )
        return CoverUpdate(cover=cover, first_block=start // BLOCK, hashes=hashes)

    def apply(self, updates: Sequence[CoverUpdate]) -> None:
        """Take the covers the state has just recorded."""
        for update in updates:
            c = update.cover
            if c.index < len(self.covers):
                self.covers[c.index] = c
            else:
                self.covers.append(c)

    def _fd(self, index: int) -> int:
        fd = self._fds.get(index)
        if fd is None:
            fd = os.open(self._files[index], os.O_RDONLY)
            self._fds[index] = fd
        return fd

    def close(self) -> None:
        """Close the input files opened for hashing."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    # -- on resume ---------------------------------------------------------------------------
    def check(self, block_hashes: Callable[[int], list[bytes]], output: str) -> list[CoverUpdate]:
        """Refuse an input whose committed part changed (see the module docstring).

        Args:
            block_hashes: the recorded hashes of a file's blocks (`RunState.block_hashes`).
            output: the output path, named in messages.

        Returns:
            the covers of files found unchanged under a new size or mtime (touched, copied
            again, appended to), to record so the next resume skips their hash.

        Raises:
            RunStateError: the committed part changed; the message names the file and where.
        """
        refresh: list[CoverUpdate] = []
        relpaths = self._relpaths
        last = len(self.covers) - 1
        for c in self.covers:
            i = c.index
            if i >= len(relpaths) or relpaths[i] != c.path:
                if c.path not in relpaths:
                    self._refuse(output, f"input file {c.path} is gone; it holds committed rows")
                self._refuse(
                    output,
                    f"input file {relpaths[i]} is new and sorts before {c.path}, which holds "
                    "committed rows (every later row would move); name new files so they sort "
                    "after the committed ones",
                )
            path = self._files[i]
            try:
                st = os.stat(path)
            except OSError as e:
                self._refuse(output, f"input file {c.path}: {e.strerror}")
            size = st.st_size
            if size < c.extent:
                self._refuse(
                    output,
                    f"input file {c.path} shrank to {size} bytes; its committed rows end at "
                    f"byte {c.extent}",
                )
            if size == c.size and st.st_mtime_ns == c.mtime_ns:
                continue
            if self._format == "parquet" and size != c.extent:
                self._refuse(
                    output,
                    f"input file {c.path} changed ({c.extent} -> {size} bytes); a Parquet file "
                    "with committed rows must stay as it was (put new rows in a new file that "
                    "sorts after it)",
                )
            if i < last and size != c.extent:
                self._refuse(
                    output,
                    f"input file {c.path} grew from {c.extent} to {size} bytes, and it sorts "
                    f"before {self.covers[last].path}, which holds committed rows too (every "
                    "later row would move); add rows at the end of the last file or in a new "
                    "file that sorts after it",
                )
            self._verify(path, c, block_hashes(i), size, output)
            cover = FileCover(
                index=i,
                path=c.path,
                size=size,
                mtime_ns=st.st_mtime_ns,
                extent=c.extent,
                tail=c.tail,
            )
            refresh.append(CoverUpdate(cover=cover, first_block=0, hashes=()))
        return refresh

    def _verify(
        self, path: Path, c: FileCover, hashes: list[bytes], size: int, output: str
    ) -> None:
        whole = c.extent // BLOCK
        if len(hashes) < whole:
            self._refuse(output, f"input file {c.path}: the run state lacks its block hashes")
        expected = hashes[:whole] + ([c.tail] if c.extent % BLOCK else [])
        with open(path, "rb", buffering=0) as f:
            fd = f.fileno()
            for k, digest in enumerate(expected):
                lo = k * BLOCK
                hi = min(lo + BLOCK, c.extent)
                if _digest(os.pread(fd, hi - lo, lo)) != digest:
                    line = _count_newlines(fd, lo) + 1
                    self._refuse(
                        output,
                        f"input file {c.path} changed in its committed part: bytes {lo}-{hi - 1} "
                        f"differ from what was committed (from line {line})",
                    )
            if (
                size > c.extent
                and c.extent > 0
                and self._format != "parquet"
                and not path.name.lower().endswith(".gz")
                and os.pread(fd, 1, c.extent - 1) != b"\n"
                and os.pread(fd, 1, c.extent) not in (b"\n", b"\r")
            ):
                line = _count_newlines(fd, c.extent - 1) + 1
                self._refuse(
                    output,
                    f"input file {c.path}: its last committed line (line {line}, ending at byte "
                    f"{c.extent}) had no newline and was continued",
                )

    @staticmethod
    def _refuse(output: str, what: str) -> None:
        raise RunStateError(
            f"{output}: the committed part of the input changed: {what}. "
            "Run again with --restart to start over (discards the results so far)."
        )


def _line_end(fd: int, start: int) -> int:
    """The offset just past the line starting at `start` (its newline, or the end of file)."""
    offset = start
    while chunk := os.pread(fd, BLOCK, offset):
        i = chunk.find(b"\n")
        if i >= 0:
            return offset + i + 1
        offset += len(chunk)
    return offset


def _hash_blocks(fd: int, start: int, end: int) -> tuple[int, tuple[bytes, ...], bytes]:
    """Hashes of the whole blocks in [start's block, end), the hash of the partial last one
    (b"" if none), and how far the file really reached (less than `end` if it is shorter
    now)."""
    hashes: list[bytes] = []
    lo = (start // BLOCK) * BLOCK
    while lo < end:
        want = min(BLOCK, end - lo)
        data = os.pread(fd, want, lo)
        if len(data) < BLOCK:
            return lo + len(data), tuple(hashes), _digest(data) if data else b""
        hashes.append(_digest(data))
        lo += want
    return end, tuple(hashes), b""


def _count_newlines(fd: int, end: int) -> int:
    count = 0
    offset = 0
    while offset < end:
        chunk = os.pread(fd, min(1 << 20, end - offset), offset)
        if not chunk:
            break
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count
