"""Build an ONNX sentence encoder straight from a BERT checkpoint (``config.json`` + ``model.safetensors``).

No PyTorch: the graph is written node by node with ``onnx.helper`` from the checkpoint's weights, with
mean pooling and L2 normalisation inside it, so one ONNX Runtime call turns token ids into unit
vectors. ``quantize`` then makes the int8 variant (dynamic, per output channel) that the local
embedder runs by default: about a third of the memory traffic, and fast integer kernels on CPUs that
have them (AVX-512 VNNI, AVX2).

The graph is checked against a plain numpy forward pass in the tests, and against
sentence-transformers' reference vectors for the bundled model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = ["BertConfig", "build_encoder", "load_config", "load_weights", "quantize"]

OPSET = 18
MS = "com.microsoft"


@dataclass(frozen=True, slots=True)
class BertConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int
    hidden_act: str = "gelu"

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


def load_config(model_dir: Path) -> BertConfig:
    raw = json.loads((model_dir / "config.json").read_text())
    if raw.get("model_type") != "bert":
        raise ValueError(f"{model_dir}: only BERT checkpoints are supported, not {raw.get('model_type')!r}")
    if raw.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{model_dir}: activation {raw.get('hidden_act')!r} is not supported")
    return BertConfig(
        hidden_size=int(raw["hidden_size"]),
        num_hidden_layers=int(raw["num_hidden_layers"]),
        num_attention_heads=int(raw["num_attention_heads"]),
        intermediate_size=int(raw["intermediate_size"]),
        layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
    )


def load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    # Some checkpoints prefix every name with the architecture ("bert.embeddings...").
    return {name.removeprefix("bert."): value for name, value in weights.items()}


class _Graph:
    """Collects nodes and initialisers; every helper returns the name of its output."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def weight(self, key: str, transpose: bool = False) -> str:
        value = self.weights[key].astype(np.float32)
        return self.const(value.T if transpose else value, key.replace(".", "_"))

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op("LayerNormalization", [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")],
                       axis=-1, epsilon=eps)

    def residual_norm(self, x: str, skip: str, prefix: str, eps: float) -> str:
        """LayerNorm(x + dense bias + skip). Left as Add and LayerNormalization on purpose: ONNX Runtime's
        fused SkipLayerNormalization kernel is several times slower on CPU (see ``SESSION_DISABLED``)."""
        biased = self.op("Add", [x, self.weight(f"{prefix}.dense.bias")])
        return self.layer_norm(self.op("Add", [biased, skip]), f"{prefix}.LayerNorm", eps)


def build_encoder(config: BertConfig, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Inputs ``input_ids`` and ``attention_mask`` (int64, batch x length); output ``embedding``
    (float32, batch x hidden), mean-pooled over the unmasked tokens and L2-normalised."""
    from onnx import TensorProto, checker, helper

    g = _Graph(weights)
    heads, hidden = config.num_attention_heads, config.hidden_size

    def i64(*values: int) -> str:
        return g.const(np.array(values, np.int64), "shape")

    # Embeddings: word + position (0..L-1) + token type 0, then LayerNorm.
    words = g.op("Gather", [g.weight("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    length = g.op("Shape", ["input_ids"], start=1, end=2)
    pos = g.op("Slice", [g.weight("embeddings.position_embeddings.weight"), i64(0), length, i64(0)])
    token_type = g.const(weights["embeddings.token_type_embeddings.weight"][0].astype(np.float32), "token_type")
    x = g.op("Add", [g.op("Add", [words, pos]), token_type])
    x = g.layer_norm(x, "embeddings.LayerNorm", config.layer_norm_eps)

    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask_index = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
    eps = config.layer_norm_eps
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}"
        # One fused self-attention: Q, K and V projections packed into one hidden x 3·hidden weight.
        qkv = [f"{p}.attention.self.{part}" for part in ("query", "key", "value")]
        packed = g.const(np.concatenate([weights[f"{name}.weight"].T for name in qkv], axis=1).astype(np.float32),
                         f"{p}_qkv_weight")
        packed_bias = g.const(np.concatenate([weights[f"{name}.bias"] for name in qkv]).astype(np.float32),
                              f"{p}_qkv_bias")
        context = g.op("Attention", [x, packed, packed_bias, mask_index], domain=MS, num_heads=heads)
        attended = g.op("MatMul", [context, g.weight(f"{p}.attention.output.dense.weight", transpose=True)])
        x = g.residual_norm(attended, x, f"{p}.attention.output", eps)
        inner = g.op("MatMul", [x, g.weight(f"{p}.intermediate.dense.weight", transpose=True)])
        inner = g.op("BiasGelu", [inner, g.weight(f"{p}.intermediate.dense.bias")], domain=MS)
        out = g.op("MatMul", [inner, g.weight(f"{p}.output.dense.weight", transpose=True)])
        x = g.residual_norm(out, x, f"{p}.output", eps)

    # Mean pooling over attended tokens, then L2 normalisation.
    weights3 = g.op("Unsqueeze", [mask, i64(2)])
    summed = g.op("ReduceSum", [g.op("Mul", [x, weights3]), i64(1)], keepdims=0)
    counts = g.op("Clip", [g.op("ReduceSum", [weights3, i64(1)], keepdims=0),
                           g.const(np.array(1e-9, np.float32), "tiny")])
    pooled = g.op("Div", [summed, counts])
    norm = g.op("Clip", [g.op("ReduceL2", [pooled, i64(1)], keepdims=1),
                         g.const(np.array(1e-12, np.float32), "tiny")])
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["embedding"]))

    graph = helper.make_graph(
        g.nodes, "sentence_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="thinktank")
    model.ir_version = 8
    checker.check_model(model)
    return model


def quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights, one scale per output channel (per-tensor
    scales lose too much: cosine to fp32 falls to about 0.94 for this model)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Attention"],
                     # Shape inference cannot type the outputs of contrib ops (Attention); they are float.
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
