"""Give every GroupQueryAttention node tree-attention inputs.

The builder's graph derives each token's position from the attention mask, which
only describes a chain. Verifying a token tree needs two more facts per pass:
where each node sits (`position_ids`, past length + depth) and which earlier
tokens it may see (`attention_bias`, 0 for ancestors and -inf elsewhere). ORT's
GroupQueryAttention accepts both as optional inputs 9 and 10; this rewrite wires
them to graph inputs of those names so the runtime can feed them every pass.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

POSITION_IDS = "position_ids"
ATTENTION_BIAS = "attention_bias"
_POSITION_SLOT = 9
_BIAS_SLOT = 10


def add_tree_attention(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place; return how many attention nodes now take the tree inputs."""
    graph = model.graph
    names = {i.name for i in graph.input}
    if POSITION_IDS in names or ATTENTION_BIAS in names:
        raise ValueError("graph already has position_ids/attention_bias inputs; was it rewritten twice?")
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not nodes:
        raise ValueError("graph has no GroupQueryAttention node; only builder graphs can be rewritten")
    for node in nodes:
        while len(node.input) <= _BIAS_SLOT:
            node.input.append("")
        if node.input[_POSITION_SLOT] or node.input[_BIAS_SLOT]:
            raise ValueError(f"{node.name} already uses position_ids/attention_bias")
        node.input[_POSITION_SLOT] = POSITION_IDS
        node.input[_BIAS_SLOT] = ATTENTION_BIAS
    graph.input.append(helper.make_tensor_value_info(
        POSITION_IDS, TensorProto.INT64, ["batch_size", "sequence_length"]))  # [1, S]
    graph.input.append(helper.make_tensor_value_info(
        ATTENTION_BIAS, TensorProto.FLOAT, ["batch_size", 1, "sequence_length", "total_sequence_length"]))  # [1, 1, S, T]
    return len(nodes)


def rewrite_file(path: Path) -> int:
    """Rewrite a saved graph; its external weight file is left untouched."""
    model = onnx.load(str(path), load_external_data=False)
    count = add_tree_attention(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return count
