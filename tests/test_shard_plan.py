"""The shard plan: deterministic, cut on line starts and row groups, and together exactly the
rows and ids of an unsharded read."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.io.readers import InputReader, open_input
from batchrun.job import InputSpec
from batchrun.shards.plan import ShardPlan, ShardReader, make_plan


def _rows(reader: InputReader) -> list[tuple[Any, Any, str | None]]:
    return [(r.id, r.record, r.error) for r in reader.rows()]


def _sharded(reader: InputReader, plan: ShardPlan) -> list[tuple[Any, Any, str | None]]:
    out: list[tuple[Any, Any, str | None]] = []
    for shard in plan.shards:
        rows = list(ShardReader(reader, shard).rows())
        assert [r.seq for r in rows] == list(range(len(rows)))  # numbered in the shard
        assert shard.rows is None or len(rows) == shard.rows
        out += [(r.id, r.record, r.error) for r in rows]
    return out


def _jsonl(path: Path, n: int, *, blank_every: int = 0) -> None:
    lines = []
    for i in range(n):
        lines.append(orjson.dumps({"text": f"row {i}" + "x" * (i % 7)}))
        if blank_every and i % blank_every == 0:
            lines.append(b"   ")
    lines.append(b"not json")
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_jsonl_plan_cuts_on_line_starts_and_covers_every_row(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    _jsonl(path, 1000, blank_every=13)
    reader = open_input(InputSpec(path=str(path)))
    plan = make_plan(reader, 3, input_path=str(path))
    again = make_plan(open_input(InputSpec(path=str(path))), 3, input_path=str(path))
    assert plan == again
    assert len(plan.shards) >= 12
    data = path.read_bytes()
    for shard in plan.shards:
        offset = shard.start[2]
        assert offset == 0 or data[offset - 1 : offset] == b"\n"
        assert data[offset : offset + 1] == b"{"  # a row, never a blank line
    assert _sharded(reader, plan) == _rows(reader)
    assert sum(s.rows or 0 for s in plan.shards) == reader.count_rows() == 1001


def test_glob_with_id_field_and_limit(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for k in range(3):
        rows = [orjson.dumps({"id": f"{k}-{i}", "text": str(i)}) for i in range(50)]
        (tmp_path / "d" / f"part{k}.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    pattern = str(tmp_path / "d" / "*.jsonl")
    for spec, limit in (
        (InputSpec(path=pattern), 120),
        (InputSpec(path=pattern, id_field="id"), None),
    ):
        reader = open_input(spec, limit=limit)
        plan = make_plan(reader, 2, input_path=pattern)
        assert _sharded(reader, plan) == _rows(reader)
        assert all(s.start[0] == s.file for s in plan.shards)


def test_parquet_plan_cuts_on_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.table({"text": [f"t{i}" for i in range(1000)]})
    pq.write_table(table, path, row_group_size=37)
    reader = open_input(InputSpec(path=str(path)))
    plan = make_plan(reader, 2, input_path=str(path))
    assert len(plan.shards) >= 8
    assert all(s.start[1] % 37 == 0 for s in plan.shards)
    assert _sharded(reader, plan) == _rows(reader)


def test_gzip_and_csv_are_whole_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(
        gzip.compress(b"".join(orjson.dumps({"text": str(i)}) + b"\n" for i in range(99)))
    )
    reader = open_input(InputSpec(path=str(gz)))
    plan = make_plan(reader, 4, input_path=str(gz))
    assert [(s.first_seq, s.rows) for s in plan.shards] == [(0, 99)]
    assert "is one shard" in caplog.text
    csv = tmp_path / "c"
    csv.mkdir()
    for k in range(2):
        (csv / f"{k}.csv").write_text("text\n" + "".join(f"r{k}{i}\n" for i in range(30)))
    reader = open_input(InputSpec(path=str(csv / "*.csv")))
    plan = make_plan(reader, 4, input_path="c")
    assert [(s.file, s.first_seq, s.rows) for s in plan.shards] == [(0, 0, 30), (1, 30, 30)]
    assert _sharded(reader, plan) == _rows(reader)


def test_plan_round_trips_and_marks_done(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    _jsonl(path, 100)
    plan = make_plan(open_input(InputSpec(path=str(path))), 2, input_path=str(path))
    plan.mark_done(1)
    plan.save(tmp_path / "state")
    loaded = ShardPlan.load(tmp_path / "state")
    assert loaded == plan
    assert [s.index for s in loaded.remaining] == [s.index for s in plan.shards if s.index != 1]


def test_resume_inside_a_shard(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    _jsonl(path, 200)
    reader = open_input(InputSpec(path=str(path)))
    shard = make_plan(reader, 2, input_path=str(path)).shards[2]
    rows = list(ShardReader(reader, shard).rows())
    later = list(ShardReader(reader, shard).rows(start_seq=5, start=rows[5].pos))
    assert [(r.seq, r.id) for r in later] == [(r.seq, r.id) for r in rows[5:]]
