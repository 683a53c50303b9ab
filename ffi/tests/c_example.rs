//! The C example (`examples/c/train.c`) compiled with the system's C compiler against
//! `ffi/include/pock.h` and the cdylib, run on a plan compiled here: its losses fall, a short
//! buffer is refused with a message, and the checkpoint it saves loads in pock, giving the very
//! outputs the C program's inference printed.

mod common;

use std::path::Path;
use std::process::Command;

use pock::engine::{Session, SessionOptions};

fn read_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn c_program_trains_infers_and_saves_a_checkpoint_pock_loads() {
    let dir = common::workdir("c-example");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let lib = common::library_dir();
    let exe = dir.join("train");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg("-I")
        .arg(root.join("ffi/include"))
        .arg(root.join("examples/c/train.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lpock_ffi")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc} ({e}); install gcc or set CC to a C compiler"));
    assert!(built.status.success(), "compiling examples/c/train.c failed:\n{}", String::from_utf8_lossy(&built.stderr));

    let plan = dir.join("mlp.plan");
    common::write_mlp_plan(&plan);
    let ckpt = dir.join("mlp.safetensors");
    let outputs = dir.join("outputs.bin");
    let run = Command::new(&exe).arg(&plan).arg(&ckpt).arg(&outputs).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "the C example failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));

    assert!(
        stdout.contains("refused as expected: inputs has 127 elements, but this plan needs 128"),
        "the short buffer's message is missing:\n{stdout}"
    );
    let losses = common::losses(&stdout);
    assert_eq!(losses.len(), 60, "{stdout}");
    let ratio = common::first_over_last(&losses, 10);
    assert!(ratio > 2.0, "losses did not fall through the C ABI (first 10 / last 10 = {ratio}): {losses:?}");

    // The checkpoint loads in pock and its model gives the outputs the C program computed.
    let mut session = Session::load(&plan, SessionOptions::default()).unwrap();
    session.resume(&ckpt).unwrap();
    assert_eq!(session.optimizer_steps(), 60);
    let written = read_f32s(&std::fs::read(&outputs).unwrap());
    let (x, c_outputs) = written.split_at(16 * 8);
    assert_eq!(c_outputs.len(), 16 * 4);
    let mut rust_outputs = vec![0.0f32; 16 * 4];
    session.infer(x, &mut rust_outputs).unwrap();
    assert_eq!(rust_outputs, c_outputs, "the resumed session does not reproduce the C program's inference");
    // No temporary file of the atomic save is left behind.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
