//! Helpers shared by pock-ffi's tests: a scratch directory, a plan compiled the way `pock
//! compile` would, and the built library's directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use pock::compiler::CompileOptions;
use pock::engine::plan::OptimizerKind;

/// A fresh directory under the system's temporary directory, named after the test.
pub fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pock-ffi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The examples' classifier: an MLP over 8 features into 4 classes, batch 16, Adam at 1e-2.
pub fn write_mlp_plan(path: &Path) {
    let options = CompileOptions {
        optimizer: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        learning_rate: 1e-2,
        ..Default::default()
    };
    let plan = pock::compile_model("zoo:mlp:inputs=8,hidden=32,classes=4", 16, 0, options).unwrap();
    std::fs::write(path, plan.to_bytes()).unwrap();
}

/// The directory holding the cdylib and staticlib cargo built for this test: `target/<profile>/`
/// (the parent of the test binary's `deps/`) when cargo copied them there, as `cargo test -p
/// pock-ffi` does, else `deps/` itself, where `cargo test --workspace` leaves them.
pub fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    let so = |dir: &Path| dir.join(format!("{}pock_ffi{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    let candidates = [deps.parent().unwrap().to_path_buf(), deps];
    let found = candidates.iter().find(|d| so(d).exists());
    assert!(found.is_some(), "{} is missing: cargo builds it with this test (`cargo test -p pock-ffi`)", so(&candidates[0]).display());
    found.unwrap().clone()
}

/// `(step, loss)` for every `step N loss X` line of a program's output.
pub fn losses(output: &str) -> Vec<f32> {
    output
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("step")).then_some(())?;
            w.next()?;
            (w.next() == Some("loss")).then_some(())?;
            w.next()?.parse().ok()
        })
        .collect()
}

/// Mean of the first `n` values over the mean of the last `n`.
pub fn first_over_last(losses: &[f32], n: usize) -> f32 {
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    mean(&losses[..n]) / mean(&losses[losses.len() - n..])
}
