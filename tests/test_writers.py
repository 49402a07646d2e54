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
