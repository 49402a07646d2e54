"""A shard worker: a process that runs the shards its driver hands it, one at a time.

Started by the driver as `python -m batchrun.shards.worker` with pipes on stdin and stdout.
Each shard runs batchrun's own runner (`arun_job` over a `ShardReader`) against a `UrlTarget`
built from the driver's lease, with the shard's own outputs and run state under
`<output>.batchrun/shards/<k>/`: a shard never resumes, pauses or meters the endpoint.

The protocol is one JSON object a line. The driver sends `{"init": ...}` (the job, pickled, with
this worker's share of concurrency and rate; the URL and the headers, which carry the token and
so travel only through the pipe), then `{"shard": ...}` for each shard, `{"stop": reason,
"grace": seconds}` to stop, `{"hold": seconds}` for another shard's Retry-After, `{"end": true}` when there is no more work. The worker answers
`{"done": k, "summary": ...}` for each shard it finished and `{"stopped": k, ...}` for one it
was stopped in, and `{"hold": seconds}` when a Retry-After holds its dispatch (the
driver passes it on to the other workers). End of file on stdin means the driver died: the worker stops at once (no
grace), commits what completed, and exits.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import BatchrunError
from batchrun.io.readers import open_input
from batchrun.job import Job
from batchrun.shards.plan import Shard, ShardReader
from batchrun.summary import RunSummary, one_line

__all__ = ["decode_job", "encode_job", "main", "shard_job", "shard_output"]

log = logging.getLogger(__name__)


def shard_output(job: Job, index: int) -> Path:
    """Where shard `index` writes its results (its errors and run state sit beside them)."""
    suffix = ".parquet" if job.output.output_format == "parquet" else ".jsonl"
    return Path(job.output.state_dir) / "shards" / str(index) / f"results{suffix}"


def shard_job(job: Job, index: int) -> Job:
    """The job a shard runs: the job's own, with the shard's outputs and no limit (the plan
    applied it)."""
    output = dataclasses.replace(job.output, path=str(shard_output(job, index)))
    run = dataclasses.replace(job.run, limit=None)
    return dataclasses.replace(job, output=output, run=run)


def encode_job(job: Job) -> str:
    return base64.b64encode(pickle.dumps(job)).decode()


def decode_job(text: str) -> Job:
    job = pickle.loads(base64.b64decode(text))
    assert isinstance(job, Job)
    return job


class _Worker:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.control: Any = None
        self.stop: tuple[str, float | None] | None = None
        self.orphaned = False

    def read_stdin(self) -> None:
        """In a thread: every line from the driver into the inbox; None at end of file."""
        for line in sys.stdin.buffer:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            self.loop.call_soon_threadsafe(self._receive, message)
        self.loop.call_soon_threadsafe(self._receive, None)

    def _receive(self, message: dict[str, Any] | None) -> None:
        if message is None:
            self.orphaned = True
            self.stop = ("stopped", 0.0)
        elif "hold" in message:
            if self.control is not None:
                self.control.hold(float(message["hold"]))
            return
        elif "stop" in message:
            grace = message.get("grace")
            self.stop = (str(message["stop"]), None if grace is None else float(grace))
        else:
            self.inbox.put_nowait(message)
            return
        if self.control is not None:
            self.control.stop(self.stop[0], grace=self.stop[1])
        self.inbox.put_nowait(None)

    async def run(self) -> int:
        from batchrun.runner import RunControl, arun_job
        from batchrun.targets import UrlTarget

        init = await self.inbox.get()
        if init is None or "init" not in init:
            return 0
        job = decode_job(init["init"]["job"])
        url = str(init["init"]["url"])
        headers = {str(k): str(v) for k, v in init["init"]["headers"].items()}
        base = open_input(job.input, limit=job.run.limit, source=job.source)
        while self.stop is None:
            message = await self.inbox.get()
            if message is None or "end" in message:
                break
            shard = Shard.from_json(message["shard"])
            self.control = RunControl()
            self.control.on_hold = lambda seconds: _send({"hold": seconds})
            if self.stop is not None:
                self.control.stop(self.stop[0], grace=self.stop[1])
            try:
                summary = await arun_job(
                    shard_job(job, shard.index),
                    progress=False,
                    control=self.control,
                    target=UrlTarget(url, headers),
                    reader=ShardReader(base, shard),
                )
            except BatchrunError as e:
                part = e.summary if isinstance(e.summary, RunSummary) else None
                _send(
                    {
                        "failed": shard.index,
                        "error": one_line(e),
                        "exit_code": e.exit_code,
                        "summary": part.to_json() if part is not None else None,
                    }
                )
                return e.exit_code
            finally:
                self.control = None
            kind = "done" if summary.stop_reason is None else "stopped"
            _send({kind: shard.index, "summary": summary.to_json()})
        return 0


def _send(message: dict[str, Any]) -> None:
    try:
        sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the driver is gone; its successor reads the shard's state
        pass


def main() -> None:
    """The worker process's entry point."""
    logging.basicConfig(level=logging.WARNING, format=f"batchrun worker {os.getpid()}: %(message)s")
    loop = asyncio.new_event_loop()
    worker = _Worker(loop)
    threading.Thread(target=worker.read_stdin, daemon=True).start()
    try:
        code = loop.run_until_complete(worker.run())
    finally:
        loop.close()
    sys.stdout.flush()
    os._exit(code)  # the stdin thread may still be blocked in a read


if __name__ == "__main__":
    main()
