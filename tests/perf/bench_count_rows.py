"""What the progress total costs: `InputReader.count_rows` vs reading every row with `rows()`.

1,000,000 rows in each format (CSV, CSV.gz, Parquet, JSONL, JSONL.gz), written to a temp dir;
each timed as the best of `--repeat` runs, in wall and CPU seconds (the machine is shared: CPU
time is the steadier figure). Prints seconds and the count/read ratios. Also the CSV
reader's Arrow parse with and without `newlines_in_values` (which the reader now sets so quoted
newlines past the first block are read), as a ratio in the same run.

    python tests/perf/bench_count_rows.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchrun.io.readers import open_input
from batchrun.job import InputSpec


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds of this process, the value) over `repeat` calls."""
    wall = cpu = float("inf")
    value: object = None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu, value


def _write_inputs(d: Path, n: int) -> list[Path]:
    texts = [f"row {i}: a sentence of about the length people send, with a comma" for i in range(n)]
    csv_bytes = ("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts))).encode()
    jsonl_bytes = b"".join(orjson.dumps({"id": i, "text": t}) + b"\n" for i, t in enumerate(texts))
    (d / "in.csv").write_bytes(csv_bytes)
    (d / "in.csv.gz").write_bytes(gzip.compress(csv_bytes, compresslevel=6))
    (d / "in.jsonl").write_bytes(jsonl_bytes)
    (d / "in.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes, compresslevel=6))
    pq.write_table(pa.table({"id": list(range(n)), "text": texts}), d / "in.parquet")
    return [d / f"in.{ext}" for ext in ("csv", "csv.gz", "parquet", "jsonl", "jsonl.gz")]


def _arrow_csv_rows(path: Path, newlines_in_values: bool) -> int:
    reader = pacsv.open_csv(
        str(path),
        read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=newlines_in_values),
        convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "text": pa.string()}),
    )
    return sum(batch.num_rows for batch in reader)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-count-") as tmp:
        paths = _write_inputs(Path(tmp), args.rows)
        print(f"{args.rows:,} rows, best of {args.repeat}")
        print(
            f"{'input':<9} {'MB':>6} {'count s':>8} {'read s':>7} {'ratio':>6}"
            f" {'count cpu':>10} {'read cpu':>9} {'ratio':>6}"
        )
        for path in paths:
            reader = open_input(InputSpec(path=str(path)))
            count_s, count_cpu, total = _best(reader.count_rows, args.repeat)
            read_s, read_cpu, rows = _best(lambda r=reader: sum(1 for _ in r.rows()), args.repeat)
            assert total == rows == args.rows, (path.name, total, rows)
            mb = path.stat().st_size / 1e6
            name = path.name.removeprefix("in.")
            print(
                f"{name:<9} {mb:>6.1f} {count_s:>8.3f} {read_s:>7.2f} {count_s / read_s:>6.3f}"
                f" {count_cpu:>10.3f} {read_cpu:>9.2f} {count_cpu / read_cpu:>6.3f}"
            )
        csv = paths[0]
        _, off, _ = _best(lambda: _arrow_csv_rows(csv, False), args.repeat)
        _, on, _ = _best(lambda: _arrow_csv_rows(csv, True), args.repeat)
        print(
            f"Arrow CSV parse (CPU s): newlines_in_values off {off:.3f}, on {on:.3f} "
            f"(on/off {on / off:.2f})"
        )


if __name__ == "__main__":
    main()
