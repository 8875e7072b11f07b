"""onnx / onnx-int8 for causal LMs: one graph with the KV cache as inputs and outputs, then ONNX Runtime int8.

The graph takes ``input_ids``, ``attention_mask``, ``position_ids`` and ``past.{layer}.key|value`` (zero tokens long
on the first call) and returns ``logits`` and ``present.{layer}.key|value``, so one graph serves the prompt and every
decode step (``kubeforge.lm.inference.OnnxRunner``). It is exported with ``torch.onnx.export(dynamo=True)`` through
a wrapper that turns the flat cache tensors into the model's DynamicCache and back.

Tied embeddings: the exporter writes the table twice (for the Gather and, transposed, for the lm_head MatMul). The
fp32 graph keeps one copy and transposes it in the graph; ONNX Runtime folds that constant once, at load. The int8
graph quantises the lm_head weight (per-tensor int8) and makes the embedding Gather read those int8 rows and
dequantize them, so the table is stored once, in int8 — without that, int8 would be only ~2.4x smaller.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubeforge.compression.candidate import CompressionError
from kubeforge.lm.inference import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, past_names

# Exported and checked (logits against torch, prefill and decode, padded batches) on these architectures only: their
# decoder keeps a plain per-layer key/value cache (no sliding window, no recurrent state) and takes position ids.
ONNX_ARCHITECTURES = {"llama": "LlamaForCausalLM"}
_EXAMPLE_BATCH, _EXAMPLE_TOKENS, _EXAMPLE_PAST = 2, 3, 4  # not 0 or 1: torch.export would specialise those sizes


def check_onnx_export(model: Any) -> None:
    """The architecture must be one the KV-cache export is known to handle; named when it is not."""
    config = model.config
    model_type = getattr(config, "model_type", "?")
    architecture = type(model).__name__
    if model_type not in ONNX_ARCHITECTURES or architecture != ONNX_ARCHITECTURES[model_type]:
        known = ", ".join(ONNX_ARCHITECTURES.values())
        raise CompressionError(f"onnx export with a KV cache cannot handle {architecture} (model_type "
                               f"{model_type!r}); it supports {known}")
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"} or getattr(config, "sliding_window", None):
        raise CompressionError(f"onnx export with a KV cache cannot handle {architecture} with sliding-window "
                               f"attention (layer types {sorted(layer_types)})")


class _CacheInOut(torch.nn.Module):
    """Flat cache tensors in and out around a transformers causal LM."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)],
                             config=self.model.config)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, use_cache=True)
        present = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return (output.logits, *present)


def _cache_geometry(config: Any) -> tuple[int, int]:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv_heads, head_dim


def export_lm_onnx(model: Any) -> bytes:
    """The fp32 graph with the KV cache in and out (tied table stored once)."""
    import onnx

    check_onnx_export(model)
    model = model.float().cpu().eval()
    config = model.config
    layers, context = config.num_hidden_layers, config.max_position_embeddings
    kv_heads, head_dim = _cache_geometry(config)
    batch, tokens, past = _EXAMPLE_BATCH, _EXAMPLE_TOKENS, _EXAMPLE_PAST
    example = (torch.zeros(batch, tokens, dtype=torch.long), torch.ones(batch, past + tokens, dtype=torch.long),
               torch.arange(past, past + tokens).expand(batch, tokens).contiguous(),
               *[torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)])
    Dim = torch.export.Dim
    b, s = Dim("batch", min=1, max=4096), Dim("tokens", min=1, max=context)
    p, t = Dim("past", min=0, max=context), Dim("total", min=1, max=2 * context)
    dynamic = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: t}, "position_ids": {0: b, 1: s},
               "past": tuple({0: b, 2: p} for _ in range(2 * layers))}
    names = past_names(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                _CacheInOut(model).eval(), example, dynamo=True, dynamic_shapes=dynamic, verbose=False,
                input_names=[INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *names],
                output_names=[LOGITS, *past_names(layers, "present")])
        except Exception as exc:  # the exporter raises many types; the message is what a user needs
            raise CompressionError(f"onnx export of {type(model).__name__} failed: {type(exc).__name__}: "
                                   f"{str(exc)[:500]}") from None
    buffer = io.BytesIO()
    program.save(buffer)
    proto = onnx.load_from_string(buffer.getvalue())
    share_tied_table(proto)
    strip_node_metadata(proto)
    return proto.SerializeToString()


