"""The shard plan: the input cut into shards once, before anything is spent, kept with the output.

Each shard is one file of the input and a start position in it, with the sequence number of its
first row over the whole input (from one counting pass) and its number of rows:

- JSONL (plain): byte ranges cut at line starts, about `total bytes / (4 × W)` each;
- Parquet: ranges of whole row groups, about `total rows / (4 × W)` rows each;
- CSV and gzipped JSONL: whole files (they cannot be entered in the middle); a single such
  file is one shard, which the driver says in a warning.

A `ShardReader` reads one shard with the ids an unsharded run gives (a row's id is its position
over the whole input, or `relpath:row` in a glob, or its `id_field`), numbering its rows from 0
for the shard's own ledger. The plan is stored as `<output>.batchrun/shards.json`; only the
driver writes it (whole, through `write_atomic`), marking the shards that are done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import RunStateError
from batchrun.io.readers import InputReader, Position, Row, _is_gzip, _open_binary
from batchrun.io.writers import write_atomic

__all__ = ["PLAN_FILE", "Shard", "ShardPlan", "ShardReader", "make_plan"]

log = logging.getLogger(__name__)

PLAN_FILE = "shards.json"
SHARDS_PER_WORKER = 4
"""At least this many shards per worker where the input allows, so the tail is short."""
_VERSION = 1


@dataclass(slots=True, kw_only=True, frozen=True)
class Shard:
    """One shard: rows `first_seq .. first_seq + rows` of the input, all in file `file`.

    Attributes:
        index: the shard's number (its outputs are merged in this order).
        file: the index of its file in the input's sorted file list.
        start: the reader `Position` of its first row.
        first_seq: that row's 0-based position over the whole input.
        rows: its number of rows; None: to the end of the file (a damaged gzip or CSV file,
            whose row count depends on where the damage is).
        done: the shard's rows are all committed in its own outputs.
    """

    index: int
    file: int
    start: Position
    first_seq: int
    rows: int | None
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"] = list(self.start)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shard:
        start = tuple(int(x) for x in data["start"])
        return cls(
            index=int(data["index"]),
            file=int(data["file"]),
            start=(start[0], start[1], start[2], start[3]),
            first_seq=int(data["first_seq"]),
            rows=None if data["rows"] is None else int(data["rows"]),
            done=bool(data.get("done", False)),
        )


@dataclass(slots=True, kw_only=True)
class ShardPlan:
    """The shards of one output's input, in order, and whether their outputs were merged.

    Attributes:
        input: the job's `[input] path` the plan was made for.
        files: the input's files (paths relative to the glob root) in their sorted order.
        workers: the `--workers` the plan was made for (later runs may use any number).
        shards: the shards, in input order.
        merged: the shards' outputs were merged into the job's output.
    """

    input: str
    files: list[str]
    workers: int
    shards: list[Shard] = field(default_factory=list)
    merged: bool = False

    @property
    def remaining(self) -> list[Shard]:
        """The shards not done, in order."""
        return [s for s in self.shards if not s.done]

    def mark_done(self, index: int) -> None:
        """Mark shard `index` done (call `save` to keep it)."""
        self.shards[index] = replace(self.shards[index], done=True)

    @staticmethod
    def path_for(state_dir: Path) -> Path:
        return state_dir / PLAN_FILE

    def save(self, state_dir: Path) -> None:
        """Write the plan whole (temporary file, fsync, rename).

        Raises:
            OSError: it could not be written; the previous plan stays.
        """
        data = {
            "version": _VERSION,
            "input": self.input,
            "files": self.files,
            "workers": self.workers,
            "merged": self.merged,
            "shards": [s.to_json() for s in self.shards],
        }
        state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path_for(state_dir), orjson.dumps(data, option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, state_dir: Path) -> ShardPlan | None:
        """The plan kept in `state_dir`, or None when there is none.

        Raises:
            RunStateError: the plan file cannot be read.
        """
        path = cls.path_for(state_dir)
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as e:
            raise RunStateError(f"{path}: cannot read the shard plan: {e}") from e
        try:
            return cls(
                input=str(data["input"]),
                files=[str(f) for f in data["files"]],
                workers=int(data["workers"]),
                merged=bool(data.get("merged", False)),
                shards=[Shard.from_json(s) for s in data["shards"]],
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise RunStateError(f"{path}: not a shard plan ({e}); --restart starts over") from e


def make_plan(reader: InputReader, workers: int, *, input_path: str) -> ShardPlan:
    """Cut the input into at least `SHARDS_PER_WORKER × workers` shards where it allows.

    Deterministic: the same input and `workers` give the same plan. The reader's `limit` is
    honoured (the plan covers the first `limit` rows).
    """
    target = max(1, SHARDS_PER_WORKER * workers)
    fmt = reader.format
    limit = reader.limit
    sizes = [f.stat().st_size for f in reader.files]
    shards: list[Shard] = []
    seq = 0
    whole_files = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        metas = [pq.ParquetFile(f).metadata for f in reader.files]
        total = sum(m.num_rows for m in metas)
        # Cut at the row-group boundary nearest each of the target's even cut points; a file's
        # end is always a cut.
        ends: list[tuple[int, int, int]] = []  # (file, its row, input row) of each group's end
        seen = 0
        for file_index, meta in enumerate(metas):
            row = 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                row += n
                seen += n
                ends.append((file_index, row, seen))
        cuts = {(f, r) for f, r, _ in ends if r == metas[f].num_rows}
        for k in range(1, target):
            ideal = k * total / target
            f, r, _ = min(ends, key=lambda e: abs(e[2] - ideal))
            cuts.add((f, r))
        for file_index in range(len(metas)):
            shard_start = 0
            for _, r in sorted(c for c in cuts if c[0] == file_index):
                n = r - shard_start
                if limit is not None:
                    n = min(n, limit - seq)
                if n > 0:
                    start = (file_index, shard_start, -1, shard_start + 1)
                    shards.append(_shard(len(shards), file_index, start, seq, n))
                    seq += n
                shard_start = r
    else:
        plain = [fmt == "jsonl" and not _is_gzip(f) for f in reader.files]
        cut_bytes = sum(s for s, p in zip(sizes, plain, strict=True) if p)
        per_shard = max(1, -(-cut_bytes // target))
        for file_index, path in enumerate(reader.files):
            if limit is not None and seq >= limit:
                break
            left = None if limit is None else limit - seq
            if plain[file_index]:
                for start, n in _jsonl_cuts(path, file_index, per_shard, left):
                    shards.append(_shard(len(shards), file_index, start, seq, n))
                    seq += n
                continue
            whole_files += 1
            counter = InputReader(
                files=[path],
                root=reader.root,
                is_glob=reader.is_glob,
                fmt=fmt,
                id_field=None,
                limit=left,
            )
            count = counter.count_rows()
            if count == 0:
                continue
            shards.append(_shard(len(shards), file_index, (file_index, 0, 0, 1), seq, count))
            seq += count or 0
    if whole_files and len(reader.files) == 1 and workers > 1:
        log.warning(
            "%s: a single %s file is one shard (it cannot be cut): --workers %d runs it in "
            "one process; split it into several files to run it in parallel",
            reader.files[0],
            "gzip" if fmt == "jsonl" else "CSV",
            workers,
        )
    return ShardPlan(input=input_path, files=list(reader.relpaths), workers=workers, shards=shards)


def _shard(index: int, file: int, start: Position, first_seq: int, rows: int | None) -> Shard:
    return Shard(index=index, file=file, start=start, first_seq=first_seq, rows=rows)


def _jsonl_cuts(
    path: Path, file_index: int, per_shard: int, limit: int | None
) -> Iterator[tuple[Position, int]]:
    """(start position, rows) of the shards of a plain JSONL file: each starts at a line that
    is not blank, at least `per_shard` bytes after the previous start (one counting pass)."""
    offset = 0
    line_no = 1
    row = 0
    start: Position | None = None
    start_offset = 0
    start_row = 0
    with _open_binary(path) as f:
        for line in f:
            here = offset
            offset += len(line)
            this_line = line_no
            line_no += 1
            if not line.strip():
                continue
            if limit is not None and row >= limit:
                break
            if start is None:
                start, start_offset, start_row = (file_index, row, here, this_line), here, row
            elif here - start_offset >= per_shard:
                yield start, row - start_row
                start, start_offset, start_row = (file_index, row, here, this_line), here, row
            row += 1
    if start is not None and row > start_row:
        yield start, row - start_row


class ShardReader(InputReader):
    """The rows of one shard, with the ids of an unsharded run, numbered from 0 in the shard.

    Its one file is the shard's (so its ledger and content checks see that file only); a
    resume from a position the shard's ledger recorded goes on from there, and reading stops
    after the shard's last row.
    """

    def __init__(self, base: InputReader, shard: Shard) -> None:
        super().__init__(
            files=[base.files[shard.file]],
            root=base.root,
            is_glob=base.is_glob,
            fmt=base.format,
            id_field=base.id_field,
            limit=None,
            batch_rows=base.batch_rows,
        )
        self.relpaths = [base.relpaths[shard.file]]
        self.shard = shard

    def count_rows(self) -> int | None:
        if self.shard.rows is not None:
            return self.shard.rows
        return super().count_rows()

    def rows(self, *, start_seq: int = 0, start: Position | None = None) -> Iterator[Row]:
        return chain.from_iterable(self.chunks(start_seq=start_seq, start=start))

    def chunks(self, *, start_seq: int = 0, start: Position | None = None) -> Iterator[list[Row]]:
        """The shard's rows a list at a time, numbered from 0 within the shard."""
        shard = self.shard
        first: Position = (0, shard.start[1], shard.start[2], shard.start[3])
        if start is None or start[1] < first[1]:
            start, start_seq = first, 0
        n = shard.rows
        if n is not None and start_seq >= n:
            return
        base = shard.first_seq
        for chunk in self._file_chunks(0, start, base + start_seq):
            for row in chunk:
                row.seq -= base
            if n is not None and chunk[-1].seq + 1 >= n:
                yield [row for row in chunk if row.seq < n]
                return
            yield chunk


def check_plan(plan: ShardPlan, reader: InputReader, *, input_path: str, source: str) -> None:
    """Refuse a plan made for another input (a changed glob, another path).

    Raises:
        RunStateError: the plan's input differs; `--restart` starts over.
    """
    if (
        plan.input != input_path
        or plan.files[: len(plan.files)] != reader.relpaths[: len(plan.files)]
        or len(reader.relpaths) < len(plan.files)
    ):
        raise RunStateError(
            f"{source}: the shard plan of this output was made for another input "
            f"({plan.input!r}, {len(plan.files)} file(s)); --restart starts over"
        )
