"""Input readers on real files: formats, globs, ids, bad rows, seeking back to a position."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.errors import InputError
from batchrun.io.readers import open_input
from batchrun.job import InputSpec


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def test_jsonl_rows_positions_and_seek(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(50)])
    reader = open_input(InputSpec(path=str(path), field="text"))
    rows = list(reader.rows())
    assert [r.seq for r in rows] == list(range(50))
    assert [r.id for r in rows] == list(range(50))
    assert rows[7].record == {"text": "t7"}
    assert reader.where(rows[7].pos) == "in.jsonl:8"
    assert reader.count_rows() == 50
    resumed = list(reader.rows(start_seq=30, start=rows[30].pos))
    assert [r.record for r in resumed] == [r.record for r in rows[30:]]
    assert [r.seq for r in resumed] == list(range(30, 50))


def test_jsonl_bad_lines_become_bad_rows_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "a"}\n\nnot json\n[1, 2]\n{"text": "b"}\n')
    reader = open_input(InputSpec(path=str(path)))
    rows = list(reader.rows())
    assert len(rows) == 4
    assert rows[1].record is None and rows[1].error is not None
    assert rows[1].error.startswith("not JSON")
    assert reader.where(rows[1].pos) == "in.jsonl:3"
    assert rows[2].error == "not a JSON object (got list)"
    assert rows[3].record == {"text": "b"} and rows[3].seq == 3


def test_gzip_jsonl_and_id_field(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wb") as f:
        for i in range(20):
            f.write(orjson.dumps({"id": f"k{i}", "text": "x"}) + b"\n")
    reader = open_input(InputSpec(path=str(path), id_field="id"))
    rows = list(reader.rows())
    assert [r.id for r in rows] == [f"k{i}" for i in range(20)]
    assert reader.count_rows() is None
    again = list(reader.rows(start_seq=12, start=rows[12].pos))
    assert [r.id for r in again] == [f"k{i}" for i in range(12, 20)]


def test_missing_id_field_is_a_bad_row(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "in.jsonl", [{"id": 1}, {"text": "no id"}])
    rows = list(open_input(InputSpec(path=str(path), id_field="id")).rows())
    assert rows[0].id == 1
    assert rows[1].record is None and rows[1].error == "no value for id_field 'id'"


def test_parquet_row_groups_seek_and_count(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.table({"id": list(range(2500)), "text": [f"t{i}" for i in range(2500)]})
    pq.write_table(table, path, row_group_size=1000)
    reader = open_input(InputSpec(path=str(path), id_field="id"))
    assert reader.count_rows() == 2500
    rows = list(reader.rows())
    assert [r.id for r in rows] == list(range(2500))
    for start in (0, 999, 1000, 1001, 2499):
        got = [r.id for r in reader.rows(start_seq=start, start=rows[start].pos)]
        assert got == list(range(start, 2500)), start
    assert reader.where(rows[1500].pos) == "in.parquet:row 1500"


def test_csv_streaming_strings_and_seek(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,text\n" + "".join(f"{i},hello {i}\n" for i in range(300)))
    reader = open_input(InputSpec(path=str(path), id_field="id"))
    rows = list(reader.rows())
    assert rows[0].record == {"id": "0", "text": "hello 0"}
    assert rows[299].id == "299"
    assert [r.id for r in reader.rows(start_seq=250, start=rows[250].pos)] == [
        str(i) for i in range(250, 300)
    ]
    assert reader.count_rows() is None


def test_glob_sorted_relpath_ids_and_limit(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    _jsonl(tmp_path / "d" / "b.jsonl", [{"text": "b0"}, {"text": "b1"}])
    _jsonl(tmp_path / "d" / "a.jsonl", [{"text": "a0"}])
    _jsonl(tmp_path / "d" / "sub" / "c.jsonl", [{"text": "c0"}])
    reader = open_input(InputSpec(path=str(tmp_path / "d" / "**" / "*.jsonl")))
    rows = list(reader.rows())
    assert [r.id for r in rows] == ["a.jsonl:0", "b.jsonl:0", "b.jsonl:1", "sub/c.jsonl:0"]
    assert [r.seq for r in rows] == [0, 1, 2, 3]
    assert [r.id for r in reader.rows(start_seq=2, start=rows[2].pos)] == [
        "b.jsonl:1",
        "sub/c.jsonl:0",
    ]
    limited = open_input(InputSpec(path=str(tmp_path / "d" / "**" / "*.jsonl")), limit=2)
    assert [r.id for r in limited.rows()] == ["a.jsonl:0", "b.jsonl:0"]
    assert limited.count_rows() == 2


def test_missing_file_empty_glob_and_bad_parquet_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input file not found"):
        open_input(InputSpec(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(InputError, match="matches no files"):
        open_input(InputSpec(path=str(tmp_path / "*.jsonl")))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        open_input(InputSpec(path=str(bad)))
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        open_input(InputSpec(path=str(tmp_path / "dir.jsonl")))
