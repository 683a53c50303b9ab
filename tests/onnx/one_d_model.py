#!/usr/bin/env python3
"""Writes a small 1-D convolutional ONNX model (onnx.helper, no torch) with ONNX Runtime's outputs.

Usage: one_d_model.py DIR  ->  DIR/model.onnx, DIR/data.npz (x, and y = ONNX Runtime's output)

The graph covers what pock lifts from 1-D to 2-D (compiler/src/onnx/import_1d.rs): Conv with
padding, stride, dilation and groups, BatchNormalization on [N, C, L], MaxPool and AveragePool
with padding, GlobalAveragePool over a sequence; then Flatten and Gemm.
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
rng = np.random.default_rng(7)


def init(name, *shape, scale=0.5):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


N, C, L = 4, 3, 23
inits = [
    init("w1", 8, C, 5), init("b1", 8),
    init("w2", 8, 2, 3), init("b2", 8),
    numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "gamma"),
    init("beta", 8),
    init("mean", 8, scale=0.1),
    numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "var"),
    init("fc_w", 5, 8), init("fc_b", 5),
]
nodes = [
    helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 1], strides=[2]),
    # ReLU before the normalisation, so that b1 has a gradient when it trains with batch statistics.
    helper.make_node("Relu", ["c1"], ["n1"]),
    helper.make_node("BatchNormalization", ["n1", "gamma", "beta", "mean", "var"], ["r1"], epsilon=1e-5),
    helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[2, 2], dilations=[2], group=4),
    helper.make_node("MaxPool", ["c2"], ["p1"], kernel_shape=[3], pads=[1, 1], strides=[2]),
    helper.make_node("AveragePool", ["p1"], ["p2"], kernel_shape=[2], strides=[1], pads=[0, 1], count_include_pad=0),
    helper.make_node("GlobalAveragePool", ["p2"], ["g"]),
    helper.make_node("Flatten", ["g"], ["f"]),
    helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
]
graph = helper.make_graph(
    nodes,
    "one_d",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, L])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, 5])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
onnx.checker.check_model(model)
os.makedirs(out, exist_ok=True)
onnx.save(model, os.path.join(out, "model.onnx"))
x = rng.standard_normal((N, C, L)).astype(np.float32)
y = ort.InferenceSession(os.path.join(out, "model.onnx")).run(None, {"x": x})[0]
np.savez(os.path.join(out, "data.npz"), x=x, y=y)
print("wrote", out, "output", y.shape)
