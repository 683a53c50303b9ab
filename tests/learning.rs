//! Models learn: zoo:mlp separates a synthetic problem, zoo:cnn learns the demo's shapes.

use pock::compiler::CompileOptions;
use pock::engine::plan::OptimizerKind;
use pock::engine::{Session, SessionOptions};
use pock::schedule::LrSchedule;
use pock::train::{evaluate, train, TrainConfig};

fn sgd(lr: f32) -> CompileOptions {
    CompileOptions {
        optimizer: OptimizerKind::Sgd { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        learning_rate: lr,
        ..Default::default()
    }
}

#[test]
fn mlp_separates_blobs() {
    let bytes = pock::compile_model("zoo:mlp:inputs=8,hidden=32,classes=4", 32, 0, sgd(0.05)).unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: false }).unwrap();
    let train_set = pock::synth::blobs(1024, 8, 4, 1);
    let test_set = pock::synth::blobs(512, 8, 4, 2);
    let before = evaluate(&mut s, &test_set).unwrap();
    let cfg = TrainConfig { epochs: 5, seed: 0, base_lr: 0.05, schedule: LrSchedule::parse("constant").unwrap() };
    let summary = train(&mut s, &train_set, &cfg, |_| {}).unwrap();
    let after = evaluate(&mut s, &test_set).unwrap();
    let acc = after.accuracy.unwrap();
    assert!(acc > 0.95, "accuracy {acc} (before {:?}), epoch losses {:?}", before.accuracy, summary.epoch_losses);
    assert!(after.loss < before.loss);
}

#[test]
fn mlp_regression_fits_a_linear_map() {
    let options = CompileOptions {
        optimizer: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        learning_rate: 0.01,
        ..Default::default()
    };
    let bytes = pock::compile_model("zoo:mlp:inputs=6,hidden=32,depth=1,task=regression,outputs=2", 16, 0, options).unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 1, reference_kernels: false }).unwrap();
    let data = pock::synth::regression(512, 6, 2, 3);
    let before = evaluate(&mut s, &data).unwrap();
    let cfg = TrainConfig { epochs: 20, seed: 0, base_lr: 0.01, schedule: LrSchedule::parse("constant").unwrap() };
    train(&mut s, &data, &cfg, |_| {}).unwrap();
    let after = evaluate(&mut s, &data).unwrap();
    assert!(after.accuracy.is_none());
    assert!(after.loss < 0.1 * before.loss, "MSE {} -> {}", before.loss, after.loss);
}

#[test]
fn cnn_learns_the_demo_shapes() {
    let bytes = pock::compile_model("zoo:cnn:channels=1,size=28,classes=4", 32, 7, sgd(0.05)).unwrap().to_bytes();
    let mut s = Session::from_bytes(&bytes, SessionOptions { threads: 2, reference_kernels: false }).unwrap();
    let train_set = pock::synth::shapes(1024, 28, 7);
    let test_set = pock::synth::shapes(256, 28, 8);
    let before = evaluate(&mut s, &test_set).unwrap();
    let cfg = TrainConfig { epochs: 3, seed: 7, base_lr: 0.05, schedule: LrSchedule::parse("cosine").unwrap() };
    let summary = train(&mut s, &train_set, &cfg, |_| {}).unwrap();
    let after = evaluate(&mut s, &test_set).unwrap();
    let (b, a) = (before.accuracy.unwrap(), after.accuracy.unwrap());
    // Four balanced classes: chance is 25%.
    assert!(a > 0.6 && a > b + 0.2, "accuracy {b} -> {a}, epoch losses {:?}", summary.epoch_losses);
    assert!(summary.epoch_losses.last() < summary.epoch_losses.first(), "{:?}", summary.epoch_losses);
}

#[test]
fn demo_runs_and_learns() {
    let cfg = pock::demo::DemoConfig { train_samples: 512, test_samples: 128, epochs: 2, threads: 2, ..Default::default() };
    let mut out = Vec::new();
    let report = pock::demo::run(&cfg, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("before training") && text.contains("after training") && text.contains("arena"), "{text}");
    assert!(report.arena_bytes > 0 && report.ms_per_step > 0.0);
    assert!(report.epoch_losses[1] < report.epoch_losses[0], "{:?}", report.epoch_losses);
}
