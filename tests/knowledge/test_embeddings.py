"""The local embedder: the ONNX graph built from the bundled checkpoint against an independent numpy
forward pass and against sentence-transformers' own vectors; int8 close to fp32; batching, padding,
truncation and the on-disk cache."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from thinktank.knowledge import bert_onnx
from thinktank.knowledge.embeddings import (
    PREBUILT_ENCODER,
    LocalEmbedder,
    bundled_model_dir,
    vectors_from_bytes,
    vectors_to_bytes,
)

SENTENCES = [
    "The cat sat on the mat.",
    "A feline rested on a rug.",
    "Quantum chromodynamics describes the strong interaction.",
]
# sentence-transformers 5 with torch 2.13 (all-MiniLM-L6-v2 as bundled, normalised): the first six
# components of each sentence's vector.
REFERENCE = [
    [0.130237, -0.015773, -0.036717, 0.057986, -0.059792, 0.033054],
    [0.075187, 0.035609, 0.052022, 0.130971, -0.015531, 0.062051],
    [-0.111584, -0.007817, -0.024874, 0.086825, -0.057299, 0.083497],
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def fp32(cache_dir: Path) -> LocalEmbedder:
    return LocalEmbedder(cache_dir, quantized=False)


@pytest.fixture(scope="module")
def int8(cache_dir: Path) -> LocalEmbedder:
    return LocalEmbedder(cache_dir)


def numpy_forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BERT + mean pooling + L2 norm, written out in numpy from the checkpoint (a second implementation)."""
    model_dir = bundled_model_dir()
    config = bert_onnx.load_config(model_dir)
    w = bert_onnx.load_weights(model_dir)

    def norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        out: np.ndarray = (x - mean) / np.sqrt(var + config.layer_norm_eps) * w[f"{prefix}.weight"]
        out += w[f"{prefix}.bias"]
        return out

    def dense(x: np.ndarray, prefix: str) -> np.ndarray:
        out: np.ndarray = x @ w[f"{prefix}.weight"].T
        out += w[f"{prefix}.bias"]
        return out

    batch, length = ids.shape
    heads, size = config.num_attention_heads, config.head_size
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    bias = (1.0 - mask[:, None, None, :]) * -1e4
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}"
        q, k, v = (dense(x, f"{p}.attention.self.{part}").reshape(batch, length, heads, size).transpose(0, 2, 1, 3)
                   for part in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, heads * size)
        x = norm(dense(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        inner = dense(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1.0 + np.vectorize(math.erf)(inner / math.sqrt(2.0)))
        x = norm(dense(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    result: np.ndarray = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return result


def test_construction_loads_nothing(tmp_path: Path) -> None:
    embedder = LocalEmbedder(tmp_path / "models")
    assert not embedder.loaded
    assert not (tmp_path / "models").exists()


def test_graph_matches_a_numpy_forward_pass_with_padding(fp32: LocalEmbedder) -> None:
    rng = np.random.default_rng(7)
    ids = rng.integers(1000, 29000, size=(3, 12)).astype(np.int64)
    ids[:, 0], mask = 101, np.ones_like(ids)
    mask[1, 7:] = 0  # padded rows: the padding must not change the vector
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    ours = fp32._load().run(None, {"input_ids": ids, "attention_mask": mask})[0]
    reference = numpy_forward(ids, mask.astype(np.float64))
    assert np.abs(ours - reference).max() < 1e-4


async def test_fp32_matches_sentence_transformers(fp32: LocalEmbedder) -> None:
    vectors = await fp32.embed(SENTENCES)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(vectors[:, :6], np.array(REFERENCE), atol=2e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_int8_stays_close_to_fp32_and_keeps_meaning(fp32: LocalEmbedder, int8: LocalEmbedder) -> None:
    exact, quantized = await fp32.embed(SENTENCES), await int8.embed(SENTENCES)
    assert ((exact * quantized).sum(1) > 0.98).all()
    similarity = quantized @ quantized.T
    assert similarity[0, 1] > 0.4 > similarity[0, 2]
    assert similarity[0, 1] > similarity[1, 2]


async def test_batches_of_mixed_lengths_give_each_text_its_own_vector(fp32: LocalEmbedder) -> None:
    long = " ".join(["Proteins fold into shapes that decide what they do."] * 12)
    texts = [long, SENTENCES[0], "", long[:200], SENTENCES[2]]
    bulk = LocalEmbedder(fp32.cache_dir, quantized=False, batch_tokens=64, bulk_texts=2)
    together = await bulk.embed(texts)
    alone = np.vstack([await fp32.embed([t]) for t in texts])
    # The batch ran on the bulk session (its threads spin), each text alone on the query session.
    assert set(bulk._sessions) == {True} and True not in fp32._sessions
    assert np.abs(together - alone).max() < 1e-5
    bulk.close()
    assert (await fp32.embed([])).shape == (0, 384)


async def test_long_text_is_truncated_to_the_model_window(fp32: LocalEmbedder) -> None:
    words = " ".join(f"word{i}" for i in range(600))
    assert fp32.count_tokens(words) > 1000
    head = fp32._tokenizers()[0].decode(fp32._tokenizers()[0].encode(words).ids)
    truncated, cut = await fp32.embed([words, head])
    assert float(truncated @ cut) > 0.999


async def test_the_installed_int8_encoder_is_the_one_built_from_the_checkpoint(
    tmp_path: Path, int8: LocalEmbedder,
) -> None:
    """The package carries the int8 encoder its build made (hatch_build.py): it is used as it is, nothing is built
    into the data directory, and it answers exactly what the same build at run time answers."""
    assert int8._model_file(bundled_model_dir()) == bundled_model_dir() / PREBUILT_ENCODER
    installed = await int8.embed(SENTENCES)
    assert not list(int8.cache_dir.glob("encoder-*-int8.onnx"))
    built = LocalEmbedder(tmp_path / "models", model_dir=bundled_model_dir())
    try:
        assert np.abs(await built.embed(SENTENCES) - installed).max() < 1e-6
        assert len(list((tmp_path / "models").glob("encoder-*-int8.onnx"))) == 1
    finally:
        built.close()


async def test_model_file_is_built_once_and_reused(tmp_path: Path) -> None:
    cache_dir = tmp_path / "models"
    first_build = LocalEmbedder(cache_dir, model_dir=bundled_model_dir())
    await first_build.warm()
    files = sorted(cache_dir.glob("encoder-*-int8.onnx"))
    assert len(files) == 1 and not list(cache_dir.glob("*.tmp"))
    before = files[0].stat().st_mtime_ns
    again = LocalEmbedder(cache_dir, model_dir=bundled_model_dir())
    first, second = await asyncio.gather(again.embed(["alpha"]), again.embed(["beta"]))
    assert files[0].stat().st_mtime_ns == before
    assert first.shape == second.shape == (1, 384)
    again.close()
    first_build.close()


def test_vector_bytes_round_trip() -> None:
    vectors = np.random.default_rng(1).standard_normal((4, 384)).astype(np.float32)
    assert np.array_equal(vectors_from_bytes(vectors_to_bytes(vectors), 384), vectors)
    assert vectors_from_bytes([], 384).shape == (0, 384)
