//! The engine allocates its arena (and the fast kernels' packing scratch) once per session and
//! nothing inside a step, on any thread.
//!
//! A counting global allocator records every allocation made by any thread of this process
//! (the test thread, the backend's worker pool) while counting is on. This binary holds a single
//! test so that no other test's allocations are counted. Whole steps (train and apply programs,
//! then one eval and one infer batch) must allocate nothing with the reference kernels and with
//! the fast kernels on 1 and 2 threads, for zoo:cnn, zoo:mlp and a small zoo:mobilenetv2 (every
//! fast kernel: gemm, im2col, pointwise and depthwise convolutions, training BatchNorm, Clip).
//!
//! With 2 threads each program run installs the backend's own worker pool
//! (`engine/src/kernels/cpu/pool.rs`), whose loops publish their tasks through atomics and a
//! condition variable: nothing is allocated there either. (Until 2026-12 the pool was rayon's,
//! whose injector took one 1520-byte block per 63 program runs and whose deques resized; this
//! test then only bounded allocations below one per 10 steps.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pock::compiler::stages::BatchNormMode;
use pock::compiler::CompileOptions;
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions, Targets};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
            BYTES.fetch_add(layout.size(), Ordering::SeqCst);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::SeqCst) {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
            BYTES.fetch_add(new_size, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations (count, bytes) on every thread during `steps` train steps plus one eval and one
/// infer batch, after 20 untimed steps; and how many program runs that was.
fn count(model: &str, options: CompileOptions, reference: bool, threads: usize, steps: usize) -> (usize, usize, usize) {
    let batch = 4;
    let accumulate = options.accumulate;
    let bytes = pock::compile_model(model, batch, 0, options).unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads, reference_kernels: reference, ..SessionOptions::default() }).unwrap();
    let x_len: usize = s.input_shape().iter().product();
    let classes = s.output_shape()[1];
    let x: Vec<f32> = (0..x_len).map(|i| (i % 7) as f32 * 0.1).collect();
    let y: Vec<i64> = (0..batch as i64).map(|i| i % classes as i64).collect();
    let mut out = vec![0.0; batch * classes];
    let mut losses = vec![0.0; batch];
    // Warm-up: the first steps start lazily initialised state (the pool's threads and their
    // queues, thread-locals).
    for _ in 0..20 {
        s.train_step(&x, Targets::Labels(&y)).unwrap();
    }
    s.eval_batch(&x, Targets::Labels(&y), &mut out, &mut losses).unwrap();
    s.infer(&x, &mut out).unwrap();
    ALLOCATIONS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..steps {
        s.train_step(&x, Targets::Labels(&y)).unwrap();
    }
    s.eval_batch(&x, Targets::Labels(&y), &mut out, &mut losses).unwrap();
    s.infer(&x, &mut out).unwrap();
    COUNTING.store(false, Ordering::SeqCst);
    // A train step runs the train program and, every `accumulate` steps when that is above 1,
    // the apply program; then one eval and one infer run.
    let applies = if accumulate > 1 { steps / accumulate } else { 0 };
    let runs = steps + applies + 2;
    (ALLOCATIONS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst), runs)
}

#[test]
fn train_steps_allocate_nothing() {
    let adam = CompileOptions {
        optimizer: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        accumulate: 2,
        clip_grad_norm: Some(1.0),
        ..Default::default()
    };
    let sgd = CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        ..Default::default()
    };
    // Int8 (issue 9 part 3): frozen int8 weights and a trained f32 master copy, calibrated on
    // two batches of made-up samples.
    let int8 = CompileOptions {
        update: pock::compiler::UpdateScheme { preset: Some(pock::compiler::UpdatePreset::Bias), ..Default::default() },
        quantize: Some(pock::compiler::quantize::Int8Options {
            calibration: (0..64).map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.5).collect(),
            sample_shape: vec![8],
            qas: true,
        }),
        ..sgd.clone()
    };
    let sgd_bn_train = CompileOptions { batch_norm: BatchNormMode::Train, ..sgd.clone() };
    let cases = [
        ("zoo:cnn:channels=1,size=12,classes=4,width=4", sgd.clone()),
        ("zoo:cnn:channels=3,size=32,classes=4,width=16", sgd.clone()),
        ("zoo:mlp:inputs=8,hidden=16,classes=3", adam),
        ("zoo:mobilenetv2:classes=4,size=32,width=0.25", sgd_bn_train),
        ("zoo:mobilenetv2:classes=4,size=32,width=0.25", sgd.clone()),
        ("zoo:mlp:inputs=8,hidden=16,depth=2,classes=3", int8),
    ];
    for (model, options) in cases {
        let (allocations, bytes, _) = count(model, options.clone(), true, 1, 4);
        assert_eq!((allocations, bytes), (0, 0), "{model}, reference kernels: allocations inside steps");
        let (allocations, bytes, _) = count(model, options.clone(), false, 1, 4);
        assert_eq!((allocations, bytes), (0, 0), "{model}, fast kernels, 1 thread: allocations inside steps");
        // 100 steps: over 100 program runs, each publishing many parallel loops.
        let steps = 100;
        let (allocations, bytes, runs) = count(model, options, false, 2, steps);
        eprintln!("{model}, fast kernels, 2 threads: {allocations} allocations ({bytes} bytes) in {steps} steps, {runs} program runs");
        assert_eq!(
            (allocations, bytes),
            (0, 0),
            "{model}, fast kernels, 2 threads: allocations inside {steps} steps ({runs} program runs)"
        );
    }
}
