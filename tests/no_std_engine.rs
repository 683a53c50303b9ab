//! The engine's core builds without `std` (the microcontroller runtime depends on it).

use std::process::Command;

#[test]
fn engine_core_builds_without_std() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = env!("CARGO_MANIFEST_DIR");
    let target_dir = std::path::Path::new(root).join("target").join("no-std-check");
    let out = Command::new(cargo)
        .args(["build", "--quiet", "-p", "pock-engine", "--no-default-features", "--target-dir"])
        .arg(&target_dir)
        .current_dir(root)
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "pock-engine without std failed to build:\n{}", String::from_utf8_lossy(&out.stderr));
}
