"""Run state and ledger on real SQLite files: fingerprint, lock, watermark, ids, retry rewrite."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import orjson
import pytest

from batchrun.errors import RunLockedError, RunStateError
from batchrun.io.ledger import Ledger
from batchrun.io.readers import InputReader, open_input
from batchrun.io.state import RunState, fingerprint_files
from batchrun.job import Job


def _job(tmp_path: Path, out: str = "out/r.jsonl", **run: object) -> Job:
    return Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": "http://127.0.0.1:9"},
            "input": {"path": str(tmp_path / "in.jsonl"), "field": "text"},
            "output": {"path": str(tmp_path / out), "commit_rows": 10},
            "run": dict(run),
        }
    )


def _input(tmp_path: Path, n: int = 30) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({"text": f"t{i}"}) + b"\n" for i in range(n))
    )


def _ledger(job: Job, restart: bool = False) -> Ledger:
    ledger = Ledger(job, open_input(job.input, limit=job.run.limit), restart=restart)
    ledger.begin()  # what `arun_job` does once the endpoint is ready (--restart discards here)
    return ledger


def ledger_reader(job: Job) -> InputReader:
    return open_input(job.input, limit=job.run.limit)


def _lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def test_watermark_out_of_order_and_resume(tmp_path: Path) -> None:
    _input(tmp_path)
    job = _job(tmp_path)
    ledger = _ledger(job)
    rows = list(ledger_reader(job).rows())
    for r in rows[:10]:
        ledger.track(r.seq, r.pos)
    for seq in (0, 1, 2, 5, 6, 9):  # 3, 4, 7, 8 still in flight
        ledger.add_result(seq, {"id": seq})
    ledger.add_error(3, {"id": 3, "status": "http_400", "row": 3})
    ledger.commit()
    assert ledger.watermark == 4
    assert ledger.done_above == {5, 6, 9}
    ledger.add_result(4, {"id": 4})  # completed, never committed: lost in the "crash"
    ledger.close()

    again = _ledger(job)
    assert again.watermark == 4
    assert again.anchor[0] == 4
    assert again.done_above == {5, 6, 9}
    assert [again.is_done(s) for s in range(10)] == [
        True, True, True, True, False, True, True, False, False, True,
    ]  # fmt: skip
    assert again.committed_at_start == 7
    seq, pos = again.anchor
    resumed = [r.seq for r in ledger_reader(job).rows(start_seq=seq, start=pos)]
    assert resumed[0] == 4
    again.close()
    assert [r["id"] for r in _lines(tmp_path / "out/r.jsonl")] == [0, 1, 2, 5, 6, 9]
    assert [r["id"] for r in _lines(tmp_path / "out/r.errors.jsonl")] == [3]


def test_all_committed_watermark_passes_the_last_row(tmp_path: Path) -> None:
    _input(tmp_path, 5)
    job = _job(tmp_path)
    ledger = _ledger(job)
    for r in ledger_reader(job).rows():
        ledger.track(r.seq, r.pos)
        ledger.add_result(r.seq, {"id": r.seq})
    ledger.commit()
    assert ledger.watermark == 5 and ledger.done_above == set()
    seq, pos = ledger.anchor
    ledger.close()
    rest = [r.seq for r in ledger_reader(job).rows(start_seq=seq, start=pos)]
    assert rest == [4]  # the anchor is the last committed row; the caller skips it


def test_changed_input_and_job_are_refused_with_what_changed(tmp_path: Path) -> None:
    _input(tmp_path)
    job = _job(tmp_path)
    ledger = _ledger(job)
    for r in list(ledger_reader(job).rows())[:10]:
        ledger.track(r.seq, r.pos)
        ledger.add_result(r.seq, {"id": r.seq})
    ledger.commit()
    ledger.close()
    with pytest.raises(RunStateError, match=r"job parameters changed .*--restart"):
        _ledger(_job(tmp_path, parameters={"max_new_tokens": 3})).close()
    data = (tmp_path / "in.jsonl").read_bytes()
    (tmp_path / "in.jsonl").write_bytes(data.replace(b'"t3"', b'"T3"'))  # same size, row 3
    with pytest.raises(
        RunStateError, match=r"input file in.jsonl changed in its committed part: bytes 0-"
    ):
        _ledger(job).close()
    os.utime(tmp_path / "in.jsonl", ns=(1, 1))
    _ledger(job, restart=True).close()
    _ledger(_job(tmp_path)).close()  # concurrency is not part of the fingerprint


def test_state_made_before_content_checks_is_adopted(tmp_path: Path) -> None:
    _input(tmp_path)
    job = _job(tmp_path)
    ledger = _ledger(job)
    for r in list(ledger_reader(job).rows())[:10]:
        ledger.track(r.seq, r.pos)
        ledger.add_result(r.seq, {"id": r.seq})
    ledger.commit()
    ledger.close()
    # as an older batchrun left it: the files in the fingerprint (with limit), no covers
    db = sqlite3.connect(RunState.database(tmp_path / "out/r.jsonl.batchrun"))
    reader = ledger_reader(job)
    old = {
        "input": job.input.path,
        "files": fingerprint_files(reader.files, reader.relpaths),
        "job": job.fingerprint_fields(),
        "output_format": "jsonl",
    }
    with db:
        db.execute("DELETE FROM meta WHERE key LIKE 'cover.%'")
        db.execute("DELETE FROM input_blocks")
        db.execute("UPDATE meta SET value = ? WHERE key = 'fingerprint'", (orjson.dumps(old),))
    db.close()
    os.utime(tmp_path / "in.jsonl", ns=(1, 1))
    again = _ledger(job)  # head and tail as fingerprinted: adopted, covered from now on
    assert again.watermark == 10
    again.close()
    data = (tmp_path / "in.jsonl").read_bytes()
    (tmp_path / "in.jsonl").write_bytes(data.replace(b'"t3"', b'"T3"'))
    with pytest.raises(RunStateError, match=r"in.jsonl changed in its committed part: bytes 0-"):
        _ledger(job).close()


def test_ids_indexed_after_the_committed_rows_are_forgotten_on_resume(tmp_path: Path) -> None:
    def write(ids: list[str]) -> None:
        (tmp_path / "in.jsonl").write_bytes(
            b"".join(orjson.dumps({"id": i, "text": i}) + b"\n" for i in ids)
        )

    ids = [f"r{i:02d}" for i in range(20)]
    write(ids)
    job = Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": "http://127.0.0.1:9"},
            "input": {"path": str(tmp_path / "in.jsonl"), "field": "text", "id_field": "id"},
            "output": {"path": str(tmp_path / "out/r.jsonl")},
        }
    )
    ledger = _ledger(job)
    rows = list(ledger_reader(job).rows())
    assert ledger.first_seqs([(r.id, r.seq) for r in rows]) == [None] * 20  # all 20 indexed
    for r in rows[:10]:  # only the first 10 committed: the run is then "killed"
        ledger.track(r.seq, r.pos)
        ledger.add_result(r.seq, {"id": r.id})
    ledger.commit()
    ledger.close()
    # the uncommitted rows change (same length): r15 is now only at row 18
    write([*ids[:15], "zzz", *ids[16:18], "r15", ids[19]])
    again = _ledger(job)
    rest = list(ledger_reader(job).rows())[10:]
    assert again.first_seqs([(r.id, r.seq) for r in rest]) == [None] * 10
    again.close()


def test_committed_part_ends_at_the_highest_committed_row(tmp_path: Path) -> None:
    _input(tmp_path)  # 30 rows {"text": "tN"}
    job = _job(tmp_path)
    ledger = _ledger(job)
    for r in list(ledger_reader(job).rows())[:12]:
        ledger.track(r.seq, r.pos)
    for seq in (0, 1, 2, 5, 9):  # 3, 4, 6-8, 10, 11 in flight when the run is killed
        ledger.add_result(seq, {"id": seq})
    ledger.commit()
    ledger.close()
    data = (tmp_path / "in.jsonl").read_bytes()
    # rows after the highest committed one (9) may change, even in size
    (tmp_path / "in.jsonl").write_bytes(data.replace(b'"t10"', b'"t10 edited"') + b'{"text":"x"}\n')
    again = _ledger(job)
    assert again.watermark == 3 and again.done_above == {5, 9}
    again.close()
    # a row below it, committed or not, may not
    (tmp_path / "in.jsonl").write_bytes(data.replace(b'"t7"', b'"T7"'))
    with pytest.raises(RunStateError, match=r"bytes 0-\d+ differ .*\(from line 1\)"):
        _ledger(job).close()


def test_new_file_after_the_committed_ones_is_read_from_its_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name, n in (("a", 3), ("c", 3)):  # c.jsonl starts with a blank line
        (data / f"{name}.jsonl").write_bytes(
            (b"\n" if name == "c" else b"")
            + b"".join(orjson.dumps({"text": f"{name}{i}"}) + b"\n" for i in range(n))
        )
    job = Job.from_dict(
        {
            "endpoint": {"provider": "url", "url": "http://127.0.0.1:9"},
            "input": {"path": str(data / "*.jsonl"), "field": "text"},
            "output": {"path": str(tmp_path / "out/r.jsonl")},
        }
    )
    ledger = _ledger(job)
    rows = list(ledger_reader(job).rows())
    for r in rows[:5]:  # a.jsonl committed; c.jsonl's first rows read, then the run stops
        ledger.track(r.seq, r.pos)
    for seq in (0, 1, 2):
        ledger.add_result(seq, {"id": rows[seq].id})
    ledger.commit()
    assert ledger.committed.anchor_pos == rows[3].pos and rows[3].pos[:3] == (1, 0, 1)
    ledger.close()
    (data / "b.jsonl").write_bytes(b'{"text": "b0"}\n')  # sorts after a, before c
    again = _ledger(job)
    seq, pos = again.anchor
    again.close()
    rest = [r.id for r in ledger_reader(job).rows(start_seq=seq, start=pos)]
    assert rest == ["b.jsonl:0", "c.jsonl:0", "c.jsonl:1", "c.jsonl:2"]


def test_second_live_run_is_locked_out_with_its_pid(tmp_path: Path) -> None:
    _input(tmp_path)
    job = _job(tmp_path)
    first = _ledger(job)
    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()}"):
        _ledger(job)
    with pytest.raises(RunLockedError):
        _ledger(job, restart=True)
    first.close()
    _ledger(job).close()


def test_orphan_output_is_refused_and_restart_says_what_it_discards(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _input(tmp_path)
    job = _job(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/r.jsonl").write_text('{"id": 0}\n')
    with pytest.raises(RunStateError, match="exists but has no run state"):
        _ledger(job)
    ledger = _ledger(job, restart=True)
    ledger.track(0, (0, 0, 0, 1))
    ledger.add_result(0, {"id": 0})
    ledger.commit()
    ledger.close()
    with caplog.at_level(logging.WARNING):
        fresh = _ledger(job, restart=True)
    assert fresh.discarded is not None and "1 result(s), 0 error row(s)" in fresh.discarded
    assert "discarding" in caplog.text
    assert fresh.results_count == 0 and fresh.watermark == 0
    fresh.close()
    assert not (tmp_path / "out/r.jsonl").read_bytes()


def test_duplicate_ids_on_disk_first_wins(tmp_path: Path) -> None:
    _input(tmp_path)
    job = _job(tmp_path)
    ledger = _ledger(job)
    assert ledger.first_seqs([("a", 0), ("b", 1)]) == [None, None]
    assert ledger.first_seqs([("a", 2)]) == [0]
    assert ledger.first_seqs([("a", 0)]) == [None]  # the first row itself, re-read on resume
    # 1 and "1" are different ids; a duplicate within one chunk is caught too
    assert ledger.first_seqs([(1, 3), ("1", 4), ("c", 5), ("c", 6)]) == [None, None, None, 5]
    # chunks larger than one SELECT's worth of ids
    many = [(f"id{i}", 10 + i) for i in range(1200)] + [("id7", 2000)]
    assert ledger.first_seqs(many) == [None] * 1200 + [17]
    ledger.track(0, (0, 0, 0, 1))
    ledger.add_result(0, {"id": "a"})
    ledger.commit()
    ledger.close()
    again = _ledger(job)  # entries of committed rows stay; the others are indexed again
    assert again.first_seqs([("a", 7)]) == [0]
    assert again.first_seqs([("b", 8)]) == [None]
    again.close()


def test_retry_rewrite_survives_a_crash_at_each_step(tmp_path: Path) -> None:
    _input(tmp_path)
    job = _job(tmp_path, out="out/r.parquet")
    ledger = _ledger(job)
    for r in ledger_reader(job).rows():
        if r.seq >= 4:
            break
        ledger.track(r.seq, r.pos)
        ledger.add_error(r.seq, {"id": r.seq, "status": "http_500", "row": r.seq})
    ledger.commit()
    assert [e["row"] for e in ledger.errors_to_retry()] == [0, 1, 2, 3]
    ledger.start_retry()
    ledger.add_result(1, {"id": 1, "generated_text": "ok"})
    ledger.add_error(2, {"id": 2, "status": "http_400", "row": 2})
    ledger.commit()
    ledger.add_result(3, {"id": 3, "generated_text": "lost"})  # uncommitted at the "crash"
    ledger.close()

    errors = tmp_path / "out/r.errors.jsonl"
    assert [e["row"] for e in _lines(errors)] == [0, 1, 2, 3]  # not yet rewritten
    again = _ledger(job)  # recovery settles the interrupted retry
    assert [(e["row"], e["status"]) for e in _lines(errors)] == [
        (0, "http_500"),
        (3, "http_500"),
        (2, "http_400"),
    ]
    assert again.errors_count == 3 and again.results_count == 1
    assert not (tmp_path / "out/r.errors.jsonl.retry").exists()
    again.start_retry()
    again.add_result(0, {"id": 0, "generated_text": "ok"})
    again.finish_retry()
    assert [e["row"] for e in _lines(errors)] == [3, 2]
    again.close()
    check = RunState.open(tmp_path / "out/r.parquet.batchrun", fingerprint=None, output="x")
    assert check.committed.errors_count == 2 and check.committed.results_count == 2
    assert check.committed.retry_offset is None and check.retry_settled() == {}
    check.close()