def strip_node_metadata(proto: Any) -> None:
    """In place: drop the exporter's per-node stack traces and names of torch modules (about half the file of a
    small model); they help debug the exporter, not run the graph."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _initializers(proto: Any) -> dict[str, Any]:
    return {item.name: item for item in proto.graph.initializer}


def _tied_pairs(proto: Any) -> list[tuple[str, str]]:
    """(Gather table, MatMul weight) initializer pairs where the weight is exactly the table transposed."""
    from onnx import numpy_helper

    initializers = _initializers(proto)
    tables = {node.input[0] for node in proto.graph.node if node.op_type == "Gather" and node.input[0] in initializers}
    weights = {node.input[1] for node in proto.graph.node if node.op_type == "MatMul" and node.input[1] in initializers}
    pairs = []
    for table in tables:
        values = numpy_helper.to_array(initializers[table])
        if values.ndim != 2:
            continue
        for weight in weights:
            if tuple(initializers[weight].dims) == values.shape[::-1] and np.array_equal(
                    numpy_helper.to_array(initializers[weight]), values.T):
                pairs.append((table, weight))
    return pairs


def share_tied_table(proto: Any) -> None:
    """In place: MatMuls read the transposed Gather table instead of their own transposed copy."""
    from onnx import helper

    graph = proto.graph
    for table, weight in _tied_pairs(proto):
        transposed = f"{table}_transposed"
        for node in graph.node:
            if node.op_type == "MatMul" and node.input[1] == weight:
                node.input[1] = transposed
        first_user = next(i for i, node in enumerate(graph.node) if transposed in node.input)
        graph.node.insert(first_user, helper.make_node("Transpose", [table], [transposed], perm=[1, 0],
                                                       name=f"{table}_tie"))
        graph.initializer.remove(_initializers(proto)[weight])


def quantize_lm_onnx(fp32: bytes) -> tuple[bytes, str]:
    """ONNX Runtime dynamic int8 of every MatMul weight; the tied table becomes the lm_head's int8 weight."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load_from_string(fp32)
    untied = _untie_for_quantization(proto)
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(proto.SerializeToString())
        import logging

        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the quantizer logs a generic "consider pre-processing" notice
        try:
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        finally:
            quiet.setLevel(level)
        quantized = onnx.load(str(target))
    for table, weight in untied:
        _gather_quantized_rows(quantized, table, weight)
    strip_node_metadata(quantized)
    how = "ONNX Runtime dynamic int8 (MatMul weights int8 per tensor, activations quantised per call)"
    if untied:
        how += "; the tied embedding reads the lm_head's int8 rows (one int8 table)"
    return quantized.SerializeToString(), how


def _untie_for_quantization(proto: Any) -> list[tuple[str, str]]:
    """Give each MatMul that reads a transposed Gather table its own transposed initializer again, so the quantizer
    sees a weight; returns the (table, weight) pairs."""
    from onnx import numpy_helper

    graph = proto.graph
    initializers = _initializers(proto)
    tables = {node.input[0] for node in graph.node if node.op_type == "Gather" and node.input[0] in initializers}
    untied = []
    for node in list(graph.node):
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if node.op_type != "Transpose" or node.input[0] not in tables or perm != [1, 0]:
            continue
        users = [user for user in graph.node if node.output[0] in user.input]
        if not users or any(user.op_type != "MatMul" or list(user.input).index(node.output[0]) != 1
                            for user in users):
            continue
        table = node.input[0]
        weight = f"{table}_lm_head_weight"
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(initializers[table]).T.copy(), weight))
        for user in users:
            user.input[1] = weight
        graph.node.remove(node)
        untied.append((table, weight))
    return untied


def _gather_quantized_rows(proto: Any, table: str, weight: str) -> None:
    """Replace Gather(fp32 table) by Dequantize(Gather(Transpose(int8 lm_head weight))) and drop the fp32 table."""
    from onnx import helper

    graph = proto.graph
    initializers = _initializers(proto)
    quantized, scale, zero = f"{weight}_quantized", f"{weight}_scale", f"{weight}_zero_point"
    if not {quantized, scale, zero} <= set(initializers) or len(initializers[scale].dims) > 0:
        return  # the quantizer did not take this weight per tensor: keep the fp32 table
    rows = f"{table}_int8_rows"
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "Gather" or node.input[0] != table:
            continue
        output = node.output[0]
        position = list(graph.node).index(node)
        graph.node.remove(node)
        replacement = [
            helper.make_node("Transpose", [quantized], [rows], perm=[1, 0], name=f"{table}_int8_table"),
            helper.make_node("Gather", [rows, node.input[1]], [f"{output}_int8"], axis=0, name=f"{node.name}_int8"),
            helper.make_node("DequantizeLinear", [f"{output}_int8", scale, zero], [output],
                             name=f"{node.name}_dequantize")]
        for offset, new in enumerate(replacement):
            graph.node.insert(position + offset, new)
    if not any(table in node.input for node in graph.node):
        graph.initializer.remove(initializers[table])


def onnx_parameters(data: bytes) -> int:
    """Weights stored in the graph (quantisation scales and zero points not counted)."""
    import onnx

    proto = onnx.load_from_string(data)
    return int(sum(int(np.prod(item.dims)) for item in proto.graph.initializer
                   if len(item.dims) >= 1 and not item.name.endswith(("_scale", "_zero_point"))
                   and item.data_type in (1, 3, 10, 16)))  # float, int8, float16, bfloat16 tensors
