//! Replays every checked-in fuzz input (`fuzz/seeds/<target>/`) through the same code the fuzz
//! targets run (`fuzz/src/lib.rs`), on stable Rust and without sanitizers: no input may panic.
//! The seeds themselves must still be valid files, or the fuzzer would start from noise.
//!
//! Regenerate the seeds after a change to the plan, checkpoint or npz format with
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

use pock::compiler::CompileOptions;
use pock::data::{Dataset, Targets as DataTargets};
use pock::engine::plan::OptimizerKind;
use pock::engine::{decode_plan, Session, SessionOptions, Targets};

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("seeds").join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = seeds_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

const REGENERATE: &str = "regenerate the seeds with `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`";

#[test]
fn plan_corpus_replays_without_panic() {
    for (path, bytes) in corpus("plan") {
        harness::plan(&bytes);
        if path.extension().is_some_and(|e| e == "pock") {
            let decoded = decode_plan(&bytes);
            assert!(decoded.is_ok(), "seed {} no longer decodes ({}); {REGENERATE}", path.display(), decoded.unwrap_err());
        }
    }
}

#[test]
fn checkpoint_corpus_replays_without_panic() {
    for (path, bytes) in corpus("checkpoint") {
        harness::checkpoint(&bytes);
        if path.extension().is_some_and(|e| e == "safetensors") {
            let mut s = Session::from_bytes(harness::checkpoint_plan(), SessionOptions::default()).unwrap();
            let resumed = s.resume(&path);
            assert!(resumed.is_ok(), "seed {} no longer resumes ({}); {REGENERATE}", path.display(), resumed.unwrap_err());
        }
    }
}

#[test]
fn npz_corpus_replays_without_panic() {
    for (path, bytes) in corpus("npz") {
        harness::npz(&bytes);
        if path.extension().is_some_and(|e| e == "npz") {
            let loaded = Dataset::load_npz(&path);
            assert!(loaded.is_ok(), "seed {} no longer loads ({}); {REGENERATE}", path.display(), loaded.unwrap_err());
        }
    }
}

/// Writes the seed corpus. Ignored: run it by hand after a format change (see the module docs).
#[test]
#[ignore]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = seeds_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(bytes.len() < 64 * 1024, "seed {name} is {} bytes; keep seeds small", bytes.len());
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let sgd = CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        ..CompileOptions::default()
    };
    let plan = |model: &str, batch: usize, options: CompileOptions| pock::compile_model(model, batch, 0, options).unwrap().to_bytes();
    write("plan", "mlp-sgd.pock", &plan("zoo:mlp:inputs=4,hidden=8,classes=3", 4, sgd.clone()));
    let adam = CompileOptions { accumulate: 2, clip_grad_norm: Some(1.0), ..harness::checkpoint_options() };
    write("plan", "mlp-regression-adam-accumulate.pock", &plan("zoo:mlp:inputs=3,hidden=4,depth=1,task=regression,outputs=2", 2, adam));
    write("plan", "cnn.pock", &plan("zoo:cnn:size=4,width=1,classes=2", 2, sgd));

    let mut s = Session::from_bytes(harness::checkpoint_plan(), SessionOptions::default()).unwrap();
    let x: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
    s.train_step(&x, Targets::Labels(&[0, 1, 2, 0])).unwrap();
    let tmp = std::env::temp_dir().join(format!("pock-seed-{}.safetensors", std::process::id()));
    s.save(&tmp).unwrap();
    write("checkpoint", "mlp-adam.safetensors", &std::fs::read(&tmp).unwrap());
    std::fs::remove_file(&tmp).unwrap();

    let datasets = [
        (
            "labels.npz",
            Dataset {
                x: (0..12).map(|i| i as f32).collect(),
                x_shape: vec![4, 3],
                y: Some(DataTargets::Labels(vec![0, 1, 2, 1])),
                inputs: Vec::new(),
            },
        ),
        (
            "images-values.npz",
            Dataset {
                x: (0..8).map(|i| i as f32 * 0.5).collect(),
                x_shape: vec![2, 1, 2, 2],
                y: Some(DataTargets::Values { data: vec![1.0, -1.0, 0.5, 2.0], shape: vec![2, 2] }),
                inputs: Vec::new(),
            },
        ),
    ];
    for (name, d) in datasets {
        let tmp = std::env::temp_dir().join(format!("pock-seed-{}-{name}", std::process::id()));
        d.save_npz(&tmp).unwrap();
        write("npz", name, &std::fs::read(&tmp).unwrap());
        std::fs::remove_file(&tmp).unwrap();
    }
}
