//! No model makes the op importer panic: real exports with bytes flipped (the loader's checks
//! pass for many of them, so attributes, shapes and constants reach the importer damaged) give
//! `Ok` or `Err`, never a panic. Seeded, so a failure names a case that can be replayed.

mod onnx_support;

use std::panic::{catch_unwind, AssertUnwindSafe};

use onnx_support::{manifests, materialise, TempDir};
use pock_compiler::onnx::{import_model, load_model_bytes, ImportOptions, ShapeOverrides};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn damaged_models_give_import_errors_not_panics() {
    let options = ImportOptions { shapes: ShapeOverrides::parse::<&str>(Some(2), &[]).unwrap(), ..Default::default() };
    let mut imported = 0;
    for (stem, seed) in [("mobilenet_v2.ts", 1u64), ("resnet18.ts", 2), ("squeezenet1_1.ts", 3)] {
        let (_, m) = manifests().into_iter().find(|(s, _)| s == stem).unwrap();
        let dir = TempDir::new(&format!("import-mutation-{stem}"));
        let bytes = std::fs::read(materialise(stem, &m, dir.path())).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for case in 0..150 {
            let mut damaged = bytes.clone();
            for _ in 0..rng.random_range(1..4usize) {
                let at = rng.random_range(0..damaged.len());
                damaged[at] ^= 1 << rng.random_range(0..8u32);
            }
            let Ok(model) = load_model_bytes(&damaged, Some(dir.path())) else { continue };
            match catch_unwind(AssertUnwindSafe(|| import_model(&model, stem, &options))) {
                Ok(result) => imported += usize::from(result.is_ok()),
                Err(_) => panic!("the importer panicked on {stem} case {case} (seed {seed})"),
            }
        }
    }
    // Most single bit flips land in weights or names and leave an importable model.
    assert!(imported > 50, "only {imported} damaged models imported");
}
