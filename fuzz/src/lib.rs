//! What each fuzz target does with one input.
//!
//! The fuzz targets in `fuzz_targets/` and the workspace test `tests/fuzz_corpus.rs` (which
//! replays the checked-in seeds on stable Rust) both call these functions, so the corpus is
//! replayed through exactly the code that was fuzzed. A function returns normally for every
//! input; a panic, an abort, a sanitizer report or a hang is a finding.
//!
//! An ONNX importer target belongs here too once the importer exists: `pub fn onnx(data: &[u8])`
//! that imports the bytes and, when that succeeds, compiles the result with a small size cap.

use std::path::PathBuf;
use std::sync::OnceLock;

use pock::compiler::CompileOptions;
use pock::data::Dataset;
use pock::engine::format::reseal;
use pock::engine::plan::{DType, OptimizerKind};
use pock::engine::{decode_plan, Session, SessionOptions, Targets};

/// Plans whose arena is larger than this are decoded and validated but not run, so that a
/// fuzzed size cannot exhaust the fuzzer's memory (libFuzzer's default limit is 2 GiB).
pub const ARENA_CAP: u64 = 16 << 20;

/// The model every checkpoint input is loaded into (and the seed checkpoint was saved from).
pub const CHECKPOINT_MODEL: &str = "zoo:mlp:inputs=4,hidden=8,classes=3";
pub const CHECKPOINT_BATCH: usize = 4;

/// Options of the checkpoint target's plan: Adam, so that a checkpoint also holds optimizer state.
pub fn checkpoint_options() -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        ..CompileOptions::default()
    }
}

/// Plan target: decode plan-file bytes; when they decode (and the arena is under [`ARENA_CAP`]),
/// start a session with each kernel set and run one training step, one evaluation and one
/// inference on zeros.
///
/// The checksum is recomputed first ([`reseal`]): otherwise almost every mutation would stop at
/// the checksum and the decoder, validator and executor would never see it. Checksum
/// mismatches are covered by `tests/plan_files.rs`.
pub fn plan(data: &[u8]) {
    let mut bytes = data.to_vec();
    reseal(&mut bytes);
    let Ok((plan, _)) = decode_plan(&bytes) else { return };
    if plan.arena_bytes > ARENA_CAP {
        return;
    }
    for reference_kernels in [false, true] {
        if let Ok(mut session) = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels, ..SessionOptions::default() })
        {
            run_on_zeros(&mut session);
        }
    }
}

/// One step of every program on zero inputs and targets (label 0 is valid for any classifier).
/// Errors are fine; only panics and memory errors are findings.
fn run_on_zeros(session: &mut Session) {
    let plan = session.plan();
    let numel = |shape: &[usize]| shape.iter().product::<usize>();
    let x = vec![0f32; numel(session.input_shape())];
    let train_target = plan.tensor(plan.programs.train.feeds[1]);
    let eval_target = plan.tensor(plan.programs.eval.feeds[1]);
    let eval_loss = numel(&plan.tensor(plan.programs.eval.fetches[1]).shape);
    let (labels, values) = (vec![0i64; numel(&train_target.shape)], vec![0f32; numel(&train_target.shape)]);
    let (eval_labels, eval_values) = (vec![0i64; numel(&eval_target.shape)], vec![0f32; numel(&eval_target.shape)]);
    let (train_labels, eval_is_labels) = (train_target.dtype == DType::I64, eval_target.dtype == DType::I64);
    let mut outputs = vec![0f32; numel(session.output_shape())];
    let mut losses = vec![0f32; eval_loss];
    let y = if train_labels { Targets::Labels(&labels) } else { Targets::Values(&values) };
    let _ = session.train_step(&x, y);
    let y = if eval_is_labels { Targets::Labels(&eval_labels) } else { Targets::Values(&eval_values) };
    let _ = session.eval_batch(&x, y, &mut outputs, &mut losses);
    let _ = session.infer(&x, &mut outputs);
}

/// The checkpoint target's plan file, compiled once per process.
pub fn checkpoint_plan() -> &'static [u8] {
    static PLAN: OnceLock<Vec<u8>> = OnceLock::new();
    PLAN.get_or_init(|| {
        pock::compile_model(CHECKPOINT_MODEL, CHECKPOINT_BATCH, 0, checkpoint_options()).expect("the fixed fuzz plan compiles").to_bytes()
    })
}

/// A scratch file private to this process and thread (the loaders read paths, not bytes).
fn scratch(name: &str) -> PathBuf {
    // /dev/shm keeps a million small writes off the disk where it exists.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    dir.join(format!("pock-fuzz-{}-{:?}-{name}", std::process::id(), std::thread::current().id()))
}

/// Checkpoint target: write the bytes to a file, then resume a session of the fixed plan from
/// it and, when that succeeds, train one step; finally load the file as weights only.
///
/// One session per thread is reused across inputs, because starting a session costs more than
/// everything else here (it ran at about 160 inputs per second with a new session per input). The
/// result stays a function of the input: a successful resume sets every checkpointed tensor and
/// counter before the training step, and after a failed one nothing is computed.
pub fn checkpoint(data: &[u8]) {
    thread_local! {
        static SESSION: std::cell::RefCell<Session> = std::cell::RefCell::new(
            Session::from_bytes(checkpoint_plan(), SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() }).expect("the fixed fuzz plan loads"),
        );
    }
    let path = scratch("checkpoint.safetensors");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    SESSION.with_borrow_mut(|session| {
        if session.resume(&path).is_ok() {
            let x = vec![0.5f32; session.input_shape().iter().product()];
            let _ = session.train_step(&x, Targets::Labels(&[0, 1, 2, 0]));
        }
        let _ = session.load_weights(&path);
    });
    let _ = std::fs::remove_file(&path);
}

/// `.npz` target: write the bytes to a file, load it as a dataset, and when that succeeds check
/// it against its own sample shape and gather the first samples as training would.
pub fn npz(data: &[u8]) {
    let path = scratch("data.npz");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(d) = Dataset::load_npz(&path) {
        let sample = d.sample_shape().to_vec();
        let _ = d.check(&sample, None);
        let order = d.epoch_order(0, 0);
        let take = &order[..order.len().min(4)];
        let mut x = vec![0f32; take.len() * sample.iter().product::<usize>()];
        d.gather_x(take, &mut x);
    }
    let _ = std::fs::remove_file(&path);
}
