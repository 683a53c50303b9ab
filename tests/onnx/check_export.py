"""Checks that ONNX exported by `pock export --inference` runs in onnxruntime and gives pock's own
`infer` outputs.

The directories it reads are written by the Rust test `onnxruntime_runs_the_export` in
tests/export.rs (resnet18 and mobilenet_v2 from the fixtures, each trained 3 SGD-momentum steps by
pock, in DIR/MODEL-MODE), which then runs this script on them:

    python tests/onnx/check_export.py DIR

Needs only onnxruntime and numpy. Every output must be within 1e-4 of pock's, relative to the
larger of the value and the outputs' RMS (the scale the parity tests use), and the script prints
the largest difference found. Exit status 1 on a mismatch.
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

RELATIVE = 1e-4


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(sys.argv[1])
    dirs = [root] if (root / "model.onnx").exists() else sorted(p.parent for p in root.glob("*/model.onnx"))
    if not dirs:
        print(f"{root} holds no model.onnx (directly or one level down); write it with tests/export.rs's onnxruntime_runs_the_export first")
        return 1
    return max(check(d) for d in dirs)


def check(d: Path) -> int:
    x = np.load(d / "data.npz")["x"]
    want = np.load(d / "infer.npz")["y"]
    failed = False
    # Once as written (no graph rewrites, which reorder sums), once as a user runs it (onnxruntime's
    # default optimisations: BatchNormalization folded into Conv, fusions).
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(d / "model.onnx"), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        (got,) = session.run(None, {feed: x})
        if got.shape != want.shape:
            print(f"{level.name}: onnxruntime output shape {got.shape} differs from pock's {want.shape}")
            failed = True
            continue
        rms = float(np.sqrt(np.mean(want.astype(np.float64) ** 2)))
        scale = np.maximum(np.abs(want.astype(np.float64)), rms)
        rel = np.abs(got.astype(np.float64) - want) / scale
        worst = np.unravel_index(int(np.argmax(rel)), rel.shape)
        print(
            f"{d / 'model.onnx'} ({level.name}): {want.size} outputs of {x.shape[0]} samples, largest difference "
            f"{rel[worst]:.3e} of the scale (at {tuple(int(i) for i in worst)}: onnxruntime {got[worst]:.7g}, pock {want[worst]:.7g}), "
            f"limit {RELATIVE}"
        )
        if not rel[worst] <= RELATIVE:
            print(f"{level.name}: onnxruntime and pock disagree beyond the limit")
            failed = True
    if failed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
