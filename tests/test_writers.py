"""Output writers on real files: commits, cutting back to the last commit, stray parts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq

from batchrun.io.writers import JsonlWriter, ParquetWriter, write_atomic


def test_jsonl_commit_and_truncate_back(tmp_path: Path) -> None:
    path = tmp_path / "out" / "r.jsonl"
    w = JsonlWriter(path)
    w.write({"id": 1, "v": "a"})
    w.write({"id": 2, "v": b"bytes"})
    committed = w.commit()
    assert committed == path.stat().st_size
    w.write({"id": 3})
    w.close()  # uncommitted row dropped
    with open(path, "ab") as f:
        f.write(b'{"id": 4, "torn')  # a crash mid-write
    w2 = JsonlWriter(path, committed_offset=committed)
    assert w2.offset == committed
    w2.write({"id": 5})
    w2.commit()
    w2.close()
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert rows == [{"id": 1, "v": "a"}, {"id": 2, "v": "bytes"}, {"id": 5}]


def test_parquet_parts_and_stray_cleanup(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    w = ParquetWriter(out, chunk_rows=3)
    for i in range(7):
        w.write({"id": i, "text": f"t{i}", "score": None if i == 0 else 0.5})
    assert w.commit() == 1
    for i in range(7, 9):
        w.write({"id": i, "text": f"t{i}", "score": 1.0})
    assert w.commit() == 2
    assert w.commit() == 2  # nothing pending: no empty part
    w.close()
    # a crash: a half-written temp and a part the state never recorded
    (out / "part-000003.parquet.tmp").write_bytes(b"PAR1 half")
    (out / "part-000003.parquet").write_bytes(b"not committed")
    (out / "notes.txt").write_text("user file")
    ParquetWriter(out, committed_parts=2).close()
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt",
        "part-000001.parquet",
        "part-000002.parquet",
    ]
    table = pq.read_table([str(out / "part-000001.parquet"), str(out / "part-000002.parquet")])
    assert table.column("id").to_pylist() == list(range(9))


def test_write_atomic_replaces(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"old\n")
    assert write_atomic(path, [b"a\n", b"b\n"]) == 4
    assert path.read_bytes() == b"a\nb\n"
    assert not (tmp_path / "e.jsonl.tmp").exists()


def _parts(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def test_parquet_small_parts_are_merged_crash_safely(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    w = ParquetWriter(out, compact_after=3)
    for part in range(3):
        for i in range(part * 5, part * 5 + 5):
            # the first part's "note" is all null; later parts carry strings
            w.write({"id": i, "note": None if part == 0 else f"n{i}"})
        w.commit()
    plan = w.compact_begin()
    assert plan is not None and plan.number == 4 and plan.merged == (1, 2, 3)
    assert w.live == [4]
    w.close()
    # crash before the run state listed part 4: it is deleted on open, the old parts stay
    again = ParquetWriter(out, committed_parts=3, live_parts=[1, 2, 3], compact_after=3)
    assert _parts(out) == [f"part-00000{i}.parquet" for i in (1, 2, 3)]
    plan = again.compact_begin()
    assert plan is not None and plan.number == 4
    again.close()
    # crash after the state listed part 4, before the old parts were deleted
    ParquetWriter(out, committed_parts=4, live_parts=[4]).close()
    assert _parts(out) == ["part-000004.parquet"]
    table = pq.read_table(out / "part-000004.parquet")
    assert table.column("id").to_pylist() == list(range(15))
    assert table.column("note").to_pylist()[:6] == [None] * 5 + ["n5"]


def test_parquet_merged_parts_are_not_merged_again(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    w = ParquetWriter(out, compact_after=2)
    w.write({"id": 0})
    w.commit()
    assert w.compact_begin() is None  # one commit part
    w.write({"id": 1})
    w.commit()
    first = w.compact_begin()
    assert first is not None and first.merged == (1, 2)
    w.compact_end(first)
    w.write({"id": 2})
    w.commit()
    assert w.compact_begin() is None  # the merged part does not count
    w.close()
    again = ParquetWriter(out, committed_parts=4, live_parts=[3, 4], compact_after=2)
    w.close()
    again.write({"id": 3})
    again.commit()
    second = again.compact_begin()  # the marker survives a reopen: only parts 4 and 5
    assert second is not None and second.merged == (4, 5)
    again.compact_end(second)
    again.close()
    assert _parts(out) == ["part-000003.parquet", "part-000006.parquet"]
    ids = [pq.read_table(out / p).column("id").to_pylist() for p in _parts(out)]
    assert ids == [[0, 1], [2, 3]]


def test_parquet_small_merged_parts_are_merged_again_until_big(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    w = ParquetWriter(out, compact_after=3, merge_rows=10)
    ids = iter(range(100))

    def commit(rows: int) -> None:
        for _ in range(rows):
            w.write({"id": next(ids)})
        w.commit()

    def merge() -> tuple[int, ...] | None:
        plan = w.compact_begin()
        if plan is None:
            return None
        w.compact_end(plan)
        return plan.merged

    for _ in range(3):
        commit(2)  # slow, timed commits: small parts
    assert merge() == (1, 2, 3)  # part 4: 6 rows, under merge_rows
    commit(2)
    assert merge() is None  # parts 4 and 5: two small ones
    commit(2)
    assert merge() == (4, 5, 6)  # part 7: 10 rows, big enough: never rewritten
    for _ in range(3):
        commit(5)
    assert merge() == (8, 9, 10)  # part 11: 15 rows
    w.close()
    again = ParquetWriter(
        out, committed_parts=11, live_parts=[7, 11], compact_after=2, merge_rows=10
    )
    assert again.compact_begin() is None  # both merged, 10+ rows: read from the footers
    again.close()
    assert _parts(out) == ["part-000007.parquet", "part-000011.parquet"]
    table = pq.read_table([str(out / p) for p in _parts(out)])
    assert table.column("id").to_pylist() == list(range(25))
