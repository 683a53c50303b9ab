#!/usr/bin/env python3
"""Writes small ONNX models (onnx.helper, no torch) with ONNX Runtime's outputs for them.

Usage: more_models.py DIR  ->  DIR/NAME/model.onnx and DIR/NAME/data.npz (x, and y = ONNX
Runtime's output) for each NAME below; prints the names.

- one_d: what pock lifts from 1-D to 2-D (compiler/src/onnx/import_1d.rs): Conv with padding,
  stride, dilation and groups, BatchNormalization on [N, C, L], MaxPool and AveragePool with
  padding, GlobalAveragePool over a sequence; then Flatten and Gemm.
- lstm_*, gru_*: LSTM and GRU nodes (compiler/src/onnx/import_rnn.rs) in their directions,
  layouts and GRU's two reset forms, with and without bias and initial states; the output adds
  the mean of Y over the sequence to Y_h (and Y_c), so every output is checked.
"""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

root = sys.argv[1]
rng = np.random.default_rng(7)


def init(name, *shape, scale=0.5):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)




def save(name, graph, x_shape, reference="onnxruntime"):
    """ONNX Runtime computes the expected output; `reference="onnx"` takes onnx's own reference
    evaluator instead, for what ONNX Runtime's CPU kernels refuse (batch-first RNN layouts)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    onnx.save(model, os.path.join(out, "model.onnx"))
    x = rng.standard_normal(x_shape).astype(np.float32)
    if reference == "onnx":
        y = ReferenceEvaluator(model).run(None, {"x": x})[0]
    else:
        y = ort.InferenceSession(os.path.join(out, "model.onnx")).run(None, {"x": x})[0]
    np.savez(os.path.join(out, "data.npz"), x=x, y=y)
    print(name)


def one_d():
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
    save("one_d", graph, (N, C, L))

def recurrent(name, op, direction="forward", layout=0, bias=True, initial=True, linear_before_reset=None):
    S, N, I, H = 5, 3, 4, 6
    D = 2 if direction == "bidirectional" else 1
    G = 4 if op == "LSTM" else 3
    inits = [init("W", D, G * H, I), init("R", D, G * H, H)]
    inputs = ["x", "W", "R", "B" if bias else "", "", "h0" if initial else ""]
    if bias:
        inits.append(init("B", D, 2 * G * H))
    state = (D, N, H) if layout == 0 else (N, D, H)
    if initial:
        inits.append(init("h0", *state))
    outputs = ["Y", "Y_h"]
    if op == "LSTM":
        inputs.append("c0" if initial else "")
        if initial:
            inits.append(init("c0", *state))
        outputs.append("Y_c")
    while inputs and inputs[-1] == "":
        inputs.pop()
    attrs = dict(hidden_size=H, direction=direction, layout=layout)
    if linear_before_reset is not None:
        attrs["linear_before_reset"] = linear_before_reset
    # pock's data are batch-first: a sequence-first layer reads the input transposed and its
    # output is transposed back, as torch exports nn.LSTM(batch_first=True).
    nodes = []
    if layout == 0:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_seq"], perm=[1, 0, 2]))
        inputs[0] = "x_seq"
    nodes += [
        helper.make_node(op, inputs, outputs, **attrs),
        helper.make_node("ReduceMean", ["Y"], ["Y_mean"], axes=[0 if layout == 0 else 1], keepdims=0),
        helper.make_node("Add", ["Y_mean", "Y_h"], ["y1"]),
    ]
    if op == "LSTM":
        nodes.append(helper.make_node("Add", ["y1", "Y_c"], ["y2"]))
    last = "y2" if op == "LSTM" else "y1"
    nodes.append(helper.make_node("Transpose", [last], ["y"], perm=[1, 0, 2]) if layout == 0 else helper.make_node("Identity", [last], ["y"]))
    x_shape = (N, S, I)
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, D, H])],
        inits,
    )
    save(name, graph, x_shape, "onnx" if layout == 1 else "onnxruntime")


def sequence_first():
    """An LSTM on [S, N, I] (torch's nn.LSTM without batch_first): its input's first axis is the
    sequence, so pock must refuse it at compile time, saying how to export it. Printed as
    `refuse NAME`."""
    S, N, I, H = 5, 3, 4, 6
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["Y", "Y_h"], hidden_size=H)],
        "sequence_first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [S, N, I])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, N, H])],
        [init("W", 1, 4 * H, I), init("R", 1, 4 * H, H)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    out = os.path.join(root, "sequence_first")
    os.makedirs(out, exist_ok=True)
    onnx.save(model, os.path.join(out, "model.onnx"))
    print("refuse sequence_first")


one_d()
sequence_first()
recurrent("lstm", "LSTM")
recurrent("lstm_bi_batch_first_no_bias", "LSTM", "bidirectional", layout=1, bias=False, initial=False)
recurrent("gru_pytorch", "GRU", linear_before_reset=1)
recurrent("gru_reverse_reset_first", "GRU", "reverse", layout=1, linear_before_reset=0)
recurrent("gru_bi_no_initial", "GRU", "bidirectional", initial=False, linear_before_reset=1)
