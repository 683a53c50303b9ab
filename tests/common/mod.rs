//! Helpers shared by the CLI-driven integration tests (each test file includes it with
//! `mod common;`).

#![allow(dead_code)]

pub mod onnx_fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `pock` binary built for this test run.
pub fn pock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pock")).args(args).output().expect("pock runs")
}

/// Runs a command that must fail with a one-line `error:` and returns that line.
pub fn fails(args: &[&str]) -> String {
    let out = pock(args);
    assert!(!out.status.success(), "pock {args:?} should fail; stdout:\n{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line reason expected, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    err
}

/// A fresh, empty directory for one test, named after the test binary, the test and the process.
pub fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pock-{}-{name}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Whether a GPU adapter is present (on CI: Mesa's lavapipe). Prints the adapter, or a SKIP line
/// that CI's log shows, so a GPU test without a device is never passed silently.
#[cfg(feature = "wgpu")]
pub fn gpu_present() -> bool {
    match pock::engine::backend::wgpu::adapter_description() {
        Ok(a) => {
            println!("GPU adapter: {a}");
            true
        }
        Err(e) => {
            println!("SKIP: no Vulkan adapter (install mesa-vulkan-drivers libvulkan1): {e}");
            false
        }
    }
}

/// The names of a session's trainable parameters, in plan order.
pub fn trainable_names(session: &pock::engine::Session) -> Vec<String> {
    use pock::engine::plan::Role;
    session.plan().tensors.iter().filter(|t| t.role == Role::Parameter { trainable: true }).map(|t| t.name.clone()).collect()
}
