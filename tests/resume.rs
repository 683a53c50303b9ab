//! Save -> resume -> continue gives exactly the losses of uninterrupted training.

use pock::compiler::CompileOptions;
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions, Targets};

fn batches(n: usize, batch: usize, features: usize, seed: u64) -> Vec<(Vec<f32>, Vec<i64>)> {
    let data = pock::synth::blobs(n * batch, features, 3, seed);
    let mut out = Vec::new();
    for b in 0..n {
        let idx: Vec<usize> = (b * batch..(b + 1) * batch).collect();
        let mut x = vec![0.0; batch * features];
        let mut y = vec![0; batch];
        data.gather_x(&idx, &mut x);
        data.gather_labels(&idx, &mut y);
        out.push((x, y));
    }
    out
}

fn run_resume_case(model: &str, options: CompileOptions, total: usize, split: usize) {
    let batch = 8;
    let bytes = pock::compile_model(model, batch, 1, options).unwrap().to_bytes();
    let opts = SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() };
    let features = Session::from_bytes(&bytes, opts).unwrap().input_shape()[1];
    let data = batches(total, batch, features, 5);

    let mut straight = Session::from_bytes(&bytes, opts).unwrap();
    let expected: Vec<f32> = data.iter().map(|(x, y)| straight.train_step(x, Targets::Labels(y)).unwrap()).collect();

    let dir = tempfile_dir();
    let ckpt = dir.join("ckpt.safetensors");
    let mut first = Session::from_bytes(&bytes, opts).unwrap();
    let mut got: Vec<f32> = data[..split].iter().map(|(x, y)| first.train_step(x, Targets::Labels(y)).unwrap()).collect();
    first.save(&ckpt).unwrap();
    drop(first);
    let mut second = Session::from_bytes(&bytes, opts).unwrap();
    second.resume(&ckpt).unwrap();
    assert_eq!(second.micro_steps(), split as u64);
    got.extend(data[split..].iter().map(|(x, y)| second.train_step(x, Targets::Labels(y)).unwrap()));
    // Bitwise equality: the same arithmetic in the same order.
    assert_eq!(
        got.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        expected.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        "{model}: {got:?} vs {expected:?}"
    );
    // And training actually changed something.
    assert_ne!(expected.first(), expected.last());
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pock-resume-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn sgd_momentum_resume_is_exact() {
    let options = CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 1e-4 },
        learning_rate: 0.05,
        ..Default::default()
    };
    run_resume_case("zoo:mlp:inputs=6,hidden=16,classes=3", options, 12, 5);
}

#[test]
fn adam_with_accumulation_and_clipping_resume_is_exact() {
    // The split falls inside an accumulation window (5 is not a multiple of 2), so the
    // accumulators themselves must be restored.
    let options = CompileOptions {
        optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        learning_rate: 0.01,
        accumulate: 2,
        clip_grad_norm: Some(0.5),
        ..Default::default()
    };
    run_resume_case("zoo:mlp:inputs=6,hidden=16,classes=3", options, 12, 5);
}

#[test]
fn cnn_with_batch_norm_resume_is_exact() {
    let options = CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: 0.05,
        // Batch statistics, so that the running statistics change and must be restored.
        batch_norm: pock::compiler::stages::BatchNormMode::Train,
        ..Default::default()
    };
    let batch = 4;
    let bytes = pock::compile_model("zoo:cnn:channels=1,size=12,classes=4,width=4", batch, 1, options).unwrap().to_bytes();
    let opts = SessionOptions { threads: 1, reference_kernels: false, ..SessionOptions::default() };
    let data = pock::synth::shapes(8 * batch, 12, 9);
    let steps: Vec<(Vec<f32>, Vec<i64>)> = (0..8)
        .map(|b| {
            let idx: Vec<usize> = (b * batch..(b + 1) * batch).collect();
            let mut x = vec![0.0; batch * 144];
            let mut y = vec![0; batch];
            data.gather_x(&idx, &mut x);
            data.gather_labels(&idx, &mut y);
            (x, y)
        })
        .collect();
    let mut straight = Session::from_bytes(&bytes, opts).unwrap();
    let expected: Vec<u32> = steps.iter().map(|(x, y)| straight.train_step(x, Targets::Labels(y)).unwrap().to_bits()).collect();
    let ckpt = tempfile_dir().join("cnn.safetensors");
    let mut a = Session::from_bytes(&bytes, opts).unwrap();
    let mut got: Vec<u32> = steps[..3].iter().map(|(x, y)| a.train_step(x, Targets::Labels(y)).unwrap().to_bits()).collect();
    a.save(&ckpt).unwrap();
    let mut b = Session::from_bytes(&bytes, opts).unwrap();
    b.resume(&ckpt).unwrap();
    got.extend(steps[3..].iter().map(|(x, y)| b.train_step(x, Targets::Labels(y)).unwrap().to_bits()));
    assert_eq!(got, expected);
    // Running statistics were restored too: eval outputs agree.
    assert_eq!(straight.read_tensor("features.1.running_var").unwrap(), b.read_tensor("features.1.running_var").unwrap());
}
