#!/usr/bin/env python3
"""Regenerates the ONNX backend node test cases into OUTDIR.

The `onnx` wheel ships the generator scripts (`onnx.backend.test.case.node`) but not their data, so
this writes each case the way `onnx.backend.test.cmd_tools generate-data` does:
OUTDIR/node/<case>/model.onnx and OUTDIR/node/<case>/test_data_set_<i>/{input,output}_<j>.pb, one
serialized TensorProto per graph input and output. Inputs that are sequences, maps or optionals are
written as their own protos, which pock's runner reports as unsupported.

pock reads opsets 13 to 21, and the generators write each case at the newest version of its op
(up to opset 28, IR 14). A case outside that range is rewritten to the nearest opset pock reads
(21 or 13) by ONNX's own version converter, whose adapters encode what changed between versions
(most changes from 22 on only add element types). The original opset is kept in the case's
`converted_from` file, and the runner counts such cases. Where the converter has no adapter (a
type the older opset lacks, or a semantic change it cannot express) the case is written unchanged
and pock refuses its opset, which the runner counts as a failure.

Usage: python3 generate.py OUTDIR   (needs `pip install onnx==1.23.*`; numpy comes with it)
"""

import os
import shutil
import sys
import time


def write_value(path, value_info, value, numpy_helper, TensorProto):
    kind = value_info.type
    if kind.HasField("map_type"):
        proto = numpy_helper.from_dict(value, value_info.name)
    elif kind.HasField("sequence_type"):
        proto = numpy_helper.from_list(value, value_info.name)
    elif kind.HasField("optional_type"):
        proto = numpy_helper.from_optional(value, value_info.name)
    elif isinstance(value, TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, value_info.name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


# The opsets pock's importer reads (compiler/src/onnx/error.rs, OPSETS).
POCK_OPSETS = range(13, 22)


def readable_by_pock(model, onnx):
    """The model rewritten to an opset pock reads, and the opset it declared; None when unchanged."""
    from onnx import helper, version_converter

    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions or versions[0] in POCK_OPSETS:
        return model, None
    target = POCK_OPSETS[-1] if versions[0] > POCK_OPSETS[-1] else POCK_OPSETS[0]
    try:
        converted = version_converter.convert_version(model, target)
        converted.ir_version = helper.find_min_ir_version_for(list(converted.opset_import))
        onnx.checker.check_model(converted)
    except Exception:
        return model, None
    return converted, versions[0]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: generate.py OUTDIR")
    out = sys.argv[1]
    start = time.monotonic()
    try:
        import onnx.backend.test.case.node as node_cases
        from onnx import TensorProto, numpy_helper
    except ImportError as e:
        sys.exit(f"generate.py: cannot import onnx ({e}); run `pip install onnx==1.23.*` for this python")

    import onnx

    cases = node_cases.collect_testcases()
    written = converted_count = 0
    for case in cases:
        case_dir = os.path.join(out, "node", case.name)
        if os.path.exists(case_dir):
            shutil.rmtree(case_dir)
        os.makedirs(case_dir)
        model, converted_from = readable_by_pock(case.model, onnx)
        if converted_from is not None:
            converted_count += 1
            with open(os.path.join(case_dir, "converted_from"), "w") as f:
                f.write(f"{converted_from}\n")
        with open(os.path.join(case_dir, "model.onnx"), "wb") as f:
            f.write(model.SerializeToString())
        graph = case.model.graph
        for i, (inputs, outputs) in enumerate(case.data_sets):
            data_dir = os.path.join(case_dir, f"test_data_set_{i}")
            os.makedirs(data_dir)
            for j, value in enumerate(inputs):
                write_value(os.path.join(data_dir, f"input_{j}.pb"), graph.input[j], value, numpy_helper, TensorProto)
            for j, value in enumerate(outputs):
                write_value(os.path.join(data_dir, f"output_{j}.pb"), graph.output[j], value, numpy_helper, TensorProto)
        written += 1
    print(
        f"generated {written} ONNX {onnx.__version__} node test cases into {out} in {time.monotonic() - start:.1f} s "
        f"({converted_count} converted to opset {POCK_OPSETS[0]}..{POCK_OPSETS[-1]})"
    )


if __name__ == "__main__":
    main()
