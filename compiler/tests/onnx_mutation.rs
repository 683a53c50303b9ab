//! No input file makes the ONNX loader panic: real exported models (with their external data in
//! place) truncated at many offsets, with bits flipped, and replaced by random bytes, each give
//! `Ok` or `Err`, never a panic. Seeded, so a failure names a case that can be replayed.

mod onnx_support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use onnx_support::{manifests, materialise, TempDir};
use pock_compiler::onnx::load_model_bytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Loads `bytes`, turning a panic into a test failure that names the case.
fn must_not_panic(bytes: &[u8], dir: &Path, case: &str) -> bool {
    match catch_unwind(AssertUnwindSafe(|| load_model_bytes(bytes, Some(dir)))) {
        Ok(result) => result.is_ok(),
        Err(_) => panic!("the loader panicked on {case}"),
    }
}

fn fixture(stem: &str) -> (TempDir, Vec<u8>) {
    let (_, m) = manifests().into_iter().find(|(s, _)| s == stem).unwrap_or_else(|| panic!("fixture {stem}"));
    let dir = TempDir::new(&format!("mutation-{stem}"));
    let path = materialise(stem, &m, dir.path());
    let bytes = std::fs::read(path).unwrap();
    (dir, bytes)
}

#[test]
fn truncated_models_give_errors_not_panics() {
    for stem in ["llama.ts", "bert.dynamo", "squeezenet1_1.ts"] {
        let (dir, bytes) = fixture(stem);
        assert!(must_not_panic(&bytes, dir.path(), &format!("{stem} whole")), "{stem}: the unmodified model loads");
        let step = (bytes.len() / 400).max(1);
        let mut errors = 0;
        for cut in (0..bytes.len()).step_by(step) {
            if !must_not_panic(&bytes[..cut], dir.path(), &format!("{stem} truncated at {cut}")) {
                errors += 1;
            }
        }
        // Almost every cut leaves a field half-written or a node reading a value never defined.
        assert!(errors * 10 >= (bytes.len() / step) * 9, "{stem}: only {errors} truncations were rejected");
    }
}

#[test]
fn bit_flipped_models_give_errors_or_models_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x0bad_0bad);
    for stem in ["llama.ts", "bert.dynamo", "mobilenet_v2.ts"] {
        let (dir, bytes) = fixture(stem);
        let mut errors = 0;
        for case in 0..700 {
            let mut mutated = bytes.clone();
            let flips = rng.random_range(1..=4);
            for _ in 0..flips {
                let at = rng.random_range(0..mutated.len());
                mutated[at] ^= 1 << rng.random_range(0..8);
            }
            if !must_not_panic(&mutated, dir.path(), &format!("{stem} flip case {case}")) {
                errors += 1;
            }
        }
        // Many flips land in names or float payloads and still decode; some must not.
        assert!(errors > 0, "{stem}: no bit flip was rejected");
    }
}

#[test]
fn random_bytes_give_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let dir = TempDir::new("mutation-random");
    let mut errors = 0;
    for case in 0..1000 {
        let len = rng.random_range(0..4096);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if !must_not_panic(&bytes, dir.path(), &format!("random case {case}")) {
            errors += 1;
        }
    }
    assert_eq!(errors, 1000, "random bytes are never a valid model");
    // Random bytes after a valid header: the IR version and opset fields of a real model.
    let (dir, bytes) = fixture("llama.ts");
    for case in 0..300 {
        let keep = rng.random_range(0..64.min(bytes.len()));
        let mut mutated = bytes[..keep].to_vec();
        mutated.extend((0..rng.random_range(0..2048)).map(|_| rng.random::<u8>()));
        must_not_panic(&mutated, dir.path(), &format!("header+random case {case}"));
    }
}
