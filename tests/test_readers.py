"""Input readers on real files: formats, globs, ids, bad rows, seeking back to a position."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.errors import InputError
from batchrun.io.readers import InputReader, Row, open_input
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
    assert reader.count_rows() == 20
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
    assert reader.count_rows() == 300


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


# --- damage and special files --------------------------------------------------------------


def _assert_resumes_alike(reader: InputReader, rows: list[Row], starts: list[int]) -> None:
    """Starting at any row's position gives the same rows (ids, seqs, errors) from there on."""
    want = [(r.seq, r.id, r.error) for r in rows]
    for start in starts:
        got = [(r.seq, r.id, r.error) for r in reader.rows(start_seq=start, start=rows[start].pos)]
        assert got == want[start:], start


def test_a_truncated_gzip_ends_in_one_damaged_tail_row_at_the_same_place_on_resume(
    tmp_path: Path,
) -> None:
    data = b"".join(orjson.dumps({"id": f"k{i}", "text": "x" * 50}) + b"\n" for i in range(2000))
    packed = gzip.compress(data, mtime=0)
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    readable = zlib.decompressobj(wbits=31).decompress(packed[: len(packed) // 2])
    offset = readable.rfind(b"\n") + 1
    reader = open_input(InputSpec(path=str(path), id_field="id"))
    rows = list(reader.rows())
    n = readable[:offset].count(b"\n")
    assert [r.id for r in rows[:-1]] == [f"k{i}" for i in range(n)]
    tail = rows[-1]
    assert tail.seq == n and tail.id == f"in.jsonl.gz@{offset}" and tail.record is None
    assert tail.error is not None and "EOFError" in tail.error and str(path) in tail.error
    _assert_resumes_alike(reader, rows, [0, 1, n // 2, n - 1, n])


def test_a_damaged_gzip_in_a_glob_does_not_stop_the_next_file(tmp_path: Path) -> None:
    good = gzip.compress(b'{"text": "a0"}\n{"text": "a1"}\n', mtime=0)
    (tmp_path / "a.jsonl.gz").write_bytes(good + b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\xff")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "b0"}\n', mtime=0))
    reader = open_input(InputSpec(path=str(tmp_path / "*.jsonl.gz")))
    rows = list(reader.rows())
    assert [r.id for r in rows] == ["a.jsonl.gz:0", "a.jsonl.gz:1", "a.jsonl.gz@30", "b.jsonl.gz:0"]
    assert rows[2].error is not None and "zlib.error" in rows[2].error
    _assert_resumes_alike(reader, rows, [1, 2, 3])


def test_a_gzip_damaged_from_its_start_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 32)
    with pytest.raises(InputError, match="not a readable gzip file"):
        open_input(InputSpec(path=str(path)))


def test_ragged_csv_rows_are_bad_rows_in_place_and_resume_across_blocks(tmp_path: Path) -> None:
    # ~1.6 MB: more than one 1 MiB block, so skipping on resume crosses a block boundary.
    lines = [f"{i},{'t' * 30} {i}" for i in range(40_000)]
    bad = {0, 1, 997, 25_000, 25_001, 39_999}
    for i in bad:
        lines[i] = f"{i},extra,field" if i % 2 else f"{i}"
    path = tmp_path / "in.csv"
    path.write_text("id,text\n" + "\n".join(lines) + "\n")
    reader = open_input(InputSpec(path=str(path)))
    rows = list(reader.rows())
    assert [r.seq for r in rows] == list(range(40_000))
    assert {r.seq for r in rows if r.record is None} == bad
    assert rows[2].record == {"id": "2", "text": "t" * 30 + " 2"}
    assert rows[997].error is not None and rows[997].error.startswith("CSV row has 3 field(s)")
    assert rows[25_000].error == "CSV row has 1 field(s), the header 2: 25000"
    assert reader.where(rows[25_000].pos) == "in.csv:row 25000"
    _assert_resumes_alike(reader, rows, [0, 1, 2, 997, 998, 24_999, 25_000, 25_002, 39_999])


def test_a_csv_arrow_cannot_decode_is_refused_or_cut_at_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,text\n0,\xff not utf-8\n")
    with pytest.raises(InputError, match="not a readable CSV file"):
        open_input(InputSpec(path=str(path)))
    path.write_bytes(b"id,\xff\n0,a\n")
    with pytest.raises(InputError, match="cannot read the CSV header"):
        open_input(InputSpec(path=str(path)))
    # Past the first block, the rest of the file becomes one damaged tail row.
    good = "".join(f"{i},{'t' * 40}\n" for i in range(30_000)).encode()
    path.write_bytes(b"id,text\n" + good + b"30000,\xff\n30001,b\n")
    reader = open_input(InputSpec(path=str(path)))
    rows = list(reader.rows())
    tail = rows[-1]
    assert tail.id == f"in.csv@row {tail.seq}" and 0 < tail.seq <= 30_000
    assert all(r.record is not None for r in rows[:-1])
    _assert_resumes_alike(reader, rows, [0, tail.seq - 1, tail.seq])


def test_a_corrupt_parquet_row_group_ends_the_file_in_one_tail_row(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.table({"id": list(range(3000)), "text": [f"text {i} " * 5 for i in range(3000)]})
    pq.write_table(table, path, row_group_size=1000, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset + 8 : column.data_page_offset + 200] = b"\xff" * 192
    path.write_bytes(bytes(data))
    reader = open_input(InputSpec(path=str(path), id_field="id"))
    rows = list(reader.rows())
    assert [r.id for r in rows[:1000]] == list(range(1000))
    assert len(rows) == 1001 and rows[1000].id == "in.parquet@row 1000"
    assert reader.where(rows[1000].pos) == "in.parquet:row 1000"
    _assert_resumes_alike(reader, rows, [0, 999, 1000])


def test_first_fields_are_the_row_as_read_even_without_the_id_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "in.jsonl", [{"ID": 1, "text": "a"}, {"ID": 2, "text": "b"}])
    reader = open_input(InputSpec(path=str(path), id_field="id"))
    assert reader.first_fields() == {"ID": 1, "text": "a"}
    first = reader.first_record()
    assert first is not None and first.record is None
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert open_input(InputSpec(path=str(tmp_path / "empty.jsonl"))).first_fields() is None


def test_special_files_and_nul_bytes_are_input_errors(tmp_path: Path) -> None:
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"is a FIFO \(named pipe\), not a regular file"):
        open_input(InputSpec(path=str(fifo)))
    with pytest.raises(InputError, match="is a device, not a regular file"):
        open_input(InputSpec(path="/dev/null", format="jsonl"))
    with pytest.raises(InputError, match="NUL byte"):
        open_input(InputSpec(path=str(tmp_path / "a\0.jsonl")))
    # A glob matches regular files only.
    _jsonl(tmp_path / "ok.jsonl", [{"text": "a"}])
    assert open_input(InputSpec(path=str(tmp_path / "*.jsonl"))).files == [tmp_path / "ok.jsonl"]
