"""A small ONNX graph builder whose weights stream to an external data file as they are added.

Each initializer is written to disk when it is added and only its file offset stays
in the graph, so building a model holds one tensor at a time, never the model.
`linear` and `embedding` lay transcoded GGUF weights (gguf_transcode.Encoded) out
as MatMulNBits / GatherBlockQuantized nodes, with the offsets' side product.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .gguf_transcode import OFFSET_BLOCK, Encoded, default_zero_points

MS = "com.microsoft"
OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)]
ALIGN = 4096  # external tensors start on page boundaries, so ONNX Runtime can map them


class WeightFile:
    """Initializers appended to one external data file (None: kept inside the graph, for tests)."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self._file = open(self.path, "wb") if self.path is not None else None
        self.bytes = 0

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        array = np.ascontiguousarray(array)
        if self._file is None or array.nbytes < 1024:
            return numpy_helper.from_array(array, name)
        pad = (-self.bytes) % ALIGN
        self._file.write(b"\0" * pad)
        offset = self.bytes + pad
        self._file.write(memoryview(array.reshape(-1)).cast("B"))
        self.bytes = offset + array.nbytes
        tensor = TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


class Graph:
    """Nodes, initializers and the graph's inputs/outputs, built up in order."""

    def __init__(self, store: WeightFile, accuracy_level: int):
        self.store = store
        self.accuracy_level = accuracy_level
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._block_sums: dict[str, str] = {}  # x -> its 32-wide block sums, shared by the linears reading x
        self._constants: dict[tuple, str] = {}

    # --- plumbing -------------------------------------------------------------------------

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: list) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.store.tensor(name, array))
        return name

    def constant(self, values, dtype=np.int64) -> str:
        """A small constant (shapes, axes), one initializer per distinct value."""
        array = np.asarray(values, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer(f"const/{len(self._constants)}", array)
        return self._constants[key]

    def node(self, op: str, inputs: list[str], name: str, outputs: int | list[str] = 1,
             domain: str = "", **attrs) -> str | list[str]:
        names = outputs if isinstance(outputs, list) else [f"{name}/out{i}" if i else f"{name}/out"
                                                           for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "decoder", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=OPSETS, producer_name="edgespec")
        model.ir_version = 10
        return model

    # --- layers ---------------------------------------------------------------------------

    def weights(self, name: str, w: Encoded | np.ndarray, matmul: bool = True, gather: bool = False) -> "Weights":
        """Write a weight's initializers now (the arrays can go); `linear` and `embedding` use the record.
        w: Encoded blocks, or float32 W [N, K] (a plain MatMul). matmul / gather: for which uses."""
        if isinstance(w, np.ndarray):  # float: W^T for the product, W itself for lookups
            return Weights(name, n=w.shape[0], k=w.shape[1],
                           dense=self.initializer(f"{name}.weight", w.T) if matmul else None,
                           dense_rows=self.initializer(f"{name}.rows", w) if gather else None)
        n = w.weight.shape[0]
        zeros = w.zero_points if w.zero_points is not None or not gather else default_zero_points(w)
        return Weights(
            name, n=n, k=w.weight.shape[1] * w.block // w.planes, bits=w.bits, block=w.block, planes=w.planes,
            q=self.initializer(f"{name}.q", w.weight), scales=self.initializer(f"{name}.scales", w.scales),
            zero_points=None if zeros is None else self.initializer(f"{name}.zero_points", zeros),
            offsets=None if w.offset is None or not matmul else self.initializer(f"{name}.offsets", w.offset.T),
            offset_rows=None if w.offset is None or not gather else self.initializer(f"{name}.offset_rows", w.offset))

    def linear(self, x: str, w: "Weights", bias: np.ndarray | None = None, out: str | None = None) -> str:
        """x [.., K] @ W^T (+ bias) -> [.., N], named `out` if given."""
        name = w.name
        last = out if bias is None else None
        if w.dense:
            y = self.node("MatMul", [x, w.dense], name, outputs=[last] if last else 1)
        else:
            y = self._matmul_nbits(x, w, last)
        if bias is not None:
            y = self.node("Add", [y, self.initializer(f"{name}.bias", bias.astype(np.float32))], f"{name}/bias",
                          outputs=[out] if out else 1)
        return y

    def _matmul_nbits(self, x: str, w: "Weights", out: str | None) -> str:
        a = x if w.planes == 1 else self.node("Concat", [x] * w.planes, f"{w.name}/planes", axis=-1)  # [.., K*planes]
        inputs = [a, w.q, w.scales] + ([w.zero_points] if w.zero_points else [])
        main = [out] if out and not w.offsets else 1
        y = self.node("MatMulNBits", inputs, w.name, outputs=main, domain=MS, K=w.k * w.planes, N=w.n,
                      bits=w.bits, block_size=w.block, accuracy_level=self.accuracy_level)
        if not w.offsets:
            return y
        # w = s * (q - z) + offset: add (x summed over each 32-wide block) @ offset^T
        side = self.node("MatMul", [self._block_sum(x, w.k), w.offsets], f"{w.name}/offsets")  # [.., N]
        return self.node("Add", [y, side], f"{w.name}/add_offsets", outputs=[out] if out else 1)

    def _block_sum(self, x: str, k: int) -> str:
        if x not in self._block_sums:
            blocks = self.node("Reshape", [x, self.constant([0, 0, k // OFFSET_BLOCK, OFFSET_BLOCK])],
                               f"{x}/blocks")  # [B, S, K/32, 32]
            self._block_sums[x] = self.node("ReduceSum", [blocks, self.constant([-1])], f"{x}/block_sums",
                                            keepdims=0)  # [B, S, K/32]
        return self._block_sums[x]

    def embedding(self, ids: str, w: "Weights", name: str) -> str:
        """Rows `ids` [B, S] of the table -> [B, S, K] (GatherBlockQuantized + planes + offsets)."""
        if w.dense_rows:
            return self.node("Gather", [w.dense_rows, ids], name, axis=0)
        table = self.node("Reshape", [w.q, self.constant([w.n, -1])], f"{name}/table")  # [N, K*planes*bits/8]
        rows = self.node("GatherBlockQuantized", [table, ids, w.scales, w.zero_points], name, domain=MS,
                         bits=w.bits, block_size=w.block, gather_axis=0, quantize_axis=1)  # [B, S, K*planes]
        if w.planes > 1:
            split = self.node("Reshape", [rows, self.constant([0, 0, w.planes, w.k])], f"{name}/planes")
            rows = self.node("ReduceSum", [split, self.constant([2])], f"{name}/sum_planes", keepdims=0)  # [B, S, K]
        if not w.offset_rows:
            return rows
        picked = self.node("Gather", [w.offset_rows, ids], f"{name}/offsets", axis=0)  # [B, S, K/32]
        picked = self.node("Unsqueeze", [picked, self.constant([-1])], f"{name}/offsets_col")  # [B, S, K/32, 1]
        blocks = self.node("Reshape", [rows, self.constant([0, 0, w.k // OFFSET_BLOCK, OFFSET_BLOCK])],
                           f"{name}/blocks")
        summed = self.node("Add", [blocks, picked], f"{name}/add_offsets")
        return self.node("Reshape", [summed, self.constant([0, 0, w.k])], f"{name}/rows")


@dataclass
class Weights:
    """Initializer names of one weight matrix, written by Graph.weights."""
    name: str
    n: int                         # output features (rows of W)
    k: int                         # input features
    dense: str | None = None       # float32 W^T [K, N] of a plain MatMul
    bits: int = 4
    block: int = 32
    planes: int = 1
    q: str | None = None
    scales: str | None = None
    zero_points: str | None = None
    offsets: str | None = None     # float32 [K/32, N]: the side product's matrix
    offset_rows: str | None = None  # float32 [N, K/32]: the same, by row, for lookups
    dense_rows: str | None = None  # float32 [N, K] of a float table, for lookups
