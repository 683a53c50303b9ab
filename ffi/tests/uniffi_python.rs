//! The uniffi bindings: Kotlin, Swift and Python generated from the built cdylib by the crate's
//! `uniffi-bindgen` binary, and the Python ones (no Kotlin or Swift toolchain is needed) loaded
//! to train a plan: losses fall, inference and a checkpoint round trip agree, a wrong batch
//! raises `PockError.Input`. Needs the `uniffi-bindgen` feature, on by default, so
//! `cargo test --workspace` runs it.
#![cfg(feature = "uniffi-bindgen")]

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn python_bindings_train_a_plan() {
    let dir = common::workdir("uniffi");
    let lib = common::library_dir().join(format!("{}pock_ffi{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    for language in ["python", "kotlin", "swift"] {
        let out = dir.join(language);
        let generated = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
            .args(["generate", "--library"])
            .arg(&lib)
            .args(["--language", language, "--out-dir"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(generated.status.success(), "uniffi-bindgen for {language} failed:\n{}", String::from_utf8_lossy(&generated.stderr));
        let files: Vec<String> = walk(&out);
        assert!(!files.is_empty(), "uniffi-bindgen wrote no {language} files");
        let all = files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect::<String>();
        assert!(
            all.contains("Trainer") && (all.contains("trainStep") || all.contains("train_step")),
            "{language} bindings lack Trainer.train_step"
        );
    }
    // The Python module loads the library from its own directory.
    std::fs::copy(&lib, dir.join("python").join(lib.file_name().unwrap())).unwrap();

    let plan = dir.join("mlp.plan");
    common::write_mlp_plan(&plan);
    let ckpt = dir.join("mlp.safetensors");
    let python = std::env::var("POCK_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/uniffi_train.py");
    let run = Command::new(&python)
        .arg(&script)
        .arg(dir.join("python"))
        .arg(&plan)
        .arg(&ckpt)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} ({e}); set POCK_PYTHON to a Python 3"));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "the Python bindings failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("refused as expected: message=\"inputs has 127 values, but this plan needs 128"), "{stdout}");
    let losses = common::losses(&stdout);
    assert_eq!(losses.len(), 60, "{stdout}");
    let ratio = common::first_over_last(&losses, 10);
    assert!(ratio > 2.0, "losses did not fall through the Python bindings (first 10 / last 10 = {ratio}): {losses:?}");
    assert!(stdout.contains("resumed at optimizer step 60"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p.to_string_lossy().into_owned());
        }
    }
    files
}
