"""Small ONNX models of the ops pock imports by composition (tests/onnx_composite.rs).

Usage: composite_cases.py OUT_DIR

Writes one folder per case, in the ONNX backend node tests' layout: `model.onnx`, and
`test_data_set_0/input_K.pb` (the data inputs, in graph order) and `output_0.pb` (the expected
output, computed by onnxruntime; by onnx's reference evaluator for the few cases onnxruntime does
not implement, which `reference` in the case's `source` file names). Cases named `grad_*` are the
models whose parameter gradients the test checks against finite differences (their float
initializers are pock's trainable parameters). Inputs come from a fixed numpy seed.
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(1234)


def rand(*shape, scale=1.0):
    return (RNG.uniform(-1.0, 1.0, size=shape) * scale).astype(np.float32)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def write(out, name, nodes, inputs, initializers, opset=17, use_reference=False, expected=None):
    """One case: `inputs` maps data input names to arrays, in graph order; the output is `y`
    (`expected`, when given, is the output computed from the ONNX spec's formula in numpy, for
    cases neither onnxruntime nor onnx's reference evaluator computes as the spec says)."""
    graph_inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()]
    graph_output = helper.make_empty_tensor_value_info("y")
    graph = helper.make_graph(nodes, name, graph_inputs, [graph_output], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 10
    feeds = dict(inputs)
    if expected is not None:
        y = expected
        source = "numpy"
    elif use_reference:
        from onnx.reference import ReferenceEvaluator

        (y,) = ReferenceEvaluator(model).run(None, feeds)
        source = "reference"
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, feeds)
        source = "onnxruntime"
    # The output's type and shape, now known, as exporters write them.
    y = np.asarray(y)
    elem = helper.np_dtype_to_tensor_dtype(y.dtype)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", elem, y.shape))
    if not (use_reference and opset == 18):  # the checker refuses GroupNormalization-18 as deprecated
        onnx.checker.check_model(model)
    d = os.path.join(out, name)
    os.makedirs(os.path.join(d, "test_data_set_0"), exist_ok=True)
    onnx.save(model, os.path.join(d, "model.onnx"))
    for k, (n, v) in enumerate(inputs.items()):
        with open(os.path.join(d, "test_data_set_0", f"input_{k}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(v, n).SerializeToString())
    with open(os.path.join(d, "test_data_set_0", "output_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(np.asarray(y), "y").SerializeToString())
    with open(os.path.join(d, "source"), "w") as f:
        f.write(source + "\n")


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def activations(out):
    x = {"x": rand(2, 3, 4, 5, scale=3.0)}
    write(out, "prelu_channel", [node("PRelu", ["x", "slope"])], x, [init("slope", rand(3, 1, 1))])
    write(out, "prelu_scalar", [node("PRelu", ["x", "slope"])], x, [init("slope", np.array([0.25], np.float32))])
    write(out, "prelu_last_axis", [node("PRelu", ["x", "slope"])], x, [init("slope", rand(5))])
    write(out, "mish", [node("Mish", ["x"])], {"x": rand(3, 7, scale=12.0)}, [], opset=18)
    write(out, "selu_default", [node("Selu", ["x"])], x, [])
    write(out, "selu_attributes", [node("Selu", ["x"], alpha=2.0, gamma=0.5)], x, [])
    write(out, "softsign", [node("Softsign", ["x"])], x, [])
    write(out, "global_max_pool", [node("GlobalMaxPool", ["x"])], x, [])
    write(out, "global_max_pool_1d", [node("GlobalMaxPool", ["x"])], {"x": rand(2, 3, 7)}, [])


def variadic(out):
    x = {"x": rand(2, 4, 5)}
    inits = [init("a", rand(4, 5)), init("b", rand(5))]
    write(out, "sum_three_broadcast", [node("Sum", ["x", "a", "b"])], x, inits)
    write(out, "sum_one", [node("Sum", ["x"])], x, [])
    write(out, "mean_three_broadcast", [node("Mean", ["x", "a", "b"])], x, inits)
    write(out, "mean_two", [node("Mean", ["x", "x"])], x, [])


def reductions(out):
    x = {"x": rand(2, 3, 4, 5, scale=2.0)}
    big = {"x": rand(2, 3, 4, 5, scale=80.0)}
    for op in ["ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]:
        low = op.lower()
        write(out, f"{low}_axis1_keep", [node(op, ["x"], axes=[1], keepdims=1)], x, [])
        write(out, f"{low}_axes23_drop", [node(op, ["x"], axes=[2, -1], keepdims=0)], x, [])
        write(out, f"{low}_all", [node(op, ["x"])], x, [])
        # Opset 18: axes as an input.
        write(out, f"{low}_axes_input", [node(op, ["x", "axes"], keepdims=0)], x, [init("axes", np.array([0, 2], np.int64))], opset=18)
        write(out, f"{low}_noop", [node(op, ["x"], noop_with_empty_axes=1)], x, [], opset=18)
    write(out, "reducelogsumexp_large", [node("ReduceLogSumExp", ["x"], axes=[3], keepdims=0)], big, [])
    positive = {"x": np.abs(rand(2, 3, 4, 5, scale=2.0)) + 0.1}
    for op, inputs in [("ReduceL1", x), ("ReduceLogSum", positive)]:
        low = op.lower()
        write(out, f"{low}_axis1_keep", [node(op, ["x"], axes=[1], keepdims=1)], inputs, [])
        write(out, f"{low}_axes23_drop", [node(op, ["x"], axes=[2, -1], keepdims=0)], inputs, [])
        write(out, f"{low}_all", [node(op, ["x"])], inputs, [])
        write(out, f"{low}_axes_input", [node(op, ["x", "axes"], keepdims=0)], inputs, [init("axes", np.array([0, 2], np.int64))], opset=18)
        write(out, f"{low}_noop", [node(op, ["x"], noop_with_empty_axes=1)], inputs, [], opset=18)


def argmax(out):
    # Ties: values rounded to halves, so the first and last maximum differ.
    x = {"x": np.round(rand(3, 4, 6, scale=2.0) * 2) / 2}
    write(out, "argmax_default", [node("ArgMax", ["x"])], x, [])
    write(out, "argmax_axis1_keep", [node("ArgMax", ["x"], axis=1, keepdims=1)], x, [])
    write(out, "argmax_last_axis_drop", [node("ArgMax", ["x"], axis=-1, keepdims=0)], x, [])
    write(out, "argmax_select_last", [node("ArgMax", ["x"], axis=2, keepdims=0, select_last_index=1)], x, [])
    write(out, "argmin_default", [node("ArgMin", ["x"])], x, [])
    write(out, "argmin_axis1_keep", [node("ArgMin", ["x"], axis=1, keepdims=1)], x, [])
    write(out, "argmin_select_last", [node("ArgMin", ["x"], axis=-1, keepdims=0, select_last_index=1)], x, [])


def norms(out):
    x = {"x": rand(2, 4, 3, 5, scale=3.0) + 1.0}
    write(out, "instance_norm", [node("InstanceNormalization", ["x", "s", "b"])], x, [init("s", rand(4)), init("b", rand(4))])
    write(
        out,
        "instance_norm_eps_3d",
        [node("InstanceNormalization", ["x", "s", "b"], epsilon=0.1)],
        {"x": rand(2, 3, 7)},
        [init("s", rand(3)), init("b", rand(3))],
    )
    # Opset 18: scale and bias per group; 21: per channel. onnxruntime implements neither on the
    # CPU, so onnx's reference evaluator computes the expected values.
    write(
        out,
        "group_norm_18",
        [node("GroupNormalization", ["x", "s", "b"], num_groups=2, epsilon=1e-3)],
        x,
        [init("s", rand(2)), init("b", rand(2))],
        opset=18,
        use_reference=True,
    )
    write(
        out,
        "group_norm_21",
        [node("GroupNormalization", ["x", "s", "b"], num_groups=2)],
        x,
        [init("s", rand(4)), init("b", rand(4))],
        opset=21,
        use_reference=True,
    )
    write(
        out,
        "group_norm_21_one_group",
        [node("GroupNormalization", ["x", "s", "b"], num_groups=1)],
        x,
        [init("s", rand(4)), init("b", rand(4))],
        opset=21,
        use_reference=True,
    )


def resize(out):
    x = {"x": rand(2, 3, 4, 5)}
    scales = lambda name, v: init(name, np.array(v, np.float32))  # noqa: E731
    sizes = lambda name, v: init(name, np.array(v, np.int64))  # noqa: E731
    empty = init("roi", np.array([], np.float32))
    cases = [
        # PyTorch's nearest upsample and its bilinear ones (align_corners False and True).
        ("resize_nearest_asymmetric_floor_x2", dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 2, 2], None),
        ("resize_linear_pytorch_half_pixel_x2", dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), [1, 1, 2, 2], None),
        ("resize_linear_align_corners_sizes", dict(mode="linear", coordinate_transformation_mode="align_corners"), None, [2, 3, 7, 9]),
        ("resize_linear_half_pixel_down", dict(mode="linear"), [1, 1, 0.5, 0.6], None),
        ("resize_linear_asymmetric_x3", dict(mode="linear", coordinate_transformation_mode="asymmetric"), [1, 1, 3, 1.5], None),
        ("resize_nearest_default_up", dict(mode="nearest"), [1, 1, 1.5, 2.5], None),
        ("resize_nearest_round_prefer_ceil_sizes", dict(mode="nearest", nearest_mode="round_prefer_ceil"), None, [2, 3, 3, 8]),
        ("resize_nearest_ceil_align_corners", dict(mode="nearest", nearest_mode="ceil", coordinate_transformation_mode="align_corners"), [1, 1, 2, 0.8], None),
        ("resize_cubic_half_pixel", dict(mode="cubic"), [1, 1, 1.5, 2], None),
        ("resize_cubic_a05_exclude_outside", dict(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1), [1, 1, 2, 0.6], None),
        ("resize_linear_channels_too", dict(mode="linear"), [1, 2, 2, 1], None),
    ]
    for name, attrs, sc, sz in cases:
        if sc is not None:
            write(out, name, [node("Resize", ["x", "roi", "scales"], **attrs)], x, [empty, scales("scales", sc)])
        else:
            write(out, name, [node("Resize", ["x", "roi", "", "sizes"], **attrs)], x, [empty, sizes("sizes", sz)])
    # Opset 18: axes, keep_aspect_ratio_policy, antialias, half_pixel_symmetric.
    write(
        out,
        "resize_axes_sizes_not_larger",
        [node("Resize", ["x", "", "", "sizes"], mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger")],
        x,
        [sizes("sizes", [8, 7])],
        opset=18,
    )
    write(out, "resize_linear_antialias_down", [node("Resize", ["x", "", "scales"], mode="linear", antialias=1)], x, [scales("scales", [1, 1, 0.5, 0.6])], opset=18)
    write(out, "resize_cubic_antialias_down", [node("Resize", ["x", "", "scales"], mode="cubic", antialias=1)], x, [scales("scales", [1, 1, 0.75, 0.4])], opset=18)
    write(
        out,
        "resize_linear_half_pixel_symmetric",
        [node("Resize", ["x", "", "scales"], mode="linear", coordinate_transformation_mode="half_pixel_symmetric")],
        x,
        [scales("scales", [1, 1, 1.7, 0.7])],
        opset=19,
    )


def conv_transpose(out):
    x = {"x": rand(2, 4, 3, 5)}
    cases = [
        ("convtranspose_plain", dict(), (4, 3, 3, 3), True),
        ("convtranspose_stride2_pad1_outpad1", dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), (4, 2, 3, 3), True),
        ("convtranspose_stride2_kernel2", dict(strides=[2, 2]), (4, 3, 2, 2), False),
        ("convtranspose_group2_dilation2", dict(group=2, dilations=[2, 1], strides=[1, 2], pads=[0, 1, 2, 0]), (4, 3, 3, 2), True),
        ("convtranspose_same_upper", dict(auto_pad="SAME_UPPER", strides=[2, 2]), (4, 2, 3, 3), False),
        ("convtranspose_same_lower", dict(auto_pad="SAME_LOWER", strides=[2, 3]), (4, 2, 3, 4), False),
        ("convtranspose_output_shape", dict(strides=[3, 2], output_shape=[10, 12]), (4, 2, 3, 3), True),
    ]
    for name, attrs, wshape, bias in cases:
        inputs = ["x", "w", "b"] if bias else ["x", "w"]
        inits = [init("w", rand(*wshape))]
        if bias:
            inits.append(init("b", rand(wshape[1] * attrs.get("group", 1))))
        write(out, name, [node("ConvTranspose", inputs, **attrs)], x, inits)


def scans(out):
    """IsNaN, IsInf, CumSum, GatherElements and GatherND (import_scan.rs). Bool outputs are cast to float,
    integer inputs are made from float ones with Cast, so the indices and sums are run-time."""
    x = rand(3, 5, scale=4.0)
    x[0, 1], x[1, 2], x[2, 0] = np.nan, np.inf, -np.inf
    def flag(name, n):
        write(out, name, [n, node("Cast", ["b"], to=TensorProto.FLOAT)], {"x": x}, [])
    flag("isnan", node("IsNaN", ["x"], ["b"]))
    flag("isinf_both", node("IsInf", ["x"], ["b"]))
    flag("isinf_positive", node("IsInf", ["x"], ["b"], detect_negative=0))
    flag("isinf_negative", node("IsInf", ["x"], ["b"], detect_positive=0))
    v = {"x": rand(2, 7, 3)}
    for axis in [0, 1, -1]:
        for exclusive in [0, 1]:
            for reverse in [0, 1]:
                write(
                    out,
                    f"cumsum_axis{axis % 3}_excl{exclusive}_rev{reverse}",
                    [node("CumSum", ["x", "axis"], exclusive=exclusive, reverse=reverse)],
                    v,
                    [init("axis", np.array(axis, np.int64))],
                )
    # RoBERTa's position ids: a cumulative sum of an int64 mask, exact.
    write(
        out,
        "cumsum_int64",
        [node("Cast", ["x"], ["i"], to=TensorProto.INT64), node("CumSum", ["i", "axis"])],
        {"x": np.round(rand(2, 9, scale=1e6)).astype(np.float32)},
        [init("axis", np.array([1], np.int64))],
    )
    # Run-time indices (from a float input), negative ones included; data a float initializer or
    # an int64 table; indices narrower than the data on the other axis.
    idx = RNG.integers(-4, 4, size=(3, 5)).astype(np.float32)
    cast = node("Cast", ["k"], ["i"], to=TensorProto.INT64)
    write(out, "gatherelements_axis1", [cast, node("GatherElements", ["d", "i"], axis=1)], {"k": idx}, [init("d", rand(4, 4))])
    write(out, "gatherelements_axis0", [cast, node("GatherElements", ["d", "i"], axis=0)], {"k": idx[:, :3]}, [init("d", rand(4, 6))])
    write(
        out,
        "gatherelements_int64",
        [cast, node("GatherElements", ["d", "i"], axis=-1)],
        {"k": idx[:2]},
        [init("d", RNG.integers(-9, 9, size=(2, 4)).astype(np.int64))],
    )
    # GatherND: run-time indices into the first two axes (a negative one included), batch_dims 1,
    # and HF BERT's pattern: a run-time bool mask picked by constant indices.
    pairs = np.array([[0, 1], [2, -1], [1, 3]], np.float32)
    write(out, "gathernd_k2", [cast, node("GatherND", ["d", "i"])], {"k": pairs}, [init("d", rand(3, 4, 5))])
    write(
        out,
        "gathernd_batch1",
        [cast, node("GatherND", ["d", "i"], batch_dims=1)],
        {"k": np.array([[2], [0]], np.float32)},
        [init("d", rand(2, 3, 4))],
    )
    grid = np.stack(np.meshgrid(np.arange(2), np.arange(5), indexing="ij"), -1).reshape(2, 1, 5, 2)[..., ::-1].copy()
    write(
        out,
        "gathernd_bool_mask",
        [
            node("Greater", ["x", "zero"], ["m"]),
            node("GatherND", ["m", "at"], ["g"]),
            node("Cast", ["g"], to=TensorProto.FLOAT),
        ],
        {"x": rand(5, 2)},
        [init("zero", np.array(0.0, np.float32)), init("at", grid.astype(np.int64))],
    )


def more(out):
    """DepthToSpace, SpaceToDepth, Einsum, OneHot, ReduceMin, Celu, ThresholdedRelu, Shrink,
    LpNormalization, MeanVarianceNormalization and Hardmax (import_more.rs)."""
    x = {"x": rand(2, 8, 3, 2)}
    for mode in ["DCR", "CRD"]:
        write(out, f"depthtospace_{mode.lower()}", [node("DepthToSpace", ["x"], blocksize=2, mode=mode)], x, [])
    write(out, "depthtospace_default", [node("DepthToSpace", ["x"], blocksize=2)], x, [])
    write(out, "spacetodepth", [node("SpaceToDepth", ["x"], blocksize=2)], {"x": rand(2, 3, 4, 6)}, [])
    write(out, "spacetodepth_b3", [node("SpaceToDepth", ["x"], blocksize=3)], {"x": rand(1, 2, 6, 3)}, [])
    # Einsum: the exporters' patterns, as operand shapes.
    for label, eq, shapes in [
        ("attention_scores", "bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
        ("attention_values", "bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)]),
        ("bmm", "bij,bjk->bik", [(3, 4, 5), (3, 5, 2)]),
        ("ellipsis_matmul", "...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 2)]),
        ("ellipsis_weight", "...ij,jk->...ik", [(2, 3, 4, 5), (5, 2)]),
        ("ellipsis_implicit", "...ij,...jk", [(3, 4, 5), (3, 5, 2)]),
        ("matmul", "ij,jk->ik", [(4, 5), (5, 3)]),
        ("matmul_transposed_out", "ij,jk->ki", [(4, 5), (5, 3)]),
        ("linear", "bti,oi->bto", [(2, 3, 4), (5, 4)]),
        ("transpose", "ij->ji", [(3, 5)]),
        ("permute", "abcd->cadb", [(2, 3, 4, 5)]),
        ("row_sum", "ij->i", [(3, 5)]),
        ("total", "ij->", [(3, 5)]),
        ("outer", "i,j->ij", [(4,), (3,)]),
        ("dot", "i,i->", [(6,), (6,)]),
        ("implicit", "ij,jk", [(4, 5), (5, 3)]),
        ("batch_outer", "bi,bj->bji", [(2, 4), (2, 3)]),
        ("sum_one_side", "bij,bk->bk", [(2, 3, 4), (2, 5)]),
        ("spaced", "b i j , b j k -> b i k", [(2, 3, 4), (2, 4, 2)]),
    ]:
        inputs = {f"x{k}": rand(*s) for k, s in enumerate(shapes)}
        write(out, f"einsum_{label}", [node("Einsum", list(inputs), equation=eq)], inputs, [])
    # OneHot: run-time int64 indices (negative and out of range ones too), axis variants, float
    # and int64 values (the int64 ones cast back to float), and constant indices.
    k = {"k": np.array([[0, 3, -1], [2, -4, 5]], np.float32)}
    cast = node("Cast", ["k"], ["i"], to=TensorProto.INT64)
    depth = init("depth", np.array(4, np.int64))
    values = init("values", np.array([-0.5, 2.0], np.float32))
    for axis in [-1, 0, 1, -3]:
        write(out, f"onehot_axis{axis % 3}_{'neg' if axis < 0 else 'pos'}", [cast, node("OneHot", ["i", "depth", "values"], axis=axis)], k, [depth, values])
    write(
        out,
        "onehot_int64_values",
        [cast, node("OneHot", ["i", "depth", "iv"], ["o"]), node("Cast", ["o"], ["y"], to=TensorProto.FLOAT)],
        k,
        [init("depth", np.array([6], np.int64)), init("iv", np.array([3, 7], np.int64))],
    )
    fdepth = init("depth", np.array([5.0], np.float32))
    write(out, "onehot_float_depth", [cast, node("OneHot", ["i", "depth", "values"])], k, [fdepth, values])
    write(out, "onehot_float_indices", [node("OneHot", ["k", "depth", "values"], axis=0)], k, [fdepth, values])
    write(
        out,
        "onehot_constant_indices",
        [node("OneHot", ["ci", "depth", "values"], ["o"]), node("Add", ["o", "x"], ["y"])],
        {"x": rand(3, 4)},
        [init("ci", np.array([1, 0, 3], np.int64)), depth, values],
    )
    r = {"x": rand(2, 3, 4)}
    write(out, "reducemin_all", [node("ReduceMin", ["x"])], r, [])
    write(out, "reducemin_axis1", [node("ReduceMin", ["x"], axes=[1])], r, [])
    write(out, "reducemin_axes_nokeep", [node("ReduceMin", ["x"], axes=[0, -1], keepdims=0)], r, [])
    b = {"x": rand(3, 4)}
    write(
        out,
        "reducemin_bool",
        [node("Greater", ["x", "t"], ["g"]), node("ReduceMin", ["g", "axes"], ["m"]), node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)],
        b,
        [init("t", np.array([-0.8], np.float32)), init("axes", np.array([1], np.int64))],
        opset=20,
    )
    write(out, "reducemin_18_input", [node("ReduceMin", ["x", "axes"], keepdims=0)], r, [init("axes", np.array([2], np.int64))], opset=18)
    a = {"x": rand(3, 4, 5, scale=3.0)}
    write(out, "celu_default", [node("Celu", ["x"])], a, [])
    write(out, "celu_alpha", [node("Celu", ["x"], alpha=0.4)], a, [])
    write(out, "thresholdedrelu_default", [node("ThresholdedRelu", ["x"])], a, [])
    write(out, "thresholdedrelu_alpha", [node("ThresholdedRelu", ["x"], alpha=-0.5)], a, [])
    write(out, "shrink_default", [node("Shrink", ["x"])], a, [])
    write(out, "shrink_lambd_bias", [node("Shrink", ["x"], lambd=1.2, bias=0.3)], a, [])
    for p in [1, 2]:
        write(out, f"lpnorm_p{p}", [node("LpNormalization", ["x"], p=p)], a, [])
        write(out, f"lpnorm_p{p}_axis0", [node("LpNormalization", ["x"], p=p, axis=0)], a, [])
        # A zero slice gives 0 (0 / 0 = 0 in onnx's reference, which these cases use). The reference's p=1
        # sums x without |x|, so that case is nonnegative (the ones above check |x| on onnxruntime).
        z = rand(3, 4, 5) if p == 2 else np.abs(rand(3, 4, 5))
        z[:, 1, 2] = 0.0
        write(out, f"lpnorm_p{p}_zero_slice", [node("LpNormalization", ["x"], p=p, axis=0)], {"x": z}, [], use_reference=True)
    m = {"x": rand(2, 3, 4, 5, scale=2.0) + 0.5}
    write(out, "mvn_default", [node("MeanVarianceNormalization", ["x"])], m, [])
    write(out, "mvn_axes", [node("MeanVarianceNormalization", ["x"], axes=[1, -1])], m, [])
    # Hardmax with ties (the first maximum wins) and axis variants.
    h = np.round(rand(3, 4, 5, scale=2.0))
    write(out, "hardmax_default", [node("Hardmax", ["x"])], {"x": h}, [])
    write(out, "hardmax_axis1", [node("Hardmax", ["x"], axis=1)], {"x": h}, [])
    write(out, "hardmax_axis0", [node("Hardmax", ["x"], axis=0)], {"x": h}, [])
    write(out, "hardmax_axis_neg2", [node("Hardmax", ["x"], axis=-2)], {"x": h}, [])


def volumes(out):
    """Conv, MaxPool and global pooling on [N, C, D, H, W] (import_3d.rs), attribute variants."""
    x = {"x": rand(2, 3, 5, 6, 7)}
    convs = [
        ("vol_conv_pad1_bias", dict(pads=[1] * 6), (4, 3, 3, 3, 3), True),
        ("vol_conv_stride_dilation", dict(strides=[2, 1, 2], dilations=[2, 1, 1], pads=[1, 0, 1, 2, 1, 0]), (4, 3, 2, 3, 2), False),
        ("vol_conv_depth1", dict(pads=[0, 1, 1, 0, 1, 1]), (5, 3, 1, 3, 3), True),
        ("vol_conv_same_upper", dict(auto_pad="SAME_UPPER", strides=[2, 2, 1]), (2, 3, 3, 2, 3), True),
        ("vol_conv_same_lower", dict(auto_pad="SAME_LOWER", strides=[3, 1, 2]), (2, 3, 2, 3, 3), False),
    ]
    for name, attrs, wshape, bias in convs:
        inputs = ["x", "w", "b"] if bias else ["x", "w"]
        inits = [init("w", rand(*wshape))] + ([init("b", rand(wshape[0]))] if bias else [])
        write(out, name, [node("Conv", inputs, **attrs)], x, inits)
    g = {"x": rand(2, 4, 4, 5, 5)}
    write(out, "vol_conv_group2", [node("Conv", ["x", "w", "b"], group=2, pads=[1, 0, 1, 1, 0, 1])], g, [init("w", rand(6, 2, 3, 2, 3)), init("b", rand(6))])
    write(out, "vol_conv_depthwise", [node("Conv", ["x", "w"], group=4, strides=[1, 2, 2])], g, [init("w", rand(4, 1, 2, 3, 3))])
    write(out, "vol_maxpool_2", [node("MaxPool", ["x"], kernel_shape=[2, 2, 2], strides=[2, 2, 2])], x, [])
    write(out, "vol_maxpool_pads", [node("MaxPool", ["x"], kernel_shape=[3, 3, 2], strides=[2, 1, 2], pads=[1, 1, 0, 1, 0, 1])], x, [])
    write(out, "vol_maxpool_dilated_depth", [node("MaxPool", ["x"], kernel_shape=[2, 2, 2], dilations=[2, 1, 1])], x, [], opset=17)
    write(out, "vol_avgpool_2", [node("AveragePool", ["x"], kernel_shape=[2, 2, 2], strides=[2, 2, 2])], x, [])
    write(out, "vol_avgpool_hw_pads", [node("AveragePool", ["x"], kernel_shape=[3, 2, 3], strides=[1, 2, 2], pads=[0, 1, 1, 0, 0, 1])], x, [])
    write(
        out,
        "vol_avgpool_count_pads",
        [node("AveragePool", ["x"], kernel_shape=[3, 3, 2], strides=[2, 1, 1], pads=[1, 1, 0, 1, 0, 1], count_include_pad=1)],
        x,
        [],
    )
    write(out, "vol_global_average", [node("GlobalAveragePool", ["x"])], x, [])
    write(out, "vol_global_max", [node("GlobalMaxPool", ["x"])], x, [])


def lrn_spec(x, size, alpha, beta, bias):
    """ONNX's LRN: the sum of squares over channels max(0, c - floor((size - 1) / 2)) to
    min(C - 1, c + ceil((size - 1) / 2))."""
    x64 = x.astype(np.float64)
    sq = np.zeros_like(x64)
    before, after = (size - 1) // 2, -(-(size - 1) // 2)
    for c in range(x.shape[1]):
        sq[:, c] = np.sum(x64[:, max(0, c - before) : min(x.shape[1], c + after + 1)] ** 2, axis=1)
    return (x64 / (bias + alpha / size * sq) ** beta).astype(np.float32)


def legacy(out):
    """LRN and Size (import_more.rs, import.rs). Upsample and Resize-10 are not here: pock reads
    opsets 13 to 21, and onnx.version_converter turns them into Resize."""
    x = {"x": rand(2, 7, 3, 4, scale=3.0)}
    write(out, "legacy_lrn_size5", [node("LRN", ["x"], size=5)], x, [])
    # onnxruntime takes odd sizes only, and onnx 1.23's reference evaluator loops over the batch
    # instead of the channels: an even size against the spec's formula.
    write(
        out,
        "legacy_lrn_size4_attrs",
        [node("LRN", ["x"], size=4, alpha=0.02, beta=0.5, bias=2.0)],
        x,
        [],
        expected=lrn_spec(x["x"], size=4, alpha=0.02, beta=0.5, bias=2.0),
    )
    write(out, "legacy_lrn_size1", [node("LRN", ["x"], size=1, alpha=0.3)], x, [])
    write(out, "legacy_lrn_size9_wider_than_channels", [node("LRN", ["x"], size=9, beta=1.0)], x, [])
    u = {"x": rand(2, 3, 3, 4)}
    # If on a static shape (torch's TorchScript export of LocalResponseNorm tests the rank): the
    # taken branch is imported in place; a branch may hold its own initializers.
    def branch(name, nodes, out, inits=()):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializer=list(inits))

    rank_is = [node("Shape", ["x"], ["s"]), node("Size", ["s"], ["r"])]
    then_ = branch("then", [node("Mul", ["x", "k"], ["t"]), node("Relu", ["t"], ["tr"])], "tr", [init("k", rand(4))])
    else_ = branch("else", [node("Neg", ["x"], ["e"])], "e")
    for name, rank in [("legacy_if_then", 4), ("legacy_if_else", 3)]:
        write(
            out,
            name,
            rank_is + [node("Equal", ["r", "want"], ["c"]), node("If", ["c"], ["y"], then_branch=then_, else_branch=else_)],
            u,
            [init("want", np.array(rank, np.int64))],
        )
    # Size folds to the element count.
    write(
        out,
        "legacy_size",
        [node("Size", ["x"], ["n"]), node("Cast", ["n"], ["f"], to=TensorProto.FLOAT), node("Mul", ["x", "f"], ["y"])],
        u,
        [],
    )


def gradient_models(out):
    """Chains whose parameter gradients the test checks against finite differences."""
    write(
        out,
        "grad_convtranspose_norm_prelu",
        [
            # No bias: the InstanceNormalization after it would make its gradient exactly zero.
            node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
            node("InstanceNormalization", ["t", "s", "b"], ["n"]),
            node("PRelu", ["n", "slope"], ["p"]),
            node("GlobalMaxPool", ["p"], ["g"]),
            node("Add", ["p", "g"], ["y"]),
        ],
        {"x": rand(2, 2, 3, 3)},
        [init("w", rand(2, 3, 3, 3)), init("s", rand(3) + 1.5), init("b", rand(3)), init("slope", rand(3, 1, 1))],
    )
    write(
        out,
        "grad_groupconv_transpose",
        [node("ConvTranspose", ["x", "w", "b"], ["y"], group=2, strides=[2, 1], dilations=[1, 2], pads=[0, 1, 1, 0])],
        {"x": rand(2, 4, 3, 3)},
        [init("w", rand(4, 2, 3, 2)), init("b", rand(4))],
    )
    write(
        out,
        "grad_resize_groupnorm_mish",
        [
            node("Mul", ["x", "p"], ["xp"]),
            node("Resize", ["xp", "", "scales"], ["r"], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
            node("GroupNormalization", ["r", "s", "b"], ["n"], num_groups=2),
            node("Mish", ["n"], ["m"]),
            node("Resize", ["m", "", "scales2"], ["q"], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
            node("Selu", ["q"], ["e"]),
            node("Softsign", ["e"], ["y"]),
        ],
        {"x": rand(2, 4, 3, 3)},
        [
            init("p", rand(4, 1, 1) + 1.5),
            init("scales", np.array([1, 1, 2, 1.5], np.float32)),
            init("scales2", np.array([1, 1, 0.5, 2], np.float32)),
            init("s", rand(4) + 1.5),
            init("b", rand(4)),
        ],
        opset=21,
        use_reference=True,
    )
    write(
        out,
        "grad_reductions",
        [
            node("Mul", ["x", "p"], ["xp"]),
            node("ReduceLogSumExp", ["xp"], ["lse"], axes=[2], keepdims=0),
            node("ReduceL2", ["xp"], ["l2"], axes=[2], keepdims=0),
            node("ReduceSumSquare", ["xp"], ["ss"], axes=[2], keepdims=0),
            node("Mean", ["l2", "lse", "ss"], ["m"]),
            node("Sum", ["m", "lse", "c"], ["y"]),
        ],
        {"x": rand(2, 3, 4)},
        [init("p", rand(3, 4) + 1.5), init("c", rand(3))],
    )
    # CumSum (both directions) and GatherElements (repeated indices: the scatter-add) on
    # parameters.
    write(
        out,
        "grad_cumsum_gather_elements",
        [
            node("Mul", ["x", "p"], ["xp"]),
            node("CumSum", ["xp", "axis"], ["c"]),
            node("CumSum", ["c", "axis0"], ["r"], reverse=1, exclusive=1),
            node("GatherElements", ["q", "idx"], ["g"], axis=1),
            node("GatherND", ["t", "nd"], ["h"]),
            node("Add", ["r", "g"], ["s"]),
            node("Add", ["s", "h"], ["y"]),
        ],
        {"x": rand(2, 5)},
        [
            init("p", rand(2, 5) + 1.5),
            init("axis", np.array(1, np.int64)),
            init("axis0", np.array(0, np.int64)),
            init("q", rand(2, 3)),
            init("idx", np.array([[0, 2, 2, 1, -1], [1, 1, 0, 0, 2]], np.int64)),
            init("t", rand(3, 5)),
            init("nd", np.array([[2], [0]], np.int64)),
        ],
    )

    # DepthToSpace, SpaceToDepth, Einsum (batched, contraction and outer), LpNormalization,
    # MeanVarianceNormalization, Celu, Shrink, ThresholdedRelu and ReduceMin on parameters.
    write(
        out,
        "grad_more",
        [
            node("Mul", ["x", "p"], ["xp"]),
            node("DepthToSpace", ["xp"], ["d"], blocksize=2, mode="CRD"),
            node("SpaceToDepth", ["d"], ["s"], blocksize=2),
            node("DepthToSpace", ["s"], ["e"], blocksize=2),
            node("Einsum", ["e", "q"], ["f"], equation="bchw,cw->bhc"),
            node("Einsum", ["f", "f"], ["g"], equation="bhc,bkc->bhk"),
            node("Einsum", ["g", "r"], ["o"], equation="bhk,j->bhkj"),
            # Offsets and Celu break the normalisations' scale invariance, which would make the
            # gradients through them zero.
            node("Add", ["o", "c"], ["oc"]),
            node("LpNormalization", ["oc"], ["l"], axis=1),
            node("Celu", ["l"], ["lc"], alpha=0.7),
            node("LpNormalization", ["lc"], ["l1"], p=1, axis=-1),
            node("Add", ["l1", "oc"], ["m"]),
            node("MeanVarianceNormalization", ["m"], ["mv"], axes=[2, 3]),
            node("Shrink", ["mv"], ["sh"], lambd=0.2, bias=0.1),
            node("ThresholdedRelu", ["sh"], ["t"], alpha=-0.3),
            node("ReduceMin", ["t"], ["rm"], axes=[3], keepdims=1),
            node("Add", ["t", "rm"], ["y"]),
        ],
        {"x": rand(2, 8, 2, 3)},
        [init("p", rand(8, 1, 1) + 1.5), init("q", rand(2, 6) + 1.5), init("r", rand(3) + 1.5), init("c", rand(3))],
    )


    # LRN, ReduceL1 and ReduceLogSum, and a linear Resize, on parameters.
    write(
        out,
        "grad_legacy",
        [
            node("Mul", ["x", "p"], ["xp"]),
            node("LRN", ["xp"], ["l"], size=3, alpha=0.5, beta=0.75, bias=1.5),
            node("Resize", ["l", "", "scales"], ["u"], mode="linear"),
            node("ReduceL1", ["u"], ["r1"], axes=[3], keepdims=1),
            node("Mul", ["u", "u"], ["sq"]),
            node("Add", ["sq", "c"], ["sqc"]),
            node("ReduceLogSum", ["sqc"], ["r2"], axes=[2], keepdims=1),
            node("Add", ["u", "r1"], ["a"]),
            node("Add", ["a", "r2"], ["y"]),
        ],
        {"x": rand(2, 4, 3, 3)},
        [init("p", rand(4, 1, 1) + 1.5), init("scales", np.array([1, 1, 2, 1.5], np.float32)), init("c", np.abs(rand(4, 1, 1)) + 0.5)],
    )
    # A 3-D stem: Conv3d, BatchNorm3d (batch statistics), LeakyReLU, MaxPool3d, a grouped
    # Conv3d, AvgPool3d and global average pooling, as in video models.
    write(
        out,
        "grad_volume",
        [
            # No bias here: the BatchNormalization after it would make its gradient exactly zero.
            node("Conv", ["x", "w1"], ["c"], strides=[1, 2, 2], pads=[1, 1, 1, 1, 1, 1]),
            # pock imports BatchNormalization in its training form (batch statistics).
            node("BatchNormalization", ["c", "s", "bb", "mean", "var"], ["n"]),
            node("LeakyRelu", ["n"], ["r"], alpha=0.1),
            node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2, 2], strides=[1, 1, 1], pads=[1, 0, 0, 0, 1, 1]),
            node("Conv", ["p", "w2", "b2"], ["d"], group=2, pads=[0, 1, 1, 1, 1, 0]),
            node("AveragePool", ["d"], ["a"], kernel_shape=[2, 1, 2], pads=[0, 0, 1, 1, 0, 0], count_include_pad=1),
            node("GlobalAveragePool", ["a"], ["g"]),
            node("Add", ["a", "g"], ["y"]),
        ],
        {"x": rand(2, 2, 3, 5, 4)},
        [
            init("w1", rand(4, 2, 3, 3, 3)),
            init("s", rand(4) + 1.5),
            init("bb", rand(4)),
            init("mean", np.zeros(4, np.float32)),
            init("var", np.ones(4, np.float32)),
            init("w2", rand(4, 2, 2, 2, 3)),
            init("b2", rand(4)),
        ],
    )


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for make in [activations, variadic, reductions, argmax, norms, resize, conv_transpose, scans, more, volumes, legacy, gradient_models]:
        make(out)


if __name__ == "__main__":
    main()
