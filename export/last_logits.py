"""Let the runtime ask for logits of only the last positions (`num_logits`).

The builder's graph projects every input position onto the vocabulary. A
prefill chunk needs only its last row, and the LM head is a large share of the
work (15% of the 1.5B Qwen's weights, 34% of the 0.5B's, counting scales), so
this rewrite slices the final hidden states to their last `num_logits` rows
before the head. Verification passes ask for all rows; prefill asks for one.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

NUM_LOGITS = "num_logits"
HEAD_OPS = {"MatMulNBits", "MatMul"}


def lm_head(graph: onnx.GraphProto, logits: str = "logits") -> onnx.NodeProto:
    """The node that projects hidden states onto the vocabulary (it produces `logits`)."""
    node = next((n for n in graph.node if logits in n.output), None)
    if node is None or node.op_type not in HEAD_OPS:
        found = node.op_type if node is not None else "nothing"
        raise ValueError(f"expected a MatMul/MatMulNBits producing '{logits}', found {found}; "
                         "only builder graphs can be rewritten")
    return node


def add_num_logits(model: onnx.ModelProto, logits: str = "logits") -> None:
    """Rewrite `model` in place: hidden[:, -num_logits:, :] feeds the LM head."""
    graph = model.graph
    if NUM_LOGITS in {i.name for i in graph.input}:
        raise ValueError(f"graph already has a {NUM_LOGITS} input; was it rewritten twice?")
    head = lm_head(graph, logits)
    hidden = head.input[0]
    sliced = hidden + "/last_rows"
    everything = np.array([np.iinfo(np.int64).max], np.int64)
    graph.initializer.extend([
        numpy_helper.from_array(everything, "num_logits/ends"),
        numpy_helper.from_array(np.array([1], np.int64), "num_logits/axes"),  # the sequence axis
    ])
    graph.node.extend([
        helper.make_node("Neg", [NUM_LOGITS], ["num_logits/starts"], name="/num_logits/Neg"),
        helper.make_node("Slice", [hidden, "num_logits/starts", "num_logits/ends", "num_logits/axes"],
                         [sliced], name="/num_logits/Slice"),
    ])
    head.input[0] = sliced
    graph.input.append(helper.make_tensor_value_info(NUM_LOGITS, TensorProto.INT64, [1]))
    _toposort(graph)


def _toposort(graph: onnx.GraphProto) -> None:
    """Nodes in dependency order (new nodes were appended after their consumer)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(x in ready for x in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a missing input: " + rest[0].name)
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def rewrite_file(path: Path) -> None:
    """Rewrite a saved graph; its external weight file is left untouched."""
    model = onnx.load(str(path), load_external_data=False)
    add_num_logits(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
