//! Puts memory.x where cortex-m-rt's link.x finds it, and copies the plan and the batches named by
//! `POCK_MCU_PLAN` and `POCK_MCU_BATCHES` into OUT_DIR for `include_bytes!`.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    let inputs = [
        ("POCK_MCU_PLAN", "plan.pock", "a plan written by `pock compile ... --target cortex-m7`"),
        ("POCK_MCU_BATCHES", "batches.bin", "the batches written by `cargo run --example mcu_data -- DIR BATCH EPOCHS SEED`"),
    ];
    for (var, file, what) in inputs {
        println!("cargo:rerun-if-env-changed={var}");
        let Some(path) = env::var_os(var) else {
            panic!("{var} is not set: point it at {what} (scripts/mcu-test.sh makes both and builds this firmware)");
        };
        let path = PathBuf::from(path);
        println!("cargo:rerun-if-changed={}", path.display());
        if let Err(e) = fs::copy(&path, out.join(file)) {
            panic!("{var}={}: {e}; point it at {what}", path.display());
        }
    }
}
