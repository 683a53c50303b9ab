//! ONNX graphs written by `tests/onnx/more_models.py` (onnx.helper, no torch): a 1-D
//! convolutional model (Conv1d, BatchNorm1d, 1-D pooling, imported through their 2-D forms by
//! `compiler/src/onnx/import_1d.rs`) and LSTM and GRU layers in their directions and layouts
//! (unrolled by `compiler/src/onnx/import_rnn.rs`). For each: the forward of the plan compiled
//! from the graph against ONNX Runtime's outputs (onnx's reference evaluator where ONNX Runtime
//! refuses the layout), one training epoch, and the derived backward against finite differences.
//! Needs onnx, onnxruntime and numpy in `$POCK_PYTHON` (default `python3`); without them the test
//! says SKIP, and fails where `CI` is set, so CI cannot pass it silently.

mod common;

use std::path::Path;

use common::{pock, s, workdir};
use pock::compiler::gradcheck::{assert_close, check_model, STEP};
use pock::compiler::onnx::{import_file, ImportOptions, LossKind};

fn python() -> String {
    std::env::var("POCK_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The directory the script wrote its models into, and their names.
fn models() -> Option<(std::path::PathBuf, Vec<String>)> {
    let python = python();
    let has =
        std::process::Command::new(&python).args(["-c", "import onnx, onnxruntime, numpy"]).output().is_ok_and(|o| o.status.success());
    if !has {
        let what = format!("onnx, onnxruntime and numpy are not importable by {python}: set POCK_PYTHON to a python that has them");
        assert!(std::env::var_os("CI").is_none(), "{what}");
        println!("SKIP: 1-D ONNX model checks: {what}");
        return None;
    }
    let dir = workdir("onnx-more-models");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx/more_models.py");
    let o = std::process::Command::new(&python).arg(&script).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    Some((dir, names))
}

/// Array `y` of an .npz, through numpy.
fn values(path: &Path) -> Vec<f32> {
    let code = "import sys, numpy as np; print(' '.join(repr(float(v)) for v in np.load(sys.argv[1])['y'].ravel()))";
    let o = std::process::Command::new(python()).args(["-c", code, s(path)]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).split_whitespace().map(|v| v.parse().unwrap()).collect()
}

#[test]
fn more_models_match_their_references_and_finite_differences() {
    let Some((root, names)) = models() else { return };
    assert!(names.len() >= 7, "the script wrote only {names:?}");
    for line in &names {
        if let Some(name) = line.strip_prefix("refuse ") {
            // A sequence-first model: refused at compile time, saying how to export it.
            let o = pock(&["compile", s(&root.join(name).join("model.onnx")), "--loss", "mse", "-o", s(&root.join(name).join("m.pock"))]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains("first axis is not the batch") && err.contains("batch_first"), "{name}: {err}");
            continue;
        }
        let name = line;
        let dir = root.join(name);
        let (model, data, plan, out) = (dir.join("model.onnx"), dir.join("data.npz"), dir.join("m.pock"), dir.join("out.npz"));
        let o = pock(&["compile", s(&model), "--loss", "mse", "-o", s(&plan)]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        // The 1-D model's plan holds the reshapes of its weights as copies (a reshape of a
        // parameter cannot alias it in the persistent region), and the engine's validation
        // accepts it.
        let o = pock(&["infer", s(&plan), "--data", s(&data), "--out", s(&out)]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let (got, want) = (values(&out), values(&data));
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{name} output {i}: pock {g}, reference {w}");
        }
        let o = pock(&["train", s(&plan), "--data", s(&data), "--epochs", "1", "-q"]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));

        let options = ImportOptions { loss: LossKind::Mse, ..Default::default() };
        let forward = import_file(&model, &options).unwrap().forward;
        let checks = check_model(forward, 5, 100, 6, STEP).unwrap();
        assert!(checks.len() >= 2, "{name}: only {} tensors checked", checks.len());
        assert_close(name, &checks, 1e-6);
    }
    let _ = std::fs::remove_dir_all(&root);
}
