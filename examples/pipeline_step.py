"""A data-pipeline step: enrich a Parquet dataset with a model's answers, through batchrun.

    python examples/pipeline_step.py [INPUT_DIR] [OUTPUT_FILE]
    # default: examples/data/reviews -> out/pipeline/reviews_enriched.parquet

`enrich_reviews` (or `aenrich_reviews` from inside an event loop, e.g. an async orchestrator)
reads every `*.parquet` file of INPUT_DIR, has batchrun classify each review (the job file
`pipeline_step.toml` says which endpoint; it is resumed before and paused after), joins the
results back to the input on `review_id`, and writes the input's columns plus `sentiment`,
`sentiment_score` and `error` (the errors file's status for a row that failed for good, else
null) to OUTPUT_FILE, atomically.

What the caller gets:
- exit code 0 or 3 (every row settled; 3: some in the errors file): the enriched table is
  written, and the `RunSummary` returned;
- 4 (stopped by the budget or the deadline; resumable): nothing is written, the summary is
  returned; calling the step again resumes where it stopped (so does calling it again after
  a crash, a kill, or a cancelled `aenrich_reviews` task);
- the endpoint failed or never became ready (5), or could not be paused (6), or a bad job or
  input (2): batchrun's exception propagates (`EndpointFailedError`, `EndpointTimeoutError`,
  `EndpointRestError`, `JobError`, `InputError`, ...), so the pipeline run fails loudly.

Run state lives in WORK_DIR (default: OUTPUT_FILE's name + ".work/"): re-running the step after
a crash sends only the rows that were not committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import batchrun
from batchrun import RunSummary

__all__ = ["JOB_FILE", "aenrich_reviews", "enrich_reviews", "join_results"]

log = logging.getLogger("pipeline_step")

HERE = Path(__file__).resolve().parent
JOB_FILE = HERE / "pipeline_step.toml"
ID = "review_id"
SETTLED = (0, 3)  # every input row is in the results or in the errors file


def _job(
    input_dir: Path, work_dir: Path, job_file: Path, overrides: dict[str, dict[str, Any]] | None
) -> batchrun.Job:
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (overrides or {}).items()}
    sections.setdefault("input", {})["path"] = str(input_dir / "*.parquet")
    sections.setdefault("output", {})["path"] = str(work_dir / "results.parquet")
    return batchrun.load_job(job_file, **sections)


def _work_dir(output: Path, work_dir: str | Path | None) -> Path:
    return Path(work_dir) if work_dir is not None else output.with_name(output.name + ".work")


def enrich_reviews(
    input_dir: str | Path,
    output: str | Path,
    *,
    job_file: str | Path = JOB_FILE,
    work_dir: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> RunSummary:
    """Classify every review of `input_dir` and write the enriched table to `output`.

    Args:
        input_dir: a directory of Parquet files with `review_id`, `product` and `text`.
        output: the enriched Parquet file to write.
        job_file: the batchrun job (endpoint, run settings, budget).
        work_dir: batchrun's results, errors and run state (default: `output` + ".work").
        overrides: job keys per section, as `batchrun.load_job` takes them.
        progress: show batchrun's progress on stderr.

    Returns:
        batchrun's summary; `output` is written when its exit_code is 0 or 3.

    Raises:
        batchrun.BatchrunError: the endpoint failed (exit 5), could not be put to rest (6), the
            job or the input is bad (2), or an internal error (1).
    """
    inp, out = Path(input_dir), Path(output)
    work = _work_dir(out, work_dir)
    summary = batchrun.run_job(_job(inp, work, Path(job_file), overrides), progress=progress)
    return _finish(summary, inp, out)


async def aenrich_reviews(
    input_dir: str | Path,
    output: str | Path,
    *,
    job_file: str | Path = JOB_FILE,
    work_dir: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> RunSummary:
    """`enrich_reviews` for callers already inside an event loop (same arguments, same result).

    Cancelling the task stops the run; what finished is committed and the endpoint is paused.

    Raises:
        batchrun.BatchrunError: as `enrich_reviews`.
    """
    inp, out = Path(input_dir), Path(output)
    work = _work_dir(out, work_dir)
    job = _job(inp, work, Path(job_file), overrides)
    summary = await batchrun.arun_job(job, progress=progress)
    # reading and joining a few files is quick, but keep the loop free for other steps
    return await asyncio.to_thread(_finish, summary, inp, out)


def _finish(summary: RunSummary, input_dir: Path, output: Path) -> RunSummary:
    if summary.exit_code not in SETTLED:
        log.warning(
            "batchrun stopped early (%s, exit %d): %s not written; run the step again to resume",
            summary.stop_reason,
            summary.exit_code,
            output,
        )
        return summary
    table = join_results(
        ds.dataset(input_dir, format="parquet").to_table(),
        results=Path(summary.output),
        errors=Path(summary.errors_path),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, output)  # readers see the old table or the new one, never half of one
    log.info("wrote %d rows to %s (%d errors)", table.num_rows, output, summary.errors_total)
    return summary


def join_results(inputs: pa.Table, *, results: Path, errors: Path) -> pa.Table:
    """The input rows, in input order, plus `sentiment`, `sentiment_score` and `error`."""
    if results.exists():
        res = ds.dataset(results, format="parquet").to_table(columns=["id", "labels"])
    else:  # every row failed
        res = pa.table({"id": pa.array([], pa.string()), "labels": pa.array([], pa.null())})
    top = pc.list_element(res["labels"], 0) if res.num_rows else None
    answers = pa.table(
        {
            ID: res["id"].cast(pa.string()),
            "sentiment": pc.struct_field(top, "label") if top else pa.array([], pa.string()),
            "sentiment_score": pc.struct_field(top, "score") if top else pa.array([], pa.float64()),
        }
    )
    failed = (
        [orjson.loads(line) for line in errors.read_bytes().splitlines()] if errors.exists() else []
    )
    error_col = pa.table(
        {
            ID: pa.array([str(e["id"]) for e in failed], pa.string()),
            "error": pa.array([str(e["status"]) for e in failed], pa.string()),
        }
    )
    order = "__row"
    table = inputs.append_column(order, pa.array(range(inputs.num_rows), pa.int64()))
    table = table.join(answers, ID, join_type="left outer")
    table = table.join(error_col, ID, join_type="left outer")
    return table.sort_by(order).drop_columns([order])


def main(argv: list[str]) -> int:
    """Run the step from the command line; print batchrun's summary as JSON."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # this step's own lines; batchrun's warnings (retries, stops)
    input_dir = Path(argv[1]) if len(argv) > 1 else HERE / "data" / "reviews"
    output = (
        Path(argv[2]) if len(argv) > 2 else HERE.parent / "out/pipeline/reviews_enriched.parquet"
    )
    summary = enrich_reviews(input_dir, output, progress=True)  # 1/2/5/6 raise: a traceback
    print(json.dumps(summary.to_json()))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
